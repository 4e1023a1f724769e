"""The update repository's layout, as the county writes it and the terminal reads it.

This module owns the target paths (settings per canteen, trust list, roster,
agency directory, revocation index and shards), how a revocation key maps to its
shard, and the exact bytes of a shard file (docs/updates.md). It never reads or
writes a file and never talks TUF: terminal/updates/ and county/updates.py do those.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

SHARD_HEX = 3  # hex digits of SHA-256(revocation key) that name its shard
SHARD_COUNT = 16**SHARD_HEX
BIN_BITS = 6  # shards are listed in 2**6 delegated "bins" roles (hash of the target path)
BIN_PREFIX = "bins"
INDEX_TARGET = "revocations/index.json"
TRUST_TARGET = "trust/issuers.json"
ROSTER_TARGET = "roster/roster.csv"
DIRECTORY_TARGET = "lists/directory.json"  # the agency directory (protocol.agencies)
# The largest directory a terminal downloads; the county signs none larger.
DIRECTORY_MAX_BYTES = 32 * 1024 * 1024
SIGNED_AT_FIELD = "x-canteen-signed-at"  # Unix seconds the timestamp was signed, in its body


def settings_target(canteen: str | None) -> str:
    """The target path of the settings for one canteen, or for every canteen (None)."""
    return "settings/all.toml" if canteen is None else f"settings/canteen/{canteen}.toml"


def shard_of(key: bytes) -> str:
    """The shard of a revocation index key (protocol.lists.revocation_key)."""
    return hashlib.sha256(key).hexdigest()[:SHARD_HEX]


def shard_bytes(shard: str, version: int, entries: list[dict[str, Any]]) -> bytes:
    """The exact bytes of a shard file; the county writes them, the terminal may rebuild."""
    doc = {"count": len(entries), "entries": entries, "shard": shard, "version": version}
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def shard_target(shard: str) -> str:
    return f"revocations/shard-{shard}.json"


def all_shards() -> Iterator[str]:
    for n in range(SHARD_COUNT):
        yield f"{n:0{SHARD_HEX}x}"


def layers_digest(digests: list[str]) -> str:
    """One SHA-256 that names a set's settings layers: a single file's own hash (as before
    layers), else the hash of the layers' hashes in order. The terminal records it in its
    config_applied entries; the county computes it to tell whether a terminal is current."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()
