"""Exactly once with two county server processes on one PostgreSQL (issue 14).

Two real `canteen-county serve` processes, each with its own connection pool, share one
fresh PostgreSQL database (conftest's pg_county_url). A terminal's upload is built the way
its SyncClient builds it (the ledger read by terminal.sync's LedgerReader, a checkpoint
signed with the ledger key over the batch's last entry, encode_body) and POSTed over mTLS
with its client certificate to both processes at the same instant: each sender holds an
open TLS connection and waits on one threading.Barrier, so the two requests reach the two
processes within a fraction of a millisecond, many rounds in a row.

What must hold whichever process the database lets through first:

- duplicates: both answers acknowledge the same mark, every seq is stored once, the
  stored chain is the terminal's ledger, and no counter or alarm is counted twice (a
  slow clock's time_signal, read by both processes after the intake, is one alarm);
- gaps: a later batch that arrives in one process while the earlier one arrives in the
  other is either taken after it or held and drained by it, nothing lost or doubled;
- forks: two different entries under one seq, one to each process: exactly one stored,
  the other refused as a fork, one alarm row whose `times` counts every refusal;
- conflicts: one phone code accepted at two canteens (or one cadre's two codes in one
  meal), each terminal uploading to another process at the same instant: exactly one
  conflict and one revocation each time.

Nothing here holds a lock of its own: the county's database rules do (the terminal's row
locked FOR UPDATE at intake, advisory locks on the cross-terminal keys, upserts for alarms
and counters; county/intake.py and county/conflicts.py). Each test counts the rounds that
went wrong and names them, so a run with a lock taken out says how often it was caught.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import listening, wait_for
from countykit import (
    T0_MS,
    County,
    Terminal,
    local_chain,
    make_county,
    provision_terminal,
    server_chain,
)
from hwsim.wallet import Issuer, Wallet, key_from_seed, make_wallet
from pgkit import Cluster
from sqlalchemy import func, select

from county.db.schema import entries as entries_table
from county.db.schema import held_batches
from county.store import CountyStore
from protocol.chain import TIME_SIGNAL
from terminal import state
from terminal.ledger import ACCEPT, REJECT, SALE, EntryDraft, load_or_create_signing_key
from terminal.sync import LedgerReader, _batch_checkpoint, encode_body

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ISSUER = Issuer("hn-concurrency", key_from_seed("concurrency-issuer"))
T0 = T0_MS // 1000
DAY = "2026-05-28"


# --- two server processes on one database -------------------------------------------------


@dataclasses.dataclass
class ServerProcess:
    """One `canteen-county serve` child process and the URL it answers on."""

    proc: subprocess.Popen[str]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def failures(self) -> str:
        """What the process wrote to standard error (tracebacks of answers it failed)."""
        return self.log.read_text(errors="replace")


def start_server(data: Path, database_url: str, log: Path) -> ServerProcess:
    """`canteen-county serve` on a port it picks itself, once it answers /v1/health."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hw-sim")]),
    }
    env.pop("CANTEEN_COUNTY_DATABASE", None)
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "county.cli",
                "serve",
                "--data",
                str(data),
                "--database",
                database_url,
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=ROOT,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "canteen-county: serving on https://HOST:PORT (...)"
    if "serving on " not in line:
        proc.wait(15)
        raise AssertionError(f"serve did not start: {line!r} {log.read_text()}")
    url = line.split("serving on ", 1)[1].split()[0]
    host, port = url.removeprefix("https://").rsplit(":", 1)
    server = ServerProcess(proc, url, log)
    try:
        wait_for(lambda: listening(host, int(port)), what=f"{url} to listen")
    except AssertionError:
        server.stop()
        raise
    return server


@dataclasses.dataclass
class Pair:
    """A county (its CA and data directory) served by two processes on one database, and
    the test's own store on that database to read what they stored."""

    county: County
    servers: list[ServerProcess]
    store: CountyStore

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def failures(self) -> str:
        """The end of each process's standard error, for a failing test's message."""
        return "".join(f"\n--- {s.url}:\n{s.failures()[-3000:]}" for s in self.servers)

    def counts(self) -> dict[str, int]:
        """The county's counters now (the tests share one database: they compare deltas)."""
        names = (
            "entries_accepted",
            "entries_duplicate",
            "batches_ok",
            "batches_gap",
            "batches_refused",
            "sales_unjudged",
        )
        return {name: self.store.counter(name) for name in names}


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: Cluster, pg_county_template: str
) -> Iterator[Pair]:
    """Made once for the module (two processes take seconds to start on a loaded machine);
    each test uses terminals of its own and compares counters before and after."""
    root = tmp_path_factory.mktemp("pair")
    if not pg_cluster.running():
        pg_cluster.start()
    name = f"t{os.getpid()}_concurrency"
    database_url = pg_cluster.create_database(name, pg_county_template)
    county = make_county(root, database_url)
    store = CountyStore(database_url)
    # The issuer's key, so that phone codes are evidence (the conflicts test).
    store.add_issuer_keys([ISSUER.trust_entry()], int(time.time() * 1000))
    servers: list[ServerProcess] = []
    try:
        for i in range(2):
            servers.append(start_server(county.data, database_url, root / f"serve{i}.log"))
        yield Pair(county, servers, store)
    finally:
        for s in servers:
            s.stop()
        store.close()
        if not pg_cluster.running():
            pg_cluster.start()
        pg_cluster.drop_database(name)


# --- a terminal's uploads --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    """One upload's answer: the HTTP status (0 when the connection failed) and its body."""

    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Sender:
    """The terminal's side of both processes: one kept-alive mTLS connection to each, made
    before the race so that the handshakes are not part of it."""

    def __init__(self, term: Terminal, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.sessions = []
        ident = term.identity
        # Per request, not on the session: requests lets REQUESTS_CA_BUNDLE override a
        # session's verify, never a request's.
        self.tls: dict[str, Any] = {
            "cert": (str(ident.cert_file), str(ident.key_file)),
            "verify": str(ident.ca_file),
        }
        for url in self.urls:
            s = requests.Session()
            s.get(url + "/v1/health", timeout=30, **self.tls).raise_for_status()
            self.sessions.append(s)

    def post(self, server: int, body: bytes) -> Answer:
        try:
            answer = self.sessions[server].post(
                self.urls[server] + "/v1/ledger",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=60,
                **self.tls,
            )
        except requests.ConnectionError as exc:
            # A server closes the connection after an answer it failed (a 500): the kept
            # connection's next request finds it closed. A round that went wrong, not a crash.
            return Answer(0, f"the connection failed: {exc}")
        return Answer(answer.status_code, answer.text)

    def close(self) -> None:
        for s in self.sessions:
            s.close()


def at_once(sends: Sequence[tuple[Sender, int, bytes]]) -> list[Answer]:
    """POST each body to its server, all released by one barrier; the answers in order."""
    barrier = threading.Barrier(len(sends))
    answers: list[Answer | None] = [None] * len(sends)

    def send(i: int) -> None:
        sender, server, body = sends[i]
        barrier.wait(30)
        answers[i] = sender.post(server, body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sends))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    out = [a for a in answers if a is not None]
    assert len(out) == len(sends), "a send never returned"
    return out


def upload(term: Terminal, first: int, last: int, ledger: Path | None = None) -> bytes:
    """The body the terminal's SyncClient posts for entries first..last of its ledger: the
    rows as LedgerReader reads them for the wire, the ledger's checkpoints among them and
    one signed over the last entry when the ledger has none there, a fresh nonce, and
    encode_body's bytes (terminal/sync.py, SyncClient._sync)."""
    reader = LedgerReader(ledger or term.ledger_path)
    try:
        rows = reader.wire_batch(first, last - first + 1, last)
        assert len(rows) == last - first + 1, (first, last, len(rows))
        cps = reader.checkpoints(rows[0][0], rows[-1][0])
    finally:
        reader.close()
    if not cps or cps[-1][0] != rows[-1][0]:
        key = load_or_create_signing_key(state.StatePaths(term.root).key)
        cps.append(_batch_checkpoint(key, term.terminal_id, rows[-1]))
    doc = {"nonce": secrets.token_bytes(16).hex(), "entries": rows, "checkpoints": cps}
    return encode_body(doc)


def card_sale(n: int, unit: str = "u1") -> EntryDraft:
    """An accepted card sale (no roster is published: counted as unjudged, no alarm), every
    fifth one a refusal."""
    if n % 5 == 4:
        return EntryDraft(kind=SALE, verdict=REJECT, reason="revoked", method="card")
    return EntryDraft(
        kind=SALE,
        verdict=ACCEPT,
        method="card",
        cadre=f"iss-a/cadre-{n}",
        credential=f"card/{n:08x}",
        unit=unit,
        day=DAY,
        meal="lunch",
        amount_fen=1000 + n,
    )


def append(term: Terminal, drafts: Sequence[EntryDraft], ledger: Path | None = None) -> int:
    """Record ``drafts`` in the terminal's ledger (or a copy of it); its last seq."""
    if ledger is None:
        book = term.open_ledger()
    else:
        book = state.open_ledger(ledger, state.StatePaths(term.root).key, term.terminal_id, T0_MS)
    try:
        for i, draft in enumerate(drafts):
            book.append(draft, T0_MS + book.last_seq() + i)
        return book.last_seq()
    finally:
        book.close()


def stored_seqs(store: CountyStore, terminal_id: str) -> list[int]:
    with store.db.read() as conn:
        return [
            int(s)
            for s in conn.execute(
                select(entries_table.c.seq)
                .where(entries_table.c.terminal == terminal_id)
                .order_by(entries_table.c.seq)
            ).scalars()
        ]


def held_count(store: CountyStore, terminal_id: str) -> int:
    with store.db.read() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(held_batches)
                .where(held_batches.c.terminal == terminal_id)
            ).scalar_one()
        )


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after}


def rounds_wrong(wrong: Sequence[str], rounds: int) -> str:
    """'N of M rounds went wrong' over lines that each begin "round R" (one round may
    have several lines)."""
    bad = {line.split(":")[0].split(",")[0] for line in wrong}
    return f"{len(bad)} of {rounds} rounds went wrong"


def describe(answers: Sequence[Answer]) -> str:
    return "; ".join(f"{a.status} {a.text[:200]}" for a in answers)


# --- duplicates --------------------------------------------------------------------------------

ROUNDS = 30


def test_the_same_batch_at_two_processes_at_once_is_stored_once_and_acknowledged_twice(
    pair: Pair, tmp_path: Path
) -> None:
    term = provision_terminal(pair.county, tmp_path / "t", "d1", "c1", server=pair.urls[0])
    before = pair.counts()
    sender = Sender(term, pair.urls)
    wrong: list[str] = []
    accepted_sales = 0
    try:
        acked = 0
        for r in range(ROUNDS):
            drafts = [card_sale(r * 100 + i) for i in range(12)]
            accepted_sales += sum(1 for d in drafts if d.verdict == ACCEPT)
            if r % 5 == 0:
                # The terminal's clock two minutes slow: both processes read its clock
                # (note_clock) after the intake, and must raise the alarm once.
                drafts.append(
                    EntryDraft(
                        kind=TIME_SIGNAL,
                        detail={"server_ms": T0_MS, "wall_ahead_ms": -120_000, "offset_ms": 0},
                    )
                )
            last = append(term, drafts)
            body = upload(term, acked + 1, last)
            answers = at_once([(sender, 0, body), (sender, 1, body)])
            docs = [a.json() if a.status == 200 else None for a in answers]
            if not all(d is not None and d["status"] == "ok" for d in docs) or {
                d["acked_seq"] for d in docs if d is not None
            } != {last}:
                wrong.append(f"round {r}: {describe(answers)}")
            elif sorted((d["accepted"], d["duplicates"]) for d in docs if d) != sorted(
                [(last - acked, 0), (0, last - acked)]
            ):
                wrong.append(f"round {r}: stored by both or by neither: {describe(answers)}")
            acked = last
    finally:
        sender.close()
    assert not wrong, rounds_wrong(wrong, ROUNDS) + ":\n" + "\n".join(wrong) + pair.failures()
    last = acked
    # Every seq once, the chain the terminal's, the mark where the ledger ends.
    assert stored_seqs(pair.store, "d1") == list(range(1, last + 1))
    assert server_chain(pair.store, "d1") == local_chain(term.ledger_path)
    assert pair.store.terminal("d1").acked_seq == last  # type: ignore[union-attr]
    # Counted once: each entry accepted once and resent once, each batch answered twice.
    assert grown(before, pair.counts()) == {
        "entries_accepted": last,
        "entries_duplicate": last,
        "batches_ok": 2 * ROUNDS,
        "batches_gap": 0,
        "batches_refused": 0,
        "sales_unjudged": accepted_sales,
    }
    clock = [(a["kind"], a["times"]) for a in pair.store.alarms() if a["terminal"] == "d1"]
    assert clock == [("clock", 1)] * (ROUNDS // 5)


# --- gaps --------------------------------------------------------------------------------------


def test_a_later_batch_at_one_process_while_the_earlier_reaches_the_other_is_held_then_drained(
    pair: Pair, tmp_path: Path
) -> None:
    term = provision_terminal(pair.county, tmp_path / "t", "g1", "c1", server=pair.urls[0])
    before = pair.counts()
    sender = Sender(term, pair.urls)
    wrong: list[str] = []
    held_rounds = 0
    try:
        acked = 0
        for r in range(ROUNDS):
            last = append(term, [card_sale(r * 100 + i) for i in range(16)])
            middle = acked + (last - acked) // 2
            earlier, later = upload(term, acked + 1, middle), upload(term, middle + 1, last)
            # The earlier batch to one process, the later to the other, turn about.
            e, lt = r % 2, 1 - r % 2
            a_earlier, a_later = at_once([(sender, e, earlier), (sender, lt, later)])
            ok = a_earlier.status == 200 and a_later.status == 200
            if ok:
                d_earlier, d_later = a_earlier.json(), a_later.json()
                if d_later["status"] == "gap":
                    # Held: taken by the earlier batch's intake, which answers the whole mark.
                    held_rounds += 1
                    ok = d_later["acked_seq"] == acked and d_earlier["acked_seq"] == last
                else:
                    ok = d_later["status"] == "ok" and d_later["acked_seq"] == last
                    ok = ok and d_earlier["status"] == "ok" and d_earlier["acked_seq"] >= middle
            if not ok:
                wrong.append(f"round {r}: {describe([a_earlier, a_later])}")
            mark = pair.store.terminal("g1").acked_seq  # type: ignore[union-attr]
            if mark != last:
                wrong.append(f"round {r}: the county's mark is {mark}, the terminal sent {last}")
                # The terminal's next sync would resend from the mark: do so, and go on.
                resend = sender.post(0, upload(term, mark + 1, last))
                assert resend.status == 200 and resend.json()["acked_seq"] == last
            acked = last
    finally:
        sender.close()
    assert not wrong, (
        rounds_wrong(wrong, ROUNDS)
        + f" ({held_rounds} held):\n"
        + "\n".join(wrong)
        + pair.failures()
    )
    last = acked
    assert stored_seqs(pair.store, "g1") == list(range(1, last + 1))
    assert server_chain(pair.store, "g1") == local_chain(term.ledger_path)
    assert held_count(pair.store, "g1") == 0
    counted = grown(before, pair.counts())
    assert counted["entries_accepted"] == last
    assert counted["batches_gap"] == held_rounds
    assert counted["entries_duplicate"] == 0
    print(f"gap rounds: {held_rounds} of {ROUNDS} held then drained")


# --- forks -------------------------------------------------------------------------------------

FORK_ROUNDS = 12


def clone_ledger(source: Path, target: Path) -> None:
    """Make ``target`` a copy of the closed ledger ``source`` (its WAL files included)."""
    for old in target.parent.glob(target.name + "*"):
        old.unlink()
    for f in source.parent.glob(source.name + "*"):
        shutil.copy2(f, target.parent / (target.name + f.name[len(source.name) :]))


def test_two_entries_under_one_seq_at_two_processes_at_once_store_one_and_raise_one_alarm(
    pair: Pair, tmp_path: Path
) -> None:
    term = provision_terminal(pair.county, tmp_path / "f", "f1", "c1", server=pair.urls[0])
    # A second copy of the terminal's ledger (a restored backup, a clone): the same key and
    # history, then different sales under the same numbers each round. After a round the
    # copy the county took is copied over the other, and they part again.
    (tmp_path / "twin").mkdir()
    ledgers = [term.ledger_path, tmp_path / "twin" / term.ledger_path.name]
    clone_ledger(ledgers[0], ledgers[1])
    sender = Sender(term, pair.urls)
    wrong: list[str] = []
    before = pair.counts()
    # The genesis both copies share, taken first.
    assert sender.post(0, upload(term, 1, 1)).json()["acked_seq"] == 1
    acked = 1
    try:
        for r in range(FORK_ROUNDS):
            lasts = [
                append(term, [card_sale(r * 10 + i, unit=f"u-{side}") for i in range(5)], ledger)
                for side, ledger in enumerate(ledgers)
            ]
            assert lasts[0] == lasts[1]
            last = lasts[0]
            bodies = [upload(term, acked + 1, last, ledger) for ledger in ledgers]
            answers = at_once([(sender, 0, bodies[0]), (sender, 1, bodies[1])])
            # Whichever copy the county holds now won the race; the other must be a fork.
            stored = server_chain(pair.store, "f1")
            held = [i for i, ledger in enumerate(ledgers) if local_chain(ledger) == stored]
            if not held:
                wrong.append(f"round {r}: the stored chain is neither copy's; {describe(answers)}")
                break
            winner, loser = held[0], 1 - held[0]
            won, lost = answers[winner], answers[loser]
            if not (
                won.status == 200
                and won.json()["acked_seq"] == last
                and lost.status == 409
                and lost.json()["alarm"] == "fork"
            ):
                wrong.append(f"round {r}: {describe(answers)}")
            # The clone retries, at both processes at once: refused each time, one alarm.
            again = at_once([(sender, 0, bodies[loser]), (sender, 1, bodies[loser])])
            if [a.status for a in again] != [409, 409]:
                wrong.append(f"round {r}, the retry: {describe(again)}")
            forks = [a for a in pair.store.alarms() if a["terminal"] == "f1" and a["seq"] > acked]
            theirs = local_chain(ledgers[loser])[acked][1]  # the first entry that differs
            if [(a["kind"], a["seq"], a["times"], a["hash"]) for a in forks] != [
                ("fork", acked + 1, 3, theirs)
            ]:
                wrong.append(f"round {r}: alarms {json.dumps(forks)[:400]}")
            clone_ledger(ledgers[winner], ledgers[loser])
            acked = last
    finally:
        sender.close()
    assert not wrong, rounds_wrong(wrong, FORK_ROUNDS) + ":\n" + "\n".join(wrong) + pair.failures()
    counted = grown(before, pair.counts())
    assert counted["batches_refused"] == 3 * FORK_ROUNDS
    assert counted["entries_accepted"] == 5 * FORK_ROUNDS + 1  # and the genesis
    assert counted["batches_ok"] == FORK_ROUNDS + 1
    assert len([a for a in pair.store.alarms() if a["terminal"] == "f1"]) == FORK_ROUNDS


# --- conflicts found once ----------------------------------------------------------------------

CONFLICT_ROUNDS = 20


def wallet(sub: str) -> Wallet:
    return make_wallet(ISSUER, sub, "u-tax", f"Cadre {sub}", now=T0 - 86_400, seed=sub)


def qr_sale(w: Wallet, qr: str, ctr: int) -> EntryDraft:
    """An accepted QR sale as a terminal records it: the phone's signed code in detail."""
    return EntryDraft(
        kind=SALE,
        verdict=ACCEPT,
        method="qr",
        cadre=f"{w.iss}/{w.sub}",
        credential=f"qr/{w.iss}/{w.cti.hex()}",
        ctr=ctr,
        unit=w.unit,
        day=DAY,
        meal="lunch",
        amount_fen=1200,
        detail={"qr": qr},
    )


@pytest.mark.parametrize("kind", ["presentation_twice", "served_twice"])
def test_one_cadre_at_two_canteens_uploaded_to_two_processes_at_once_is_one_conflict(
    pair: Pair, tmp_path: Path, kind: str
) -> None:
    """presentation_twice: one phone code (iss, cti, ctr) accepted at two canteens (a
    screenshot); served_twice: one cadre's two codes at two canteens in one meal. Each
    terminal uploads to another process at the same instant: one conflict, one revocation."""
    n = 1 if kind == "presentation_twice" else 2
    terms = [
        provision_terminal(pair.county, tmp_path / "a", f"a{n}", "canteen-a", server=pair.urls[0]),
        provision_terminal(pair.county, tmp_path / "b", f"b{n}", "canteen-b", server=pair.urls[1]),
    ]
    ids = {t.terminal_id for t in terms}
    senders = [Sender(t, pair.urls) for t in terms]
    wrong: list[str] = []
    credentials = []
    try:
        acked = [0, 0]
        for r in range(CONFLICT_ROUNDS):
            w = wallet(f"{kind}-{r}")
            # One presentation (counter 1) shown at both canteens, or two codes of one phone.
            codes = [(w.draw(T0, 1), 1)] * 2 if n == 1 else [(w.draw(T0, c), c) for c in (1, 2)]
            credentials.append(f"qr/{w.iss}/{w.cti.hex()}")
            lasts = [append(t, [qr_sale(w, *codes[i])]) for i, t in enumerate(terms)]
            bodies = [upload(t, acked[i] + 1, lasts[i]) for i, t in enumerate(terms)]
            # Terminal a to one process, terminal b to the other, turn about.
            first = r % 2
            answers = at_once([(senders[0], first, bodies[0]), (senders[1], 1 - first, bodies[1])])
            if [a.status for a in answers] != [200, 200] or [
                a.json()["acked_seq"] for a in answers
            ] != lasts:
                wrong.append(f"round {r}: {describe(answers)}")
            acked = lasts
            found = [c for c in pair.store.conflicts() if c["credential"] == credentials[-1]]
            if [c["kind"] for c in found] != [kind]:
                wrong.append(f"round {r}: conflicts {[c['kind'] for c in found]}, not [{kind}]")
    finally:
        for s in senders:
            s.close()
    assert not wrong, (
        rounds_wrong(wrong, CONFLICT_ROUNDS) + ":\n" + "\n".join(wrong) + pair.failures()
    )
    conflicts = [c for c in pair.store.conflicts() if c["credential"] in credentials]
    assert [c["kind"] for c in conflicts] == [kind] * CONFLICT_ROUNDS
    assert sorted(c["credential"] for c in conflicts) == sorted(credentials)
    assert all({c["first"]["terminal"], c["second"]["terminal"]} == ids for c in conflicts)
    ctis = {c.rsplit("/", 1)[1] for c in credentials}
    revoked = [r for r in pair.store.revocations() if r.get("cti") in ctis]
    assert sorted(r["cti"] for r in revoked) == sorted(ctis)
    assert [a for a in pair.store.alarms() if a["terminal"] in ids] == []
    for t in terms:
        assert server_chain(pair.store, t.terminal_id) == local_chain(t.ledger_path)
