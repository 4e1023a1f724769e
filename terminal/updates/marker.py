"""The start-up marker of signed updates: which set a start uses, and when it is confirmed.

This module owns what the daemon does with update sets around a start
(docs/updates.md): ``begin_start`` reconciles trust.sqlite (the truth) with
``updates/applied.json`` (rewritten from it after a crash between the two) and
takes a new set back whole when the previous start with it never reached
``confirm_started``; ``effective_settings`` lays the set's published settings over
the local ones in layers: embedded defaults, the local file, the county-wide
published file, this canteen's own published file (each merged key by key, and
[[meals]] by name). It never fetches anything and never writes the ledger: a
rollback comes back as a ``StartNote`` whose ``ledger_draft`` the daemon records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terminal import config, trust
from terminal.ledger import CONFIG_APPLIED, EntryDraft
from terminal.updates.apply import (
    UpdatePaths,
    layered_settings,
    read_json,
    roll_back,
    write_pointer,
)


@dataclass(frozen=True)
class StartNote:
    """What ``begin_start`` found: the settings file to load and anything to tell people."""

    settings_file: Path | None
    set_version: int | None
    rolled_back_from: int | None = None
    message: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # The config_applied detail of a set applied by a command since the last start, which
    # the ledger does not hold yet (updates/unrecorded.json, status.note_unrecorded).
    unrecorded: dict[str, Any] | None = None

    @property
    def settings_files(self) -> tuple[Path, ...]:
        """The set's published settings files, lowest layer first (the county-wide file
        beneath this canteen's own, when the set had both)."""
        return layered_settings(self.settings_file)

    def ledger_draft(self) -> EntryDraft | None:
        if self.rolled_back_from is None:
            if self.unrecorded is not None:
                # A set a command applied while the daemon was stopped (USB medium).
                return EntryDraft(kind=CONFIG_APPLIED, detail=self.unrecorded)
            return None
        return EntryDraft(
            kind=CONFIG_APPLIED,
            reason="rolled_back",
            detail={
                "set": self.set_version,
                "rolled_back_from": self.rolled_back_from,
                "message": self.message,
                **self.detail,
            },
        )


def begin_start(state_dir: str | Path, store: trust.TrustStore) -> StartNote:
    """Call once at every start, before loading settings: reconcile, and roll back if needed.

    - trust.sqlite is the truth; ``applied.json`` is rewritten from it when a crash fell
      between the transaction and the pointer (its settings file was synced before).
    - a set not yet confirmed whose previous start never reached ``confirm_started`` is
      taken back whole: lists and settings of the last good set return, and its settings
      are remembered as refused so the next refresh does not bring them back.
    """
    paths = UpdatePaths(Path(state_dir))
    applied = store.applied_update_set()
    if applied is None:
        return StartNote(None, None)
    pointer = read_json(paths.applied)
    name = applied.get("settings_file")
    if name and not _settings_intact(paths, name, applied):
        # Cannot happen with synced writes; if a card was swapped or damaged, go back.
        return _rolled_back(paths, store, applied, "its settings file is missing or damaged")
    if not _directory_intact(paths, applied):
        return _rolled_back(paths, store, applied, "its agency directory is missing or damaged")
    if pointer is None or pointer.get("set") != applied["set"]:
        pointer = write_pointer(paths, store, confirmed=False, previous=pointer)
    if not pointer.get("confirmed", False):
        starts = int(pointer.get("starts", 0))
        if starts >= 1:
            return _rolled_back(paths, store, applied, "the terminal did not start with it")
        pointer = write_pointer(
            paths,
            store,
            confirmed=False,
            previous={"set": pointer.get("previous_set")},
            starts=starts + 1,
        )
    settings = paths.settings_file(name) if name else None
    noted = read_json(paths.unrecorded)
    if noted is not None and noted.get("set") != applied["set"]:
        noted = None  # taken back since (or older than the set in force): not what runs
    return StartNote(settings, applied["set"], unrecorded=noted)


def _settings_intact(paths: UpdatePaths, name: str, applied: dict[str, Any]) -> bool:
    """Every settings file of the set is there with the hash the set recorded."""
    settings = applied.get("settings") or {}
    names = applied.get("settings_files") or [name]
    layers = settings.get("layers")
    if isinstance(layers, list) and len(layers) == len(names):
        expected = [layer.get("sha256") if isinstance(layer, dict) else None for layer in layers]
    elif len(names) == 1:
        expected = [settings.get("sha256")]  # a set applied before settings came in layers
    else:
        return False
    files = [paths.settings_file(n) for n in names]
    return all(_file_intact(f, e) for f, e in zip(files, expected, strict=True))


def _directory_intact(paths: UpdatePaths, applied: dict[str, Any]) -> bool:
    name = applied.get("directory_file")
    if not name:
        return True
    return _file_intact(paths.directory_file(name), (applied.get("directory") or {}).get("sha256"))


def _file_intact(file: Path, expected: Any) -> bool:
    try:
        data = file.read_bytes()
    except OSError:
        return False
    return expected is None or hashlib.sha256(data).hexdigest() == expected


def confirm_started(state_dir: str | Path, store: trust.TrustStore) -> None:
    """The daemon is up with the set in force: it becomes the last good set."""
    paths = UpdatePaths(Path(state_dir))
    # Recorded in the ledger by now (the daemon appends the start note's draft first).
    paths.unrecorded.unlink(missing_ok=True)
    pointer = read_json(paths.applied)
    if pointer is not None and pointer.get("confirmed"):
        return
    if store.applied_update_set() is None:
        return
    write_pointer(paths, store, confirmed=True, previous=pointer)


def effective_settings(local: str | Path | None, note: StartNote) -> config.Settings:
    """The settings in force: embedded defaults, then the local file, then the published
    set's layers (the county-wide file, then this canteen's own), each over the one before.

    A published file may not name [terminal] id or state_dir (the county refuses to
    sign one that does), so a device keeps its own identity and state directory.
    """
    doc = config.read(local)
    for file in note.settings_files:
        try:
            published = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise config.ConfigError(f"{file}: cannot read the published settings: {exc}") from None
        doc = doc.over(published, f"{file} (update set {note.set_version})")
    return config.build(doc)


def _rolled_back(
    paths: UpdatePaths, store: trust.TrustStore, bad: dict[str, Any], why: str
) -> StartNote:
    # The rollback's own entry records the set in force; a noted set is no longer it.
    paths.unrecorded.unlink(missing_ok=True)
    version, settings, message = roll_back(paths, store, bad, why)
    return StartNote(settings, version, rolled_back_from=int(bad["set"]), message=message)
