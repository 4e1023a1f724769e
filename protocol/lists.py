"""The list formats terminal and county share: trust list, revocation list, card roster.

This module owns how a list document reads (token.md §5 and the roster CSV): the
header (version, issue time, expiry), each entry's checks, the index key of one
revocation, and the error that names the list, the entry and what is wrong. The
county checks every list with it before it signs one; the terminal parses what it
installs with it. It works on text and JSON already read: it never opens a file,
a database or the network, and never reads a clock.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from protocol import sm2
from protocol.tokens import ED25519_KEY, SM2_KEY, IssuerKey

ISSUERS = "issuers"
REVOCATIONS = "revocations"
ROSTER = "roster"
LIST_NAMES = (ISSUERS, REVOCATIONS, ROSTER)

REVOCATION_KINDS = ("credential", "cadre", "holder_key", "issuer_key", "card")
CARD_STATUSES = ("active", "lost", "blocked")
ROSTER_COLUMNS = ("uid", "iss", "sub", "unit", "display_name", "status")
# Optional roster columns after the six above, in this order: the cadre's bank account
# and monthly meal allowance in fen. The county reads them (canteen-county cadres
# import, docs/reconciliation.md); the terminal ignores them.
ROSTER_EXTRA_COLUMNS = ("account", "monthly_allowance_fen")

# One byte per revocation kind, so every revocation is a single short key in one index.
_KIND_TAG = MappingProxyType(
    {
        "credential": b"C",
        "cadre": b"S",
        "holder_key": b"H",
        "issuer_key": b"I",
        "card": b"R",
    }
)


# Trust entries' "alg" (token.md §7.4): absent or "Ed25519" is an Ed25519 key of 32 bytes,
# "SM2-SM3" an SM2 key given as its 65-byte uncompressed point on sm2p256v1.
ED25519 = ED25519_KEY
SM2 = SM2_KEY
TRUST_ALGS = (ED25519, SM2)
ED25519_KEY_LEN = 32


class TrustError(Exception):
    """A list is unusable: the message names the list, the entry and what is wrong."""


@dataclass(frozen=True)
class ListHeader:
    """Version and times of a list file; a bare §5 array has none and gets version 0."""

    version: int
    issued_at: int | None
    expires_at: int | None


@dataclass(frozen=True)
class ListInfo:
    """Which version of a list is in force, and how old it is."""

    name: str
    version: int
    issued_at: int  # Unix seconds, from the list's publisher
    expires_at: int | None
    installed_at: int
    count: int


@dataclass(frozen=True)
class RosterCard:
    """One canteen card: its canonical UID and the cadre who holds it."""

    uid: bytes
    iss: str
    sub: str
    unit: str
    display_name: str
    status: str  # active, lost or blocked
    # The optional county columns (ROSTER_EXTRA_COLUMNS); None when absent or empty.
    account: str | None = None
    monthly_allowance_fen: int | None = None

    @property
    def cadre(self) -> str:
        return f"{self.iss}/{self.sub}"


def revocation_key(kind: str, *parts: str | bytes) -> bytes:
    """The index key of one revocation: a kind tag, then length-prefixed parts."""
    out = bytearray(_KIND_TAG[kind])
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else part
        out += len(raw).to_bytes(2, "big") + raw
    return bytes(out)


def parse_list_json(data: bytes, source: str, name: str) -> Any:
    """A list file's bytes as JSON, read as a UTF-8 text file reads (universal newlines).

    ``source`` names the file in the error; a file that is not UTF-8 or not JSON is a
    ``TrustError`` that says so."""
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrustError(f"{source}: the {name} list is not valid JSON: {exc}") from None


def _hex(value: Any, where: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise TrustError(f"{where}: must be hex text")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise TrustError(f"{where}: not hex: {value[:40]!r}") from None
    if length is not None and len(raw) != length:
        raise TrustError(f"{where}: must be {length} bytes, got {len(raw)}")
    return raw


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise TrustError(f"{where}: must be a non-empty text")
    return value


def _opt_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrustError(f"{where}: must be a whole number of Unix seconds")
    return value


def split_list(doc: Any, name: str) -> tuple[list[Any], ListHeader]:
    """A list document: a bare §5 array, or {"version", "issued_at", "expires_at", "entries"}."""
    if isinstance(doc, list):
        return doc, ListHeader(0, None, None)
    if isinstance(doc, dict) and isinstance(doc.get("entries"), list):
        version = _opt_int(doc.get("version", 0), f"{name} list: version")
        header = ListHeader(
            version or 0,
            _opt_int(doc.get("issued_at"), f"{name} list: issued_at"),
            _opt_int(doc.get("expires_at"), f"{name} list: expires_at"),
        )
        return doc["entries"], header
    raise TrustError(f"{name} list: must be a JSON array of entries or an object with 'entries'")


def issuer_key(
    iss: str,
    kid: bytes,
    public_key: bytes,
    not_before: int | None = None,
    not_after: int | None = None,
) -> IssuerKey:
    """A trusted key as checked entries give it; its algorithm follows from the raw key,
    65 bytes for SM2 and 32 for Ed25519 (``parse_issuer_keys`` allows nothing else), so a
    store that keeps the raw key keeps its algorithm too."""
    alg = SM2_KEY if len(public_key) == sm2.POINT_LEN else ED25519_KEY
    return IssuerKey(iss, kid, public_key, not_before, not_after, alg=alg)


def _sm2_point(raw: bytes, where: str) -> bytes:
    """``raw`` if it is an SM2 public key libcrypto takes (a trust entry: few, and used)."""
    try:
        sm2.Sm2PublicKey.from_point(raw)
    except ValueError as exc:
        raise TrustError(f"{where}: {exc}") from None
    return raw


def _on_curve(raw: bytes, where: str) -> bytes:
    """``raw`` if it is ``04 || x || y`` on sm2p256v1, by the curve equation alone: a
    revocation entry is only compared, and a list may hold many (a few microseconds each,
    where loading each into libcrypto took about 400)."""
    x, y = int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big")
    if raw[:1] != b"\x04":
        raise TrustError(f"{where}: SM2 public key: not a 65-byte uncompressed point 04||x||y")
    if not sm2.on_curve(x, y):
        raise TrustError(f"{where}: SM2 public key: the point is not on the curve sm2p256v1")
    return raw


def _key_alg(entry: dict[Any, Any], where: str) -> str:
    alg = entry.get("alg", ED25519)
    if alg not in TRUST_ALGS:
        shown = repr(alg)[:40] if isinstance(alg, str) else "not a text"
        raise TrustError(f"{where}: alg must be {ED25519} (or absent) or {SM2}, not {shown}")
    return str(alg)


def parse_issuer_keys(entries: Sequence[Any]) -> list[IssuerKey]:
    """Trusted keys from §5 trust entries; the first bad entry is a TrustError naming it.

    An entry's ``alg`` (§7.4) says what ``public_key`` is: absent or ``"Ed25519"``,
    32 bytes; ``"SM2-SM3"``, the 65-byte point ``04 || x || y``, which must lie on
    sm2p256v1. Any other alg is refused, and so is a kid that is not the first 8
    bytes of SHA-256 of the raw key."""
    keys = []
    for i, entry in enumerate(entries):
        where = f"trust list entry {i}"
        if not isinstance(entry, dict):
            raise TrustError(f"{where}: must be an object")
        alg = _key_alg(entry, where)
        if alg == SM2:
            pk = _hex(entry.get("public_key"), f"{where}: public_key (SM2-SM3)", sm2.POINT_LEN)
            _sm2_point(pk, f"{where}: public_key")
        else:
            pk = _hex(entry.get("public_key"), f"{where}: public_key")
            if len(pk) == sm2.POINT_LEN and "alg" not in entry:
                raise TrustError(
                    f'{where}: public_key is 65 bytes, an SM2 point: add "alg": "{SM2}"'
                )
            if len(pk) != ED25519_KEY_LEN:
                raise TrustError(f"{where}: public_key: must be 32 bytes, got {len(pk)}")
        kid = _hex(entry.get("kid"), f"{where}: kid", 8)
        if kid != hashlib.sha256(pk).digest()[:8]:
            raise TrustError(f"{where}: kid {kid.hex()} is not the kid of its public key")
        keys.append(
            issuer_key(
                _text(entry.get("iss"), f"{where}: iss"),
                kid,
                pk,
                _opt_int(entry.get("not_before"), f"{where}: not_before"),
                _opt_int(entry.get("not_after"), f"{where}: not_after"),
            )
        )
    return keys


def revoked_public_key(value: Any, where: str) -> bytes:
    """The raw key of a ``holder_key`` or ``issuer_key`` revocation (§5, §7.4): 32 bytes of
    an Ed25519 key, or the 65-byte point of an SM2 key (which must be on the curve)."""
    raw = _hex(value, where)
    if len(raw) == ED25519_KEY_LEN:
        return raw
    if len(raw) == sm2.POINT_LEN:
        return _on_curve(raw, where)
    raise TrustError(
        f"{where}: must be 32 bytes (an Ed25519 key) or 65 bytes (an SM2 point 04||x||y), "
        f"got {len(raw)}"
    )


def parse_revocations(entries: Iterable[Any]) -> Iterator[bytes]:
    """Revocation index keys from §5 entries; a bad entry stops with a TrustError naming it."""
    for i, entry in enumerate(entries):
        where = f"revocation list entry {i}"
        if not isinstance(entry, dict):
            raise TrustError(f"{where}: must be an object")
        kind = entry.get("kind")
        if kind == "credential":
            cti = _hex(entry.get("cti"), f"{where}: cti")
            yield revocation_key(kind, _text(entry.get("iss"), f"{where}: iss"), cti)
        elif kind == "cadre":
            iss = _text(entry.get("iss"), f"{where}: iss")
            yield revocation_key(kind, iss, _text(entry.get("sub"), f"{where}: sub"))
        elif kind in ("holder_key", "issuer_key"):
            yield revocation_key(
                kind, revoked_public_key(entry.get("public_key"), f"{where}: public_key")
            )
        elif kind == "card":
            uid = _hex(entry.get("uid"), f"{where}: uid")
            if not 4 <= len(uid) <= 10:
                raise TrustError(f"{where}: uid must be 4 to 10 bytes, got {len(uid)}")
            yield revocation_key(kind, uid)
        else:
            raise TrustError(f"{where}: kind must be one of {', '.join(REVOCATION_KINDS)}")


def roster_header_ok(fieldnames: Sequence[str] | None) -> bool:
    """Whether a roster CSV's header is the six columns, then none, the first or both
    of ROSTER_EXTRA_COLUMNS in their order."""
    if fieldnames is None or tuple(fieldnames[:6]) != ROSTER_COLUMNS:
        return False
    extra = tuple(fieldnames[6:])
    return extra == ROSTER_EXTRA_COLUMNS[: len(extra)]


def roster_card(row: dict[str | Any, Any], where: str) -> RosterCard:
    """One roster CSV row (a csv.DictReader row of a header ``roster_header_ok`` allows)
    as a card, or a TrustError that starts with ``where``."""
    uid = _hex(row["uid"], f"{where}: uid")
    if not 4 <= len(uid) <= 10:
        raise TrustError(f"{where}: uid must be 4 to 10 bytes, got {len(uid)}")
    status = row["status"]
    if status not in CARD_STATUSES:
        raise TrustError(f"{where}: status must be one of {', '.join(CARD_STATUSES)}")
    account = (row.get("account") or "").strip() or None
    allowance_text = (row.get("monthly_allowance_fen") or "").strip()
    allowance = None
    if allowance_text:
        if not (allowance_text.isascii() and allowance_text.isdigit()) or len(allowance_text) > 18:
            raise TrustError(
                f"{where}: monthly_allowance_fen must be a whole number of fen (0 or more), "
                f"got {allowance_text[:40]!r}"
            )
        allowance = int(allowance_text)
    return RosterCard(
        uid=uid,
        iss=_text(row["iss"], f"{where}: iss"),
        sub=_text(row["sub"], f"{where}: sub"),
        unit=_text(row["unit"], f"{where}: unit"),
        display_name=_text(row["display_name"], f"{where}: display_name"),
        status=status,
        account=account,
        monthly_allowance_fen=allowance,
    )


def parse_roster_csv(text: str) -> list[RosterCard]:
    """A roster CSV with the header uid,iss,sub,unit,display_name,status (uid in hex),
    optionally followed by account and monthly_allowance_fen (ROSTER_EXTRA_COLUMNS)."""
    reader = csv.DictReader(io.StringIO(text))
    if not roster_header_ok(reader.fieldnames):
        raise TrustError(
            f"roster CSV: the header must be {','.join(ROSTER_COLUMNS)}, optionally followed "
            f"by {','.join(ROSTER_EXTRA_COLUMNS)}"
        )
    return [roster_card(row, f"roster CSV line {reader.line_num}") for row in reader]
