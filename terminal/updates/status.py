"""Signed updates at a glance: what is in force, how the last refresh went, one-call refresh.

This module owns ``updates/last-refresh.json`` (``record_refresh``), the status
that ``canteen-terminal update status`` and the daemon show (``status``: the set
in force, whether it is confirmed, its settings layers and agency directory,
whether the county's signed timestamp has expired), and ``update_once``, the
prepare-and-apply path for commands and tests in the calling thread. It never
decides a verdict and never writes the ledger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata

from protocol.layout import SIGNED_AT_FIELD
from terminal import trust
from terminal.durable import write_atomic
from terminal.updates.apply import (
    AppliedSet,
    TerminalUpdater,
    UpdateError,
    UpdatePaths,
    UpdateRefused,
    UpdatesStale,
    apply,
    json_bytes,
    read_json,
)


def note_unrecorded(paths: UpdatePaths, applied: AppliedSet, via: str) -> None:
    """Remember a set applied outside the daemon (a USB medium, ``update fetch``) for the
    daemon to record as a ``config_applied`` entry at its next start (``begin_start``),
    so that it reaches the county with the next sync. Two applies before a start make one
    note: the newest set, with everything either changed."""
    earlier = read_json(paths.unrecorded) or {}
    changed = [c for c in earlier.get("changed") or [] if isinstance(c, str)]
    changed += [c for c in applied.changed if c not in changed]
    draft = applied.ledger_draft()
    write_atomic(paths.unrecorded, json_bytes({**draft.detail, "changed": changed, "via": via}))


def record_refresh(state_dir: str | Path, outcome: dict[str, Any]) -> None:
    paths = UpdatePaths(Path(state_dir))
    write_atomic(paths.last_refresh, json_bytes(outcome))


def status(state_dir: str | Path, store: trust.TrustStore, now: int) -> dict[str, Any]:
    """What is in force, whether it is confirmed, and whether updates are stale."""
    paths = UpdatePaths(Path(state_dir))
    applied = store.applied_update_set()
    pointer = read_json(paths.applied) or {}
    out: dict[str, Any] = {
        "pinned": (paths.tuf / "root.json").is_file(),
        "set": applied["set"] if applied else None,
        "confirmed": bool(pointer.get("confirmed")),
        "settings_file": pointer.get("settings"),
        "settings_files": pointer.get("settings_files")
        or ([pointer["settings"]] if pointer.get("settings") else []),
        "directory": _directory_status(applied),
        "last_refresh": read_json(paths.last_refresh),
        "state": "no updates yet",
    }
    try:
        ts = Metadata.from_file(str(paths.tuf / "timestamp.json"))
        root = Metadata.from_file(str(paths.tuf / "root.json"))
    except Exception:
        return out
    expires = int(ts.signed.expires.timestamp())
    out.update(
        root_version=root.signed.version,
        timestamp_version=ts.signed.version,
        timestamp_expires=expires,
        signed_at=ts.signed.unrecognized_fields.get(SIGNED_AT_FIELD),
    )
    last = out["last_refresh"] or {}
    if now >= expires or last.get("kind") == UpdatesStale.kind:
        out["state"] = "updates stale"
        out["what_to_do"] = (
            "the county's signed timestamp has expired: check the network to the county "
            "server; county IT must keep 'canteen-county serve' (or 'timestamp refresh') running"
        )
    else:
        out["state"] = "current"
    for name in trust.LIST_NAMES:
        info = store.list_info(name)
        out[name] = info.__dict__ if info else None
    return out


def _directory_status(applied: dict[str, Any] | None) -> dict[str, Any] | None:
    """The agency directory of the set in force: its version, when the county issued it,
    and its file; None when no set brought one."""
    signed = (applied or {}).get("directory")
    if not isinstance(signed, dict):
        return None
    return {
        "version": signed.get("version"),
        "issued_at": signed.get("issued_at"),
        "file": (applied or {}).get("directory_file"),
    }


def update_once(updater: TerminalUpdater, store: trust.TrustStore, now: int) -> AppliedSet | None:
    """Prepare and apply in the calling thread (commands, tests); records the outcome."""
    state = updater.paths.state
    try:
        prepared = updater.prepare(
            store.applied_update_set(), store.revocation_shard_hashes(), now * 1000
        )
        result = apply(state, store, prepared, now)
    except UpdateError as exc:
        record_refresh(state, {"at": now, "ok": False, "kind": exc.kind, "reason": str(exc)})
        raise
    except trust.TrustError as exc:
        record_refresh(state, {"at": now, "ok": False, "kind": "refused", "reason": str(exc)})
        raise UpdateRefused(str(exc)) from None
    if result is not None:
        note_unrecorded(updater.paths, result, "medium" if updater.link is None else "county")
    record_refresh(
        state,
        {
            "at": now,
            "ok": True,
            "set": prepared.set_version,
            "applied": result is not None,
            "changed": prepared.changed,
            "bytes": prepared.bytes_downloaded,
        },
    )
    return result
