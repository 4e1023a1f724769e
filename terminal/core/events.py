"""What device threads put on the decision queue. Plain data: no device library here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QrPresented:
    """A QR text decoded from a camera frame (already de-duplicated by the scanner)."""

    text: str
    seen_at: float  # time.monotonic() when the frame arrived
    source: str = "camera"


@dataclass(frozen=True)
class CardPresented:
    """A card UID from the reader, in canonical bytes (already de-duplicated)."""

    uid: bytes
    seen_at: float  # time.monotonic() when the frame completed
    source: str = "reader"
