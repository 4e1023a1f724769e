"""Terminal replacement (issue 16): retire a dead terminal's id, provision its successor, and
recover the old ledger from its SD card, with real parts: a real terminal daemon selling
and syncing over mTLS, the real `canteen-terminal ledger export --format recovery` and
`canteen-county terminal retire|replace|recover` commands, a real county server.

What a recovery must do: the county ends with every entry of the old terminal exactly
once; a file that does not verify (a byte changed, an entry removed, entries re-signed
with another key) is refused in one line and changes nothing; the same file twice takes
nothing; an entry that differs from the one the county holds is a fork alarm.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_for
from countykit import (
    ON_EACH_BACKEND,
    T0_MS,
    County,
    Terminal,
    local_chain,
    provision_terminal,
    server_chain,
    sync,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from daemonkit import CARD_UID, SYNC, ReaderPty, install_lists, write_settings
from sqlalchemy import func, select

from county.cli import main as county_main
from county.db.schema import alarms, audit_log, entries, terminals
from county.replacement import MAX_RECOVERY_BYTES
from county.store import CountyStore
from protocol.chain import checkpoint_message
from protocol.recovery import parse_header
from terminal import config, state
from terminal.commands.main import main as terminal_main
from terminal.ledger import load_or_create_signing_key
from terminal.link.provision import provision
from terminal.link.transport import ServerRefused
from terminal.service import daemon


def county_cli(capsys: pytest.CaptureFixture[str], county: County, *args: str) -> tuple[int, str]:
    """Run canteen-county with the county's --data (and --database); (status, output)."""
    extra = ["--database", county.database_url] if county.database_url else []
    status = county_main([*args, "--data", str(county.data), *extra])
    out = capsys.readouterr()
    return status, out.out + out.err


def export(capsys: pytest.CaptureFixture[str], state_dir: Path, out: Path, *more: str) -> None:
    status = terminal_main(
        [
            "ledger",
            "export",
            "--format",
            "recovery",
            "-o",
            str(out),
            *more,
            str(state_dir / "ledger.sqlite"),
        ]
    )
    text = capsys.readouterr().out
    assert status == 0, text
    assert f"{out}: " in text


def footprint(store: CountyStore) -> tuple[int, int, int, tuple[Any, ...]]:
    """(entries, alarms, audit rows, terminals' rows): what a refused recovery must not move."""
    with store.db.read() as conn:
        n_entries = conn.execute(select(func.count()).select_from(entries)).scalar_one()
        n_alarms = conn.execute(select(func.count()).select_from(alarms)).scalar_one()
        n_audit = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
        rows = tuple(
            tuple(r) for r in conn.execute(select(terminals).order_by(terminals.c.terminal_id))
        )
    return n_entries, n_alarms, n_audit, rows


def post_as(term: Terminal, county: County, doc: dict[str, Any]) -> requests.Response:
    """POST ``doc`` to /v1/ledger with ``term``'s client certificate, at the county's
    current address (a restarted county listens on another port)."""
    ident = term.identity
    return requests.post(
        county.url + "/v1/ledger",
        json=doc,
        cert=(str(ident.cert_file), str(ident.key_file)),
        verify=str(ident.ca_file),
        timeout=30,
    )


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def one_line_refusal(status: int, text: str) -> None:
    assert status == 2, text
    assert len(text.strip().splitlines()) == 1, text
    assert "refused, nothing taken" in text, text


# --- end to end: a real daemon sells, syncs, sells offline, dies ---------------------------


@pytest.mark.slow
def test_a_dead_terminal_is_retired_replaced_and_its_ledger_recovered_exactly_once(
    tmp_path: Path, county: County, capsys: pytest.CaptureFixture[str]
) -> None:
    old_state = tmp_path / "state"
    old = provision_terminal(county, old_state, "t-daemon", "c-daemon")
    install_lists(old_state)
    reader = ReaderPty()
    settings = write_settings(tmp_path, reader_port=reader.path, camera_source=None, extra=SYNC)
    d = daemon.Daemon(config.load(settings), notifier=daemon.Notifier(""))
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: d.reader is not None and d.reader.health().up, what="reader up")
        wait_for(lambda: d.online is True, what="the first sync")
        # Online: the roster's card (a sale) and two unknown cards (refusals), all uploaded.
        for n, uid in enumerate(
            (CARD_UID, bytes.fromhex("0102030405"), bytes.fromhex("0102030406"))
        ):
            reader.swipe(uid)
            wait_for(lambda n=n: d.worker.decisions == n + 1, what=f"decision {n + 1}")
        wait_for(lambda: d.worker.snapshot.get("unsynced") == 0, what="everything acknowledged")
        # The county becomes unreachable; the terminal goes on selling, then dies.
        county.stop()
        wait_for(lambda: d.online is False, what="the daemon to notice")
        for n, uid in enumerate(("0102030407", "0102030408", "0102030409", "010203040a")):
            reader.swipe(bytes.fromhex(uid))
            wait_for(
                lambda n=n: d.worker.decisions == 4 + n,
                what=f"offline decision {n + 1} (at {d.worker.decisions})",
            )
        assert d.worker.snapshot.get("unsynced", 0) >= 4
    finally:
        d.request_stop()
        thread.join(15)
        reader.close()
    assert not thread.is_alive()

    # The technician pulls the SD card and exports the old state on another machine.
    card = tmp_path / "sd-card"
    shutil.copytree(old_state, card)
    recovery = tmp_path / "t-daemon.recovery.jsonl"
    export(capsys, card, recovery)
    whole = local_chain(card / "ledger.sqlite")
    header = parse_header(lines(recovery)[0])
    assert (header.first_seq, header.last_seq) == (whole[0][0], whole[-1][0])

    county.start()
    store = county.store
    held_before = server_chain(store, "t-daemon")
    # The daemon may have pruned acknowledged entries (retention): the card holds the rest.
    pruned = whole[0][0] - 1
    assert held_before[pruned:] == whole[: len(held_before) - pruned]
    complete = held_before[:pruned] + whole
    assert len(complete) - len(held_before) >= 4  # the offline entries are only on the card

    # Retire: the old certificate is refused over real mTLS, with a line that says why.
    status, text = county_cli(
        capsys, county, "terminal", "retire", "t-daemon", "--reason", "screen dead"
    )
    assert status == 0, text
    assert "retired" in text
    answer = post_as(old, county, {"nonce": "", "entries": [], "checkpoints": []})
    assert answer.status_code == 403, answer.text
    problem = answer.json()["problem"]
    assert "t-daemon was retired (screen dead)" in problem and "revoked" in problem

    # Replace: a new id at the same canteen, provisioned with the printed code, syncs.
    status, text = county_cli(capsys, county, "terminal", "replace", "t-daemon")
    assert status == 0, text
    assert "c-daemon-1 at canteen c-daemon is registered in place of t-daemon" in text
    code = text.strip().splitlines()[-1]
    new_root = tmp_path / "new-state"
    paths = state.prepare(new_root)
    key = load_or_create_signing_key(paths.key)
    identity = provision(paths.root, county.url, code, key.public_key().public_bytes_raw())
    assert identity.terminal_id == "c-daemon-1" and identity.canteen == "c-daemon"
    new = Terminal(paths.root, "c-daemon-1", identity)
    new.append_entries(5)
    sync(new)
    synced = server_chain(store, "c-daemon-1")
    assert len(synced) == 6 and synced == local_chain(new.ledger_path)[:6]  # and a time signal
    # The refusal now names the successor.
    assert (
        "its replacement is c-daemon-1" in post_as(old, county, {"entries": []}).json()["problem"]
    )

    # Tampered files: each refused in one line, and nothing in the county moves.
    before = footprint(store)
    rows = lines(recovery)
    changed = list(rows)
    target = len(rows) - 2  # an offline entry the county does not hold yet
    entry = json.loads(changed[target])
    entry[13] += 1  # amount_fen: one digit of the line
    changed[target] = json.dumps(entry, separators=(",", ":")) + "\n"
    assert sum(a != b for a, b in zip(rows[target], changed[target], strict=True)) == 1
    removed = rows[:3] + rows[4:]  # entry 3 of the chain, in the middle
    for name, text_rows in (("one-byte", changed), ("removed", removed)):
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text("".join(text_rows), encoding="utf-8")
        status, text = county_cli(capsys, county, "terminal", "recover", "t-daemon", str(bad))
        one_line_refusal(status, text)
        assert footprint(store) == before, name
    resigned = tmp_path / "resigned.jsonl"
    resigned.write_text(
        _resigned(rows, Ed25519PrivateKey.generate(), new_key=True), encoding="utf-8"
    )
    status, text = county_cli(capsys, county, "terminal", "recover", "t-daemon", str(resigned))
    one_line_refusal(status, text)
    assert "another key than the ledger key pinned" in text
    forged = tmp_path / "forged-signatures.jsonl"
    forged.write_text(
        _resigned(rows, Ed25519PrivateKey.generate(), new_key=False), encoding="utf-8"
    )
    status, text = county_cli(capsys, county, "terminal", "recover", "t-daemon", str(forged))
    one_line_refusal(status, text)
    assert "not made with t-daemon's pinned key" in text
    assert footprint(store) == before

    # The real file: every entry of the old terminal, exactly once, on a retired id.
    seen_before = _last_seen(store, "t-daemon")
    status, text = county_cli(capsys, county, "terminal", "recover", "t-daemon", str(recovery))
    assert status == 0, text
    new_count = len(complete) - len(held_before)
    assert (
        f"terminal t-daemon: {new_count} new entries taken, {len(held_before) - pruned} already "
        "held; "
        f"head entry {whole[-1][0]} (hash {whole[-1][1][:16]})"
    ) in text
    assert server_chain(store, "t-daemon") == complete
    after = footprint(store)
    assert after[0] == before[0] + new_count and after[1] == before[1]
    assert after[2] == before[2] + 1  # one audit row for the recovery
    # Still retired, still not seen: a recovery is no sign of life.
    with store.db.read() as conn:
        row = conn.execute(
            select(terminals.c.retired_ms, terminals.c.last_seen_ms, terminals.c.replaced_by).where(
                terminals.c.terminal_id == "t-daemon"
            )
        ).one()
        actions = [
            (r.action, r.target) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))
        ]
    assert row[0] is not None and row[2] == "c-daemon-1" and row[1] == seen_before
    assert actions == [
        ("terminal.retire", "t-daemon"),
        ("terminal.replace", "t-daemon"),
        ("terminal.recover", "t-daemon"),
    ]

    # The same file again takes nothing and writes nothing.
    status, text = county_cli(capsys, county, "terminal", "recover", "t-daemon", str(recovery))
    assert status == 0, text
    assert f"0 new entries taken, {len(whole)} already held" in text
    assert footprint(store) == after


def _last_seen(store: CountyStore, terminal_id: str) -> int | None:
    with store.db.read() as conn:
        seen: int | None = conn.execute(
            select(terminals.c.last_seen_ms).where(terminals.c.terminal_id == terminal_id)
        ).scalar_one()
    return seen


def _resigned(rows: list[str], key: Ed25519PrivateKey, *, new_key: bool) -> str:
    """The recovery file with its checkpoints signed by ``key``; with ``new_key`` its header
    names that key, and the genesis entry is rebuilt for it (a whole forged chain)."""
    from protocol.chain import GENESIS_PREV_HASH, canonical_json, entry_hash

    header = json.loads(rows[0])
    public = key.public_key().public_bytes_raw()
    chain = [json.loads(r) for r in rows[1:]]
    if new_key:
        header["public_key"] = public.hex()
        prev = GENESIS_PREV_HASH
        for row in chain:
            if row[0] == 1:
                row[15] = canonical_json(
                    {"terminal_id": header["terminal_id"], "public_key": public.hex()}
                )
            row[16] = prev.hex()
            row[17] = entry_hash(prev, row[:16]).hex()
            prev = bytes.fromhex(row[17])
    by_seq = {row[0]: row for row in chain}
    header["checkpoints"] = [
        [
            seq,
            by_seq[seq][17],
            at,
            key.sign(
                checkpoint_message(header["terminal_id"], seq, bytes.fromhex(by_seq[seq][17]))
            ).hex(),
        ]
        for seq, _h, at, _s in header["checkpoints"]
    ]
    return "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in [header, *chain])


# --- the rules, without a daemon -------------------------------------------------------------


def _clone(term: Terminal, root: Path) -> Terminal:
    """A copy of ``term``'s state (same key, same id): a restored backup or a cloned card."""
    shutil.copytree(term.root, root)
    return Terminal(root, term.terminal_id, term.identity)


@ON_EACH_BACKEND
def test_a_file_that_differs_from_what_the_county_holds_is_a_fork_alarm(
    tmp_path: Path, county: County, capsys: pytest.CaptureFixture[str]
) -> None:
    term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
    clone = _clone(term, tmp_path / "clone")
    term.append_entries(70)
    sync(term)
    clone.append_entries(80, start_ms=T0_MS + 5_000)  # other entries under the same numbers
    file = tmp_path / "clone.jsonl"
    export(capsys, clone.root, file)
    held = server_chain(county.store, "t1")
    before = footprint(county.store)
    status, text = county_cli(capsys, county, "terminal", "recover", "t1", str(file))
    assert status == 2 and "fork" in text and "alarm raised" in text, text
    after = footprint(county.store)
    assert after[0] == before[0] and after[1] == before[1] + 1 and after[2] == before[2]
    assert server_chain(county.store, "t1") == held
    forks = [a for a in county.store.alarms() if a["kind"] == "fork"]
    assert len(forks) == 1 and forks[0]["terminal"] == "t1", forks


def test_recovery_refusals_each_one_line_and_nothing_changes(
    tmp_path: Path, county: County, capsys: pytest.CaptureFixture[str]
) -> None:
    term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
    other = provision_terminal(county, tmp_path / "t2", "t2", "c1")
    term.append_entries(40)
    sync(term)
    term.append_entries(30)
    other.append_entries(3)
    county.code("t9", "c1")  # registered, never provisioned
    whole = tmp_path / "t1.jsonl"
    export(capsys, term.root, whole)
    before = footprint(county.store)

    def refused(file: Path, terminal_id: str = "t1") -> str:
        status, text = county_cli(capsys, county, "terminal", "recover", terminal_id, str(file))
        one_line_refusal(status, text)
        assert footprint(county.store) == before
        return text

    # Another terminal's file.
    theirs = tmp_path / "t2.jsonl"
    export(capsys, other.root, theirs)
    assert "the ledger of terminal t2, not of t1" in refused(theirs)
    # Not a recovery file at all; empty; not UTF-8; a csv export.
    junk = tmp_path / "junk"
    junk.write_bytes(b"\xff\xfe garbage\n")
    assert "not UTF-8" in refused(junk)
    junk.write_text("", encoding="utf-8")
    assert "empty" in refused(junk)
    assert (
        terminal_main(
            ["ledger", "export", "--format", "csv", "-o", str(junk), str(term.ledger_path)]
        )
        == 0
    )
    assert "not a ledger recovery file" in refused(junk)
    # Larger than the county reads: refused before reading (a sparse file, no disk used).
    with open(junk, "wb") as f:
        f.truncate(MAX_RECOVERY_BYTES + 1)
    assert "more than 64 MiB" in refused(junk)
    # Cut short: the last line (and its signed checkpoint's entry) missing.
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines(whole)[:-1]), encoding="utf-8")
    assert "header says" in refused(cut)
    # Entries beyond what the county holds, without those between.
    later = tmp_path / "later.jsonl"
    export(capsys, term.root, later, "--from", "60")
    assert "export it from entry" in refused(later)
    # A line that is not JSON.
    rows = lines(whole)
    bad = [*rows[:5], "{not json\n", *rows[6:]]
    cut.write_text("".join(bad), encoding="utf-8")
    assert "line 6 is not JSON" in refused(cut)
    # The terminal never provisioned: nothing pinned to verify with.
    assert "never provisioned" in refused(whole, "t9")
    # An unknown id.
    status, text = county_cli(capsys, county, "terminal", "recover", "nobody", str(whole))
    assert status == 2 and "no terminal nobody" in text and footprint(county.store) == before
    # A part export from the county's mark on is taken: only what it lacks.
    part = tmp_path / "part.jsonl"
    acked = server_chain(county.store, "t1")[-1][0]
    export(capsys, term.root, part, "--from", str(acked + 1))
    status, text = county_cli(capsys, county, "terminal", "recover", "t1", str(part))
    lacking = len(local_chain(term.ledger_path)) - acked  # 30 sales and a time signal
    assert status == 0 and f"{lacking} new entries taken, 0 already held" in text, text
    assert server_chain(county.store, "t1") == local_chain(term.ledger_path)


def test_the_export_needs_the_terminal_key(
    tmp_path: Path, county: County, capsys: pytest.CaptureFixture[str]
) -> None:
    term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
    term.append_entries(3)
    other_key = tmp_path / "other.pem"
    load_or_create_signing_key(other_key)
    out = tmp_path / "x.jsonl"
    book = str(term.ledger_path)
    for argv, says in (
        (["-o", str(out), "--key", str(tmp_path / "missing.pem"), book], "no terminal key at"),
        (["-o", str(out), "--key", str(other_key), book], "is not the key of this ledger"),
        ([book], "needs --output"),
    ):
        assert terminal_main(["ledger", "export", "--format", "recovery", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_retire_and_replace_refusals(
    tmp_path: Path, county: County, capsys: pytest.CaptureFixture[str]
) -> None:
    term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
    term.append_entries(2)
    sync(term)
    cases = [
        (("terminal", "retire", "t1", "--reason", "   "), "give a reason"),
        (("terminal", "retire", "t1", "--reason", "x" * 501), "longer than 500"),
        (("terminal", "retire", "nobody", "--reason", "x"), "no terminal nobody"),
        (("terminal", "replace", "nobody"), "no terminal nobody"),
        (("terminal", "replace", "t1", "--new", "t1"), "a new terminal id"),
    ]
    before = footprint(county.store)
    for args, says in cases:
        status, text = county_cli(capsys, county, *args)
        assert status == 2 and says in text and len(text.strip().splitlines()) == 1, text
        assert footprint(county.store) == before
    # Still a working terminal until it is retired.
    term.append_entries(1)
    sync(term)
    status, text = county_cli(capsys, county, "terminal", "retire", "t1", "--reason", "stolen")
    assert status == 0, text
    before = footprint(county.store)
    for args, says in (
        (("terminal", "retire", "t1", "--reason", "again"), "already retired: stolen"),
        (("terminal", "add", "--terminal", "t1", "--canteen", "c1"), "never used again"),
        (("terminal", "replace", "t1", "--new", "t2"), None),
        (("terminal", "replace", "t1"), "already replaced by t2"),
    ):
        status, text = county_cli(capsys, county, *args)
        if says is None:
            assert status == 0, text
            before = footprint(county.store)
            continue
        assert status == 2 and says in text, text
        assert footprint(county.store) == before
    # A code handed out before the id was retired no longer provisions it.
    spare = county.code("t3", "c1")
    status, text = county_cli(capsys, county, "terminal", "retire", "t3", "--reason", "lost")
    assert status == 0, text
    paths = state.prepare(tmp_path / "t3")
    key = load_or_create_signing_key(paths.key)
    with pytest.raises(ServerRefused, match="unknown or already used provisioning code"):
        provision(paths.root, county.url, spare, key.public_key().public_bytes_raw())
    # Retired is not silent: the report's list of terminals not heard from leaves it out.
    report = county.store.report(2**62, 0)
    assert [t["terminal"] for t in report["terminals_not_heard_from"]] == ["t2"]
    status, text = county_cli(capsys, county, "terminal", "retired", "--json")
    assert status == 0
    rows = {r["terminal"]: r for r in json.loads(text)}
    assert sorted(rows) == ["t1", "t3"]
    row = rows["t1"]
    assert row["terminal"] == "t1" and row["reason"] == "stolen" and row["replaced_by"] == "t2"
    # Its certificate is refused with 403 and a line, the chain untouched.
    answer = post_as(term, county, {"entries": []})
    assert answer.status_code == 403 and "t1 was retired (stolen)" in answer.json()["problem"]


@ON_EACH_BACKEND
def test_two_recoveries_of_one_file_at_once_take_it_once(
    tmp_path: Path, county: County, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two county IT commands (here two threads, each its own database connection) given
    the same file at the same moment: the terminal's row lock orders them, the second
    finds the first's entries held."""
    from concurrent.futures import ThreadPoolExecutor

    from county import replacement
    from county.storekit import Limits

    term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
    term.append_entries(10)
    sync(term)
    term.append_entries(150)
    file = tmp_path / "t1.jsonl"
    export(capsys, term.root, file)
    held = len(server_chain(county.store, "t1"))

    def run(_: int) -> replacement.Recovery:
        return replacement.recover(
            county.store.db, "t1", file, limits=Limits(), lists=None, user="test", now_ms=T0_MS
        )

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(run, range(2)))
    whole = local_chain(term.ledger_path)
    assert sorted(d.new for d in done) == [0, len(whole) - held]
    assert server_chain(county.store, "t1") == whole
