"""The lunch-rush scenario's record: what a run produced, and how it is gathered.

This module owns the ``RunRecord`` (every presentation with what was expected
and what the screen showed, the decisions nobody asked for, the ledger and the
county's copy, the samples, the world events, the outage; saved as run.json
and read back the same), the ``Monitor`` that samples the decision queue, the
terminal's backlog and the county's mark every 100 ms, and the marks that pair
a decision's ledger entry with the presentation it answers (``qr_marks``,
``entry_marks``), and the key algorithms a code was made with (``code_chain``).
It judges nothing: ``hwsim.scenario.report`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import base45
import cbor2

from hwsim.scenario.canteen import RunningTerminal
from hwsim.scenario.clock import SimClock
from hwsim.scenario.plan import TERMINAL_ID
from hwsim.wallet import Wallet
from terminal.core.checkout import credential_ref
from terminal.ledger import LedgerEntry


@dataclass
class RunRecord:
    """Everything a run produced that the checks and the report read; saved as run.json."""

    options: dict[str, Any]
    origin_ms: int
    presentations: list[dict[str, Any]] = field(default_factory=list)
    extra_decisions: list[dict[str, Any]] = field(default_factory=list)
    ledger_entries: list[dict[str, Any]] = field(default_factory=list)
    county_entries: list[dict[str, Any]] = field(default_factory=list)
    ledger_verify: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    outage: dict[str, Any] = field(default_factory=dict)
    ambiguous: int = 0
    real_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # the run itself went wrong

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        return cls(**json.loads(text))


class Monitor:
    """Samples the queue, the terminal's backlog and the county's mark every 100 ms."""

    def __init__(self, clock: SimClock, county: Any, holder: dict[str, RunningTerminal]) -> None:
        self.clock = clock
        self.county = county
        self.holder = holder
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scenario-monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def county_acked(self) -> int:
        term = self.county.store.terminal(TERMINAL_ID)
        return int(term.acked_seq) if term is not None else 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            term = self.holder.get("terminal")
            snap = dict(term.daemon.worker.snapshot) if term is not None else {}
            queue = term.daemon.worker.queue.qsize() if term is not None else None
            self.samples.append(
                {
                    "real": time.time(),
                    "sim_ms": self.clock.now_ms(),
                    "queue": queue,
                    "unsynced": snap.get("unsynced"),
                    "last_seq": snap.get("last_seq"),
                    "county_acked": self.county_acked(),
                    "partitioned": self.county.partitioned,
                }
            )


def qr_marks(text: str, wallet: Wallet | None) -> set[tuple[str, str]]:
    """What a ledger entry for this code carries: the text itself (an accepted sale), its
    digest (a refusal before the credential is trusted), or the credential (a verified code
    refused for a reason of its own, such as a second meal)."""
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]
    marks: set[tuple[str, str]] = {("qr", text), ("qr_sha256", digest)}
    if wallet is not None:
        marks.add(("credential", credential_ref(wallet.iss, wallet.cti)))
    return marks


def entry_marks(entry: LedgerEntry) -> set[tuple[str, str]]:
    """The marks a ledger entry carries, to meet a presentation's ``qr_marks``."""
    detail = entry.detail
    marks: set[tuple[str, str]] = {(k, str(detail[k])) for k in ("qr", "qr_sha256") if k in detail}
    if entry.credential:
        marks.add(("credential", str(entry.credential)))
    return marks


# COSE algs as the lunch's figures name them (token.md §2, §7).
_ALG_WORDS = {-8: "ed25519", -19: "ed25519", -70001: "sm2"}


def code_chain(text: str) -> str | None:
    """The key algorithms a QR code says it was signed with, ``ISSUER/PHONE`` (for example
    ``sm2/ed25519``: an SM2 issuer key and an Ed25519 phone key), read from the code's
    two protected headers; None for a text that is not a well-formed code."""
    try:
        outer = cbor2.loads(base45.b45decode(text.removeprefix("CT1:")))
        credential = cbor2.loads(outer[2])[1]
        inner = cbor2.loads(credential)
        issuer_alg = cbor2.loads(inner[0])[1]
        phone_alg = cbor2.loads(outer[0])[1]
        return f"{_ALG_WORDS[issuer_alg]}/{_ALG_WORDS[phone_alg]}"
    except Exception:  # a simulator's own codes; anything else simply has no chain
        return None
