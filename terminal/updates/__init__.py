"""Signed updates from county IT (docs/updates.md): one name for the three modules below.

This package owns the terminal's side of signed updates, in three modules:
``apply`` (verify one set with python-tuf and apply it atomically; roll a set
back; the agency directory in force, ``installed_directory``), ``marker`` (the
start-up marker: which set a start uses and when it is confirmed, the settings
in force) and ``status`` (what is in force, the last refresh, the one-call
refresh for commands). It re-exports their public names so
``from terminal import updates; updates.apply(...)`` works; it holds no code of
its own, never decides a verdict and never writes the ledger.
"""

from __future__ import annotations

from protocol.layout import all_shards, settings_target, shard_of, shard_target
from terminal.updates.apply import (
    AppliedSet,
    NotPinned,
    PreparedSet,
    TerminalUpdater,
    UpdateError,
    UpdateLimits,
    UpdatePaths,
    UpdateRefused,
    UpdatesStale,
    UpdateUnavailable,
    apply,
    check_settings,
    check_settings_layers,
    installed_directory,
    layered_settings,
    parse_shard,
    pin_root,
    roll_back,
    updater_for_county,
)
from terminal.updates.marker import StartNote, begin_start, confirm_started, effective_settings
from terminal.updates.status import record_refresh, status, update_once

__all__ = [
    "AppliedSet",
    "NotPinned",
    "PreparedSet",
    "StartNote",
    "TerminalUpdater",
    "UpdateError",
    "UpdateLimits",
    "UpdatePaths",
    "UpdateRefused",
    "UpdateUnavailable",
    "UpdatesStale",
    "all_shards",
    "apply",
    "begin_start",
    "check_settings",
    "check_settings_layers",
    "confirm_started",
    "effective_settings",
    "installed_directory",
    "layered_settings",
    "parse_shard",
    "pin_root",
    "record_refresh",
    "roll_back",
    "settings_target",
    "shard_of",
    "shard_target",
    "status",
    "update_once",
    "updater_for_county",
]
