"""The sync protocol's signed messages, as both sides build them (docs/sync-protocol.md).

This module owns the protocol version and the exact bytes the county's time signature
covers. It never opens a connection, never reads a clock (time is an argument) and
never touches a file: terminal/sync.py and county/app.py do those.
"""

from __future__ import annotations

import cbor2

PROTOCOL_VERSION = 1
TIME_DOMAIN = "canteen-county/time/v1"


def time_message(terminal_id: str, server_ms: int, acked_seq: int, nonce: bytes) -> bytes:
    """The bytes the county's time signature covers (canonical CBOR)."""
    return cbor2.dumps([TIME_DOMAIN, terminal_id, server_ms, acked_seq, nonce], canonical=True)
