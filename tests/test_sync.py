"""Terminal sync against the real county server on 127.0.0.1 over mTLS: provisioning and
certificate pinning, forks, gaps and tampered batches, the total deadline, the schedule
(backoff, nudge, wall-clock steps) and the [sync] settings."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import faultproxy
import pytest
import requests
from conftest import wait_for
from countykit import (
    FAST,
    ON_EACH_BACKEND,
    PATIENT,
    T0_MS,
    County,
    local_chain,
    make_county,
    provision_terminal,
    server_chain,
    signed_rows,
)

from county import ca
from terminal import config
from terminal.core.clock import TrustedClock
from terminal.ledger import TIME_SIGNAL
from terminal.link.provision import load_identity, provision
from terminal.link.transport import NotProvisioned, ServerCertificateRefused, ServerRefused
from terminal.sync import SyncClient, SyncResult, SyncSchedule, apply_result

if TYPE_CHECKING:
    from cryptography import x509

ROOT = Path(__file__).resolve().parent.parent


def sync_all(client: SyncClient, path: Path, term_open) -> SyncResult:  # type: ignore[no-untyped-def]
    result = client.sync_once(time.monotonic() + 10)
    book = term_open()
    try:
        apply_result(book, TrustedClock(book.last_time_ms(), 0, 0), result, T0_MS)
    finally:
        book.close()
    return result


# --- provisioning and certificates ------------------------------------------------------


def test_provision_pins_ca_cert_and_time_key(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    identity = load_identity(term.root)
    assert identity.terminal_id == "t1" and identity.canteen == "c1"
    assert identity.ca_fingerprint == ca.ca_fingerprint(ca.load_ca_cert(ca.CAPaths(county.data)))
    assert (term.root / "sync-key.pem").stat().st_mode & 0o077 == 0
    assert (
        identity.time_key
        == ca.load_time_key(ca.CAPaths(county.data)).public_key().public_bytes_raw()
    )


def test_provisioning_code_is_one_time(county: County, tmp_path: Path) -> None:
    code = county.code("t1", "c1")
    key = bytes(range(32))
    provision(tmp_path / "a", county.url, code, key)
    with pytest.raises(ServerRefused, match="unknown or already used"):
        provision(tmp_path / "b", county.url, code, key)
    assert not (tmp_path / "b" / "county.json").exists()


def test_code_for_another_county_is_refused_before_anything_is_sent(
    county: County, tmp_path: Path
) -> None:
    other = make_county(tmp_path / "other")
    secret_and_their_ca = other.code("t1", "c1")
    with pytest.raises(ServerCertificateRefused, match="does not match the provisioning code"):
        provision(tmp_path / "t", county.url, secret_and_their_ca, bytes(32))
    assert not (tmp_path / "t" / "county.json").exists()


def test_wrong_server_certificate_is_refused(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    impostor = make_county(tmp_path / "impostor").start()  # a server with another CA
    try:
        client = SyncClient(term.ledger_path, term.identity, FAST, server=impostor.url)
        result = client.sync_once(time.monotonic() + 5)
        assert result.error_kind == "tls"
        assert "does not chain to the pinned county CA" in (result.error or "")
        assert impostor.store.counter("batches_ok") == 0
    finally:
        impostor.stop()


def test_server_certificate_for_another_name_is_refused(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    assert county.server is not None
    # The certificate names 127.0.0.1 and localhost; 127.0.0.2 reaches the same socket? No:
    # the server listens on 127.0.0.1 only, so ask for it under a name it does not carry.
    client = SyncClient(
        term.ledger_path, term.identity, FAST, server=f"https://127.0.0.1:{county.server.port}"
    )
    assert client.sync_once(time.monotonic() + 5).error is None
    with pytest.raises(ServerCertificateRefused):
        assert client.link.server_check is not None
        client.link.server_check.verify(
            county.data.joinpath("server.pem").read_bytes() and _der(county.data / "server.pem"),
            "county.example",
        )


def _der(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


def test_wrong_client_certificate_is_refused(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    other = make_county(tmp_path / "other")
    # A terminal of another county: its certificate does not chain to this county's CA,
    # so the TLS handshake itself fails. With TLS 1.3 the server's refusal can reach the
    # client as an alert (SSLError) or as a reset connection, depending on timing; both
    # are requests' ConnectionError, and the server is up (the next request is answered).
    stranger = provision_terminal(other.start(), tmp_path / "s", "t1", "c1")
    other.stop()
    body = {"nonce": "00", "entries": [], "checkpoints": []}
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(
            county.url + "/v1/ledger",
            json=body,
            verify=str(term.identity.ca_file),
            cert=(str(stranger.identity.cert_file), str(stranger.identity.key_file)),
            timeout=5,
        )
    # No certificate at all: the TLS layer lets it in (provisioning needs that), the API does not.
    r = requests.post(
        county.url + "/v1/ledger", json=body, verify=str(term.identity.ca_file), timeout=5
    )
    assert r.status_code == 401
    # A certificate from this county's CA that no terminal was provisioned with.
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import CertificateSigningRequestBuilder, Name

    key = ec.generate_private_key(ec.SECP256R1())
    csr = CertificateSigningRequestBuilder().subject_name(Name([])).sign(key, hashes.SHA256())
    cert = ca.issue_terminal_cert(
        ca.CAPaths(county.data), csr.public_bytes(serialization.Encoding.PEM), "t1"
    )
    (tmp_path / "rogue.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "rogue-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    r = requests.post(
        county.url + "/v1/ledger",
        json=body,
        verify=str(term.identity.ca_file),
        cert=(str(tmp_path / "rogue.pem"), str(tmp_path / "rogue-key.pem")),
        timeout=5,
    )
    assert r.status_code == 401
    assert "not (or no longer) a provisioned terminal" in r.json()["problem"]


def test_not_provisioned_state_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NotProvisioned, match="canteen-terminal provision"):
        load_identity(tmp_path)


# --- intake: forks, gaps, tampering -------------------------------------------------------


@ON_EACH_BACKEND
def test_sync_uploads_marks_and_records_county_time(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(700)
    client = SyncClient(term.ledger_path, term.identity, PATIENT)
    result = sync_all(client, term.ledger_path, term.open_ledger)
    assert result.complete and result.batches == 4 and result.error is None
    book = term.open_ledger()
    try:
        last = book.entry(book.last_seq())
        assert last is not None and last.kind == TIME_SIGNAL  # the first county time: recorded
        assert book.unsynced()[0] == 1  # only that new entry
        assert last.at_ms >= result.server_ms  # type: ignore[operator]
    finally:
        book.close()
    # Again: the time signal goes up, the offset has not moved, so nothing new is recorded.
    result = sync_all(client, term.ledger_path, term.open_ledger)
    assert result.complete and result.sent == 1
    book = term.open_ledger()
    try:
        assert book.unsynced()[0] == 0
    finally:
        book.close()
    assert server_chain(county.store, "t1") == local_chain(term.ledger_path)


@ON_EACH_BACKEND
def test_forked_ledger_raises_an_alarm_and_is_not_acknowledged(
    county: County, tmp_path: Path
) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(50)
    # A restored backup / cloned terminal: the same ledger up to here, then other entries.
    clone_root = tmp_path / "clone"
    shutil.copytree(term.root, clone_root)
    shared = len(local_chain(term.ledger_path))
    term.append_entries(30)
    client = SyncClient(term.ledger_path, term.identity, PATIENT)
    assert sync_all(client, term.ledger_path, term.open_ledger).complete

    clone_identity = load_identity(clone_root)
    from countykit import Terminal

    clone = Terminal(clone_root, "t1", clone_identity)
    clone.append_entries(10, cadre="someone-else")
    result = sync_all(
        SyncClient(clone.ledger_path, clone_identity, PATIENT), clone.ledger_path, clone.open_ledger
    )
    assert result.error_kind == "refused" and result.alarm == "fork"
    # (The test's QR sales carry no real signed code: each is also a bad_evidence alarm.)
    alarms = [a for a in county.store.alarms() if a["kind"] != "bad_evidence"]
    assert [a["kind"] for a in alarms] == ["fork"]
    assert alarms[0]["seq"] == shared + 1
    report = county.store.report(int(time.time() * 1000), 3_600_000)
    assert report["alarms_by_kind"]["fork"] == 1
    # The server kept the first chain untouched (all but the time signal recorded last).
    assert server_chain(county.store, "t1") == local_chain(term.ledger_path)[:-1]


def _post(term, county: County, doc: dict) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(
        county.url + "/v1/ledger",
        json=doc,
        verify=str(term.identity.ca_file),
        cert=(str(term.identity.cert_file), str(term.identity.key_file)),
        timeout=10,
    )


@ON_EACH_BACKEND
def test_gap_is_held_and_the_terminal_told_where_to_resume(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(200)
    rows, cps = signed_rows(term, 1, 40)
    assert (
        _post(term, county, {"nonce": "01", "entries": rows, "checkpoints": cps}).json()[
            "acked_seq"
        ]
        == 40
    )
    rows, cps = signed_rows(term, 61, 120)
    answer = _post(term, county, {"nonce": "02", "entries": rows, "checkpoints": cps}).json()
    assert answer["status"] == "gap" and answer["resume_from"] == 41 and answer["acked_seq"] == 40
    # The missing piece arrives: the held batch is applied too.
    rows, cps = signed_rows(term, 41, 60)
    answer = _post(term, county, {"nonce": "03", "entries": rows, "checkpoints": cps}).json()
    assert answer["status"] == "ok" and answer["acked_seq"] == 120
    # And the client resumes from the server's mark, not from its own.
    client = SyncClient(term.ledger_path, term.identity, PATIENT)
    assert sync_all(client, term.ledger_path, term.open_ledger).complete
    assert server_chain(county.store, "t1") == local_chain(term.ledger_path)[:-1]


@ON_EACH_BACKEND
def test_client_resumes_after_a_gap_answer(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(300)
    client = SyncClient(term.ledger_path, term.identity, PATIENT)
    client._resume_hint = 150  # as if an earlier answer had said so (a restored server)
    result = sync_all(client, term.ledger_path, term.open_ledger)
    assert result.gaps == 1 and result.complete
    assert server_chain(county.store, "t1") == local_chain(term.ledger_path)[: result.acked_seq]


def _rechain(rows: list) -> list:  # type: ignore[type-arg]
    from protocol.chain import entry_hash

    prev = bytes(32)
    for row in rows:
        row[16] = prev.hex()
        prev = entry_hash(prev, row[:16])
        row[17] = prev.hex()
    return rows


@ON_EACH_BACKEND
@pytest.mark.parametrize("tamper", ["field", "link", "checkpoint", "genesis"])
def test_tampered_batches_are_refused_with_an_alarm(
    county: County, tmp_path: Path, tamper: str
) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(100)
    rows, cps = signed_rows(term, 1, 100)
    if tamper == "field":
        rows[10][13] = 1  # amount_fen
    elif tamper == "link":
        rows[20][16] = "00" * 32
    elif tamper == "checkpoint":
        cps[0][3] = "00" * 64
    else:
        # A genesis for another key, re-hashed and re-chained so that only the key is wrong.
        rows[0][15] = json.dumps(
            {"public_key": "00" * 32, "terminal_id": "t1"}, separators=(",", ":")
        )
        rows, cps = _rechain(rows[:10]), []
    r = _post(term, county, {"nonce": "01", "entries": rows, "checkpoints": cps})
    assert r.status_code == 409
    answer = r.json()
    assert answer["acked_seq"] == 0 and answer["status"] == "refused"
    assert (
        answer["alarm"]
        == {
            "field": "altered",
            "link": "altered",
            "checkpoint": "bad_checkpoint",
            "genesis": "bad_genesis",
        }[tamper]
    )
    assert county.store.terminal("t1").acked_seq == 0  # type: ignore[union-attr]


def test_malformed_batches_are_400(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    for doc in (
        {"entries": "x"},
        {"nonce": "zz"},
        {"entries": [[1, 2]]},
        {"entries": [[True] * 18]},
    ):
        assert _post(term, county, doc).status_code == 400


# --- the total deadline ------------------------------------------------------------------


@pytest.mark.parametrize("kind", [faultproxy.TRICKLE, faultproxy.STALL])
def test_a_slow_link_cannot_hold_a_sync_past_its_deadline(
    county: County, tmp_path: Path, kind: str
) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(300)
    assert county.server is not None
    fault = faultproxy.Fault(kind, bytes_per_s=1.0, stall_s=30.0)
    with faultproxy.FaultProxy(("127.0.0.1", county.server.port), lambda _n: fault) as proxy:
        # Per-read timeouts far longer than the deadline: only the deadline can end it.
        settings = dataclasses.replace(
            FAST, deadline_s=1.5, read_timeout_s=20, connect_timeout_s=20
        )
        client = SyncClient(term.ledger_path, term.identity, settings, server=proxy.url)
        started = time.monotonic()
        result = client.sync_once(started + settings.deadline_s)
        took = time.monotonic() - started
    assert result.error_kind == "deadline", result.error
    assert took < settings.deadline_s + 0.5
    assert proxy.triggered[kind] >= 1


# --- the schedule ------------------------------------------------------------------------


def test_after_a_success_the_next_sync_is_never_later_than_the_interval() -> None:
    """Syncs start up to jitter_s early, never late: a revocation published just after
    one sync reaches an online terminal within one interval."""
    import random

    settings = config.SyncSettings(interval_s=300, jitter_s=30)
    schedule = SyncSchedule(None, settings, lambda _r: None, rng=random.Random(7))  # type: ignore[arg-type]
    delays = [schedule.trigger.delay() for _ in range(2000)]
    assert all(270 <= d <= 300 for d in delays)
    assert max(delays) - min(delays) > 25  # spread over the jitter, so terminals do not align
    schedule.stats.failures = 3  # after failures: full-jitter backoff, not the interval
    assert all(0 <= schedule.trigger.delay() <= settings.backoff_base_s * 4 for _ in range(200))


def test_backoff_after_failures_then_nudges_when_online(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    assert county.server is not None
    down = threading.Event()
    down.set()
    fault_for = lambda _n: faultproxy.Fault(faultproxy.REFUSE if down.is_set() else faultproxy.PASS)  # noqa: E731
    with faultproxy.FaultProxy(("127.0.0.1", county.server.port), fault_for) as proxy:
        settings = dataclasses.replace(FAST, interval_s=30, backoff_base_s=0.2, backoff_cap_s=0.4)
        client = SyncClient(term.ledger_path, term.identity, settings, server=proxy.url)
        results: list[SyncResult] = []
        schedule = SyncSchedule(client, settings, results.append)
        schedule.start(first_delay_s=0)
        try:
            started = time.monotonic()
            failed = lambda: [r for r in results if r.error_kind == "network"]  # noqa: E731
            wait_for(lambda: len(failed()) >= 5, what="five refused syncs")
            # Backoff in [0, 0.4] s: several retries, but no busy loop (a refused connection
            # fails at once, so five in a row without a backoff take a few milliseconds).
            took = time.monotonic() - started
            assert took > 0.1 and len(failed()) <= 5 + 20 * took, (took, len(failed()))
            assert not schedule.nudge()  # offline: a nudge does not hammer the server
            down.clear()
            wait_for(lambda: results[-1].error is None, 3, "a sync once the county is back")
            assert schedule.online
            n = len(results)
            t_nudge = time.monotonic()
            assert schedule.nudge()
            wait_for(lambda: len(results) > n, 3, "the nudged sync", every_s=0.005)
            # Interval is 30 s; the nudge brought a sync within a fraction of a second.
            assert time.monotonic() - t_nudge < 1.0
        finally:
            schedule.stop()
        assert proxy.triggered[faultproxy.REFUSE] >= 3


FAKETIME = (
    Path(__file__).resolve().parent.parent
    / ".venv/lib/python3.11/site-packages/libfaketime/vendor/libfaketime/src/libfaketime.so.1"
)


@pytest.mark.skipif(
    not FAKETIME.exists(),
    reason="libfaketime (pip install libfaketime) is needed to step the wall clock",
)
@pytest.mark.slow
@pytest.mark.parametrize("step", ["-365d", "+3650d"])
def test_wall_clock_steps_do_not_stop_the_schedule(
    county: County, tmp_path: Path, step: str
) -> None:
    """The scheduled sync runs in a child process whose wall clock libfaketime steps."""
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(20)
    settings_file = tmp_path / "terminal.toml"
    settings_file.write_text("[sync]\ninterval_s = 1\njitter_s = 0\ndeadline_s = 5\n")
    clock_file = tmp_path / "faketime"
    clock_file.write_text("+0\n")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}",
        LD_PRELOAD=str(FAKETIME),
        FAKETIME_TIMESTAMP_FILE=str(clock_file),
        # Re-read the clock file at most once a second. With FAKETIME_NO_CACHE, libfaketime
        # reads the file on every clock call from every thread without a lock, and a read
        # that races another sometimes gives the unfaked time (a scheduled run fires at
        # once or parks for ten years) or kills the child ("failed to parse").
        FAKETIME_CACHE_DURATION="1",
        DONT_FAKE_MONOTONIC="1",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "terminal.commands.sync",
            "sync",
            "--state",
            str(term.root),
            "--config",
            str(settings_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[dict] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 3 or proc.poll() is not None, 15, "three syncs")
        assert len(lines) >= 3, proc.stderr.read() if proc.poll() is not None else lines  # type: ignore[union-attr]
        # Replaced whole, so that libfaketime never reads a half-written file.
        (tmp_path / "faketime.new").write_text(f"{step}\n")
        os.replace(tmp_path / "faketime.new", clock_file)
        stepped_at = time.monotonic()

        def stepped(ln: dict) -> bool:  # the sync saw the stepped clock (county - local)
            return ln["offset_ms"] is not None and abs(ln["offset_ms"]) > 86_400_000

        # Four syncs after the step (interval 1 s): the first one's delay and three gaps.
        wait_for(
            lambda: sum(map(stepped, lines)) >= 4 or proc.poll() is not None,
            20,
            "four syncs after the wall clock stepped",
        )
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise
        reader.join(5)
    after = [ln for ln in lines if stepped(ln)]
    assert after, "no sync after the wall clock stepped"

    # Each line says when its sync ended ("monotonic", the sync's own clock reading, not the
    # moment the line was printed) and how long the sync took ("ms"); the schedule waits the
    # interval (1 s, no jitter) from one sync's end to the next one's start. Measuring that idle
    # time, not end to end, keeps a slow exchange on a loaded machine out of the figures. A
    # stopped schedule would idle for a year (the step back) and a busy loop would not idle at all
    # (catching up the step forward): the bounds are far from both and loose enough for a loaded
    # machine's late wake-ups.
    def started(ln: dict) -> float:
        return float(ln["monotonic"]) - ln["ms"] / 1000

    # libfaketime takes up to a second to see the new file.
    assert started(after[0]) - stepped_at < 4.0
    idle = [started(b) - a["monotonic"] for a, b in itertools.pairwise(after)]
    assert idle and all(0.5 < s < 3.0 for s in idle), json.dumps([idle, after])
    assert all(ln["errors"] == [] for ln in after), after


# --- settings ------------------------------------------------------------------------------


def test_sync_settings_defaults_and_strictness(tmp_path: Path) -> None:
    s = config.sync_settings(config.load())
    assert s.interval_s == 300 and s.batch_entries == 500 and s.server == ""
    f = tmp_path / "t.toml"
    f.write_text('[sync]\ninterval_s = 60\nserver = "https://county.example:8443"\n')
    s = config.sync_settings(config.load(f))
    assert s.interval_s == 60 and s.server == "https://county.example:8443"
    f.write_text("[sync]\nintervall_s = 60\n")
    with pytest.raises(config.ConfigError, match=r"\[sync\] intervall_s: unknown option"):
        config.sync_settings(config.load(f))
    f.write_text("[sync]\nbatch_entries = 5000\n")
    with pytest.raises(config.ConfigError, match="batch_entries"):
        config.sync_settings(config.load(f))
    f.write_text('[sync]\nserver = "http://plain"\n')
    with pytest.raises(config.ConfigError, match="https"):
        config.sync_settings(config.load(f))
    f.write_text("[sync]\ninterval_s = 60\njitter_s = 31\n")
    with pytest.raises(config.ConfigError, match="jitter_s: must be at most half"):
        config.sync_settings(config.load(f))
    # The core's loader still takes a file with a [sync] section.
    f.write_text("[sync]\ninterval_s = 60\n")
    assert config.load(f).terminal_id


# --- the server certificate's dates --------------------------------------------------------


def _cert_chain(not_before: str, not_after: str) -> tuple[x509.Certificate, bytes]:
    """A CA and a server certificate for 127.0.0.1 valid between two ISO dates (UTC)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    start = dt.datetime.fromisoformat(not_before).replace(tzinfo=dt.UTC)
    end = dt.datetime.fromisoformat(not_after).replace(tzinfo=dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test county CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "county")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca, leaf.public_bytes(serialization.Encoding.DER)


def _ms(iso: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_server_certificate_dates_are_judged_at_the_wall_clock_or_the_county_time() -> None:
    """Expired or not yet valid at both the wall clock and the county time: refused. Valid
    at the county time a terminal holds (its wall clock stepped): accepted."""
    from terminal.link.transport import ServerCheck

    ca, expired = _cert_chain("2020-01-01", "2020-12-31")
    with pytest.raises(ServerCertificateRefused, match="does not chain"):
        ServerCheck(ca, lambda: None).verify(expired, "127.0.0.1")
    with pytest.raises(ServerCertificateRefused):
        ServerCheck(ca, lambda: _ms("2021-06-01")).verify(expired, "127.0.0.1")
    # A terminal whose wall clock ran years ahead still reaches its county.
    ServerCheck(ca, lambda: _ms("2020-06-01")).verify(expired, "127.0.0.1")

    ca, future = _cert_chain("2090-01-01", "2091-01-01")
    with pytest.raises(ServerCertificateRefused):
        ServerCheck(ca, lambda: None).verify(future, "127.0.0.1")
    ServerCheck(ca, lambda: _ms("2090-06-01")).verify(future, "127.0.0.1")

    other_ca, _ = _cert_chain("2020-01-01", "2099-01-01")
    _, current = _cert_chain("2020-01-01", "2099-01-01")
    with pytest.raises(ServerCertificateRefused):
        ServerCheck(other_ca, lambda: None).verify(current, "127.0.0.1")
    with pytest.raises(ServerCertificateRefused):
        ServerCheck(ca, lambda: None).verify(None, "127.0.0.1")
