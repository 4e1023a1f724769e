"""Benchmarks of the offline decision core, each next to a reference measured in the same run.

    .venv/bin/python bench/core.py [--quick] [--kills N] [--json]

Figures and targets (issue 2, on a 2-core machine like CI's):
- token verifications per second, against two raw Ed25519 verifications with
  cryptography (the physical floor of a presentation), timed in alternating rounds:
  at least 60% of the floor;
- the same for SM2 tokens (issue 17: an SM2 issuer and SM2 phones, token.md §7) against
  two raw SM2 verifications by protocol/sm2.py: at least 60%; and protocol/sm2.py's raw
  verify within 2x of OpenSSL's (`openssl speed sm2`, compared in CPU time, and OpenSSL's
  own EVP_DigestVerify in process). Figures in docs/token-format.md;
- durable decisions per second (verify, policy, ledger commit with fsync), against
  a raw sqlite3 insert-and-commit with WAL and synchronous=FULL: at least 50%,
  with decision p99 under 5 ms;
- revocation lookup at 1,000,000 entries: under 50 us, the process under 150 MB;
- `ledger verify` of 100,000 entries: under 3 s;
- the SIGKILL crash loop: 0 lost or duplicated acknowledged entries in 1,000 kills.

Token verification, 2026-12-02 17:04 UTC, load average 1.4-1.8, each run of
bench_tokens(3.0) alternating with the code before the trust store kept revoked issuer
keys in memory (b923e2b^): now 66%, 65%, 62% of the floor (2,373, 2,436, 1,832 per s);
before 60%, 61%, 61%. `--quick --kills 5` at load average 2.8: 65% (1,950 per s against
3,024). The base45 package's decoder is 60-80 us of the 400-550 us a code; without it
the ratio would be about 78% (measured with the decoded bytes looked up instead).

Each line prints PASS or MISS against its target; the exit status is 0 either way
unless --strict is given, because a shared machine can be slow for reasons that
are not the code's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hw-sim"), str(ROOT / "bench")]

import base45  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from figures import RESULTS, report  # noqa: E402
from hwsim.wallet import Issuer, key_from_seed, make_wallet  # noqa: E402

from protocol import sm2  # noqa: E402
from protocol.issue import SM2, sm2_key_from_seed  # noqa: E402
from protocol.tokens import PREFIX, SignatureMemo, verify_presentation  # noqa: E402
from terminal import config, state, trust  # noqa: E402
from terminal.core.checkout import Checkout  # noqa: E402
from terminal.core.events import QrPresented  # noqa: E402
from terminal.service import daemon  # noqa: E402


def lunch_at(settings: config.Settings) -> int:
    return int(dt.datetime(2026, 11, 26, 12, 0, tzinfo=settings.timezone).timestamp())


# ---- 1. token verification against two raw Ed25519 verifications ----


def bench_tokens(seconds: float) -> None:
    settings = config.load()
    now = lunch_at(settings)
    issuer = Issuer("hn-bench", key_from_seed("bench-issuer"))
    # The worker's memo, as in Checkout, and more distinct codes than it holds good
    # signatures (two a code) or holder keys, so every verification here does its curve
    # arithmetic and builds its holder key (the memo only spares a code shown again, or a
    # cadre seen lately).
    memo = SignatureMemo()
    codes = [
        make_wallet(issuer, f"T{i}", "u", "bench", now=now - 86400).draw(now)
        for i in range(max(SignatureMemo.GOOD_MAX // 2, SignatureMemo.HOLDER_KEYS_MAX) + 100)
    ]
    # A private in-memory store: the issuer key and its revocation are answered from
    # memory. The terminal's trust.sqlite adds one statement a code (PRAGMA data_version
    # in issuer_keys: whether another process installed a list), about what the SQLite
    # look-up of the issuer key's revocation cost before it moved into memory.
    store = trust.TrustStore(":memory:")
    store.replace_issuers(
        trust.parse_issuer_keys([issuer.trust_entry()]), trust.ListHeader(1, now, None), now
    )

    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    m1, m2 = os.urandom(300), os.urandom(120)
    s1, s2 = k1.sign(m1), k2.sign(m2)
    p1, p2 = k1.public_key(), k2.public_key()

    def raw() -> None:
        p1.verify(s1, m1)
        p2.verify(s2, m2)

    cycle = itertools.cycle(codes)

    def token() -> None:
        verify_presentation(next(cycle), now, store, memo=memo)

    # The base45 package's decoder (pure Python) is the largest part after the curve.
    text = codes[0][len(PREFIX) :]

    def text_only() -> None:
        base45.b45decode(text)

    # The floor and the tokens are timed in alternating short rounds, and the ratio is the
    # median of the rounds' ratios: other processes on a shared machine then load both
    # sides alike, where two back-to-back runs each caught a different load.
    raw_s, tok_s = paired_rounds(raw, token, 2 * seconds)
    raw_rate, tok_rate = 1 / statistics.median(raw_s), 1 / statistics.median(tok_s)
    ratio = statistics.median(r / t for r, t in zip(raw_s, tok_s, strict=True))
    b45_us = 1e6 / rate(text_only, seconds / 3)
    report(
        "token verifications",
        tok_rate,
        "per s",
        f"2 raw Ed25519 verifications {raw_rate:,.0f} per s; ratio {ratio:.0%} "
        f"(median of {len(raw_s)} alternating rounds); "
        f"base45 decode {b45_us:.0f} us of {1e6 / tok_rate:.0f} us a code",
        ">= 60% of the raw floor",
        ratio >= 0.60,
    )


# ---- 1b. SM2 tokens (token.md §7) against two raw SM2 verifications, and OpenSSL's own ----


def openssl_speed_sm2_verify_us(seconds: int) -> float | None:
    """Microseconds a verify by ``openssl speed -seconds N sm2`` (OpenSSL's own C loop)."""
    try:
        out = subprocess.run(
            ["openssl", "speed", "-seconds", str(seconds), "sm2"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        if "SM2" in line and "bits" in line:
            return 1e6 / float(line.split()[-1])  # the last column is verify/s
    return None


def bench_tokens_sm2(seconds: float) -> None:
    settings = config.load()
    now = lunch_at(settings)
    issuer = Issuer("hn-bench", sm2_key_from_seed("bench-sm2-issuer"))
    ed_issuer = Issuer("hn-bench", key_from_seed("bench-issuer"))
    # As the Ed25519 row: more distinct codes than the memo keeps, so each code does its
    # two SM2 verifications and loads its holder key (OpenSSL import) afresh.
    memo = SignatureMemo()
    n = max(SignatureMemo.GOOD_MAX // 2, SignatureMemo.HOLDER_KEYS_MAX) + 100
    codes = [
        make_wallet(issuer, f"S{i}", "u", "bench", now=now - 86400, alg=SM2).draw(now)
        for i in range(n)
    ]
    mixed = [
        make_wallet(ed_issuer, f"M{i}", "u", "bench", now=now - 86400, alg=SM2).draw(now)
        for i in range(n)
    ]
    store = trust.TrustStore(":memory:")
    store.replace_issuers(
        trust.parse_issuer_keys([issuer.trust_entry(), ed_issuer.trust_entry()]),
        trust.ListHeader(1, now, None),
        now,
    )

    k1, k2 = sm2.Sm2PrivateKey.generate(), sm2.Sm2PrivateKey.generate()
    m1, m2 = os.urandom(300), os.urandom(120)
    s1, s2 = k1.sign(m1), k2.sign(m2)
    p1, p2 = k1.public_key(), k2.public_key()
    der1 = sm2._der_signature(int.from_bytes(s1[:32], "big"), int.from_bytes(s1[32:], "big"))
    der2 = sm2._der_signature(int.from_bytes(s2[:32], "big"), int.from_bytes(s2[32:], "big"))
    lib = sm2._lib

    def raw() -> None:  # the chosen library, as the token path calls it
        assert p1.verify(s1, m1) and p2.verify(s2, m2)

    def openssl_whole() -> None:  # OpenSSL's own EVP_DigestVerify, ID set, through ctypes
        assert lib.verify(p1._pkey, der1, m1, sm2.DEFAULT_ID)
        assert lib.verify(p2._pkey, der2, m2, sm2.DEFAULT_ID)

    cycle = itertools.cycle(codes)
    mixed_cycle = itertools.cycle(mixed)

    def token() -> None:
        verify_presentation(next(cycle), now, store, memo=memo)

    def mixed_token() -> None:
        verify_presentation(next(mixed_cycle), now, store, memo=memo)

    raw_s, tok_s = paired_rounds(raw, token, 2 * seconds)
    raw_rate, tok_rate = 1 / statistics.median(raw_s), 1 / statistics.median(tok_s)
    ratio = statistics.median(r / t for r, t in zip(raw_s, tok_s, strict=True))
    mixed_rate = rate(mixed_token, seconds / 2)
    fresh_key_us = 1e6 / rate(lambda: sm2.Sm2PublicKey.from_point(p1.point), seconds / 3)
    # The same ratio in process CPU time, which waiting for a loaded machine does not
    # inflate (four alternating pairs).
    cpu_pairs = [
        (cpu_seconds_per_call(raw, seconds / 8), cpu_seconds_per_call(token, seconds / 8))
        for _ in range(4)
    ]
    cpu_ratio = statistics.median(r / t for r, t in cpu_pairs)
    report(
        "SM2 token verifications (SM2 issuer, SM2 holder)",
        tok_rate,
        "per s",
        f"2 raw SM2 verifications (protocol/sm2.py) {raw_rate:,.0f} per s; ratio {ratio:.0%} "
        f"(median of {len(raw_s)} alternating rounds; in CPU time {cpu_ratio:.0%}); "
        f"a holder key's import {fresh_key_us:.0f} us of {1e6 / tok_rate:.0f} us a code; "
        f"Ed25519 issuer + SM2 holder {mixed_rate:,.0f} per s",
        ">= 60% of the raw floor",
        ratio >= 0.60,
    )

    # The chosen library's raw verify against OpenSSL's: in-process (EVP_DigestVerify
    # with the ID set, alternating with ours, wall clock), and `openssl speed` (OpenSSL's
    # own C loop; 1 s runs alternating with 1 s of ours, three times). openssl speed
    # divides by the CPU time it used, not the wall clock, so ours is timed in process CPU
    # time there: on a loaded machine the wall clock would count the time spent waiting.
    ours_s, whole_s = paired_rounds(raw, openssl_whole, seconds)
    ours_us = statistics.median(ours_s) / 2 * 1e6
    whole_us = statistics.median(whole_s) / 2 * 1e6
    speed_ratios, speed_figures = [], []
    for _ in range(3):
        mine_cpu_us = cpu_seconds_per_call(raw, 1.0) / 2 * 1e6
        speed_us = openssl_speed_sm2_verify_us(1)
        if speed_us is not None:
            speed_ratios.append(mine_cpu_us / speed_us)
            speed_figures.append(f"{mine_cpu_us:.0f}/{speed_us:.0f}")
    times = statistics.median(speed_ratios) if speed_ratios else ours_us / whole_us
    report(
        "SM2 raw verify, protocol/sm2.py",
        ours_us,
        "us",
        f"OpenSSL EVP_DigestVerify in-process {whole_us:.0f} us ({ours_us / whole_us:.2f}x); "
        + (
            f"against `openssl speed -seconds 1 sm2` in CPU time {times:.2f}x "
            f"(ours/openssl us: {', '.join(speed_figures)})"
            if speed_ratios
            else "no openssl command: the in-process figure is used"
        ),
        "within 2x of OpenSSL",
        times <= 2.0,
    )


def cpu_seconds_per_call(fn: Any, seconds: float) -> float:
    """Process CPU seconds a call of ``fn`` takes (user and system, this process only)."""
    for _ in range(10):
        fn()
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        for _ in range(20):
            fn()
        n += 20
    return (time.process_time() - start) / n


def paired_rounds(
    a: Any, b: Any, seconds: float, batch: int = 20
) -> tuple[list[float], list[float]]:
    """Seconds per call of ``a`` and of ``b``, one figure each per round, in alternating order."""
    for _ in range(batch):
        a()
        b()
    a_s: list[float] = []
    b_s: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(a_s) < 9:
        for fn, out in ((a, a_s), (b, b_s)) if len(a_s) % 2 else ((b, b_s), (a, a_s)):
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            out.append((time.perf_counter() - t0) / batch)
    return a_s, b_s


def rate(fn: Any, seconds: float) -> float:
    for _ in range(50):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / (time.perf_counter() - start)


# ---- 2. durable decisions against a raw insert-and-commit ----


def raw_commit_rate(path: Path, n: int) -> tuple[float, float]:
    """Commits per second and p99 ms of a bare insert-and-commit, WAL and synchronous=FULL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, at INTEGER, kind TEXT, body BLOB, h BLOB)")
    body = os.urandom(400)
    times = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?)", (i, i, "sale", body, os.urandom(32)))
        db.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    db.close()
    times.sort()
    return n / elapsed, times[int(n * 0.99)] * 1000


def _lists(store: trust.TrustStore, issuer: Issuer, now: int) -> None:
    header = trust.ListHeader(1, now, None)
    store.replace_issuers(trust.parse_issuer_keys([issuer.trust_entry()]), header, now)
    store.replace_revocations(
        (
            trust.revocation_key("credential", "hn-bench", i.to_bytes(12, "big"))
            for i in range(100_000)
        ),
        header,
        now,
    )
    store.replace_roster([], header, now)


def bench_decisions(n: int, tmp: Path) -> None:
    base = config.load()
    settings = dataclasses.replace(
        base,
        units=frozenset({"u"}),
        caps=dataclasses.replace(base.caps, unsynced_entries=10**7, unsynced_fen=10**9),
    )
    now = lunch_at(settings)
    issuer = Issuer("hn-bench", key_from_seed("bench-issuer"))

    def codes(prefix: str) -> list[str]:
        return [
            make_wallet(issuer, f"{prefix}{i}", "u", "b", now=now - 86400).draw(now)
            for i in range(n)
        ]

    # (a) One at a time, as at the counter: the latency of one durable decision.
    book, store = state.open_state(tmp / "one-by-one", "bench", now * 1000)
    _lists(store, issuer, now)
    counter = Checkout(settings, book, store)
    latencies = []
    start = time.perf_counter()
    for code in codes("A"):
        t0 = time.perf_counter()
        d = counter.present_qr(code, now * 1000)
        latencies.append(time.perf_counter() - t0)
        assert d.accepted, d.reason
    sequential_rate = n / (time.perf_counter() - start)
    book.close()
    store.close()

    # (b) A backlog through the daemon's decision worker: group commit, one fsync a group.
    root = tmp / "worker"
    book, store = state.open_state(root, "bench", now * 1000)
    _lists(store, issuer, now)
    book.close()
    store.close()
    wsettings = dataclasses.replace(settings, state_dir=root, terminal_id="bench")
    done: list[float] = []
    refused: list[str] = []

    def shown(decision: Any, _counter: Any) -> None:
        done.append(time.perf_counter())
        if not decision.accepted:
            refused.append(str(decision.reason))

    worker = daemon.DecisionWorker(
        wsettings,
        daemon.DaemonSettings(1, n + 10, 60, 180, False, False),
        shown,
        lambda: now * 1000,
    )
    for code in codes("W"):
        worker.put(QrPresented(code, 0.0))
    worker.start()
    while len(done) < n:
        time.sleep(0.01)
    worker.stop()
    assert not refused, refused[:3]
    pipelined_rate = (n - 1) / (done[-1] - done[0])

    raw, raw_p99 = raw_commit_rate(tmp / "raw.sqlite", n)
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    ratio = pipelined_rate / raw
    report(
        "durable decisions (decision worker, backlog)",
        pipelined_rate,
        "per s",
        f"raw WAL+FULL insert-and-commit {raw:,.0f} per s; ratio {ratio:.0%}; "
        f"one at a time {sequential_rate:,.0f} per s ({sequential_rate / raw:.0%})",
        ">= 50% of the raw commit rate",
        ratio >= 0.50,
    )
    report(
        "decision latency p99",
        p99,
        "ms",
        f"p50 {p50:.2f} ms over {n} decisions; raw commit p99 {raw_p99:.2f} ms",
        "< 5 ms",
        p99 < 5,
    )


# ---- 3. revocation lookups at a million entries, in a fresh process ----

MILLION = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path[:0] = [sys.argv[2]]
    from terminal import trust

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    store = trust.TrustStore(sys.argv[1])
    start = time.perf_counter()
    keys = (trust.revocation_key("credential", "hn-cz", i.to_bytes(12, "big"))
            for i in range(1_000_000))
    store.replace_revocations(keys, trust.ListHeader(1, 0, None), 0)
    load_s = time.perf_counter() - start
    store.close()
    store = trust.TrustStore(sys.argv[1])
    import random
    draws = [random.randrange(2_000_000).to_bytes(12, "big") for _ in range(100_000)]
    probes = [trust.revocation_key("credential", "hn-cz", d) for d in draws]
    start = time.perf_counter()
    hits = sum(store._has(k) for k in probes)
    per_us = (time.perf_counter() - start) / len(probes) * 1e6
    with open("/proc/self/status") as f:
        peak = next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))
    print(json.dumps({"load_s": load_s, "lookup_us": per_us, "hits": hits,
                      "rss_mb": rss_mb(), "peak_mb": peak}))
    """
)


def bench_revocations(tmp: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", MILLION, str(tmp / "trust.sqlite"), str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    r = json.loads(out)
    empty = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path[:0]=[sys.argv[1]]; import terminal.trust, protocol.tokens;"
            "print(next(int(l.split()[1])/1024 for l in open('/proc/self/status') "
            "if l.startswith('VmRSS:')))",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report(
        "revocation lookup at 1,000,000",
        r["lookup_us"],
        "us",
        f"list loaded in {r['load_s']:.1f} s; {r['hits']} hits of 100,000 probes",
        "< 50 us",
        r["lookup_us"] < 50,
    )
    report(
        "process memory with 1,000,000 revocations",
        r["peak_mb"],
        "MB peak",
        f"the same imports with no list: {float(empty):.0f} MB; after lookups {r['rss_mb']:.0f} MB",
        "< 150 MB",
        r["peak_mb"] < 150,
    )


# ---- 4 and 5. ledger verify time and the crash loop (bench/ledger_bench.py) ----


def bench_ledger(tmp: Path, entries: int, kills: int) -> None:
    import ledger_bench

    (tmp / "verify").mkdir()
    (tmp / "crash").mkdir()
    v = ledger_bench.verify_timing(entries, tmp / "verify")
    secs = float(v["verify_seconds"])
    report(
        f"ledger verify of {entries:,} entries",
        secs,
        "s",
        f"{v['verified_per_second']:,} entries per s; written at "
        f"{v['durable_appends_per_second']:,} durable appends per s",
        "< 3 s for 100,000",
        secs < 3 * entries / 100_000 and bool(v["verify_ok"]),
    )
    if kills:
        c = ledger_bench.crash_loop(kills, tmp / "crash")
        lost, dup = int(c["lost"]), int(c["duplicated"])
        report(
            f"crash loop, {kills} SIGKILLs",
            lost + dup,
            "lost or duplicated",
            f"{c['acknowledged']} acknowledged entries; chain verified: {c['verify_ok']}; "
            f"integrity_check: {c['integrity']}; {c['seconds']} s",
            "0",
            lost + dup == 0 and bool(c["verify_ok"]) and c["integrity"] == "ok",
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    ap.add_argument("--kills", type=int, default=None, help="crash loop kills (default 1000)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args()
    quick = a.quick
    kills = a.kills if a.kills is not None else (20 if quick else 1000)
    print(
        f"bench/core.py on {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-core-", dir=os.environ.get("BENCH_DIR")) as t:
        tmp = Path(t)
        bench_tokens(0.5 if quick else 3.0)
        bench_tokens_sm2(0.5 if quick else 3.0)
        bench_decisions(300 if quick else 3000, tmp)
        bench_revocations(tmp)
        if (Path(__file__).parent / "ledger_bench.py").exists():
            bench_ledger(tmp, 10_000 if quick else 100_000, kills)
    if a.json:
        Path(a.json).write_text(json.dumps(RESULTS, indent=1), encoding="utf-8")
    missed = [r["name"] for r in RESULTS if not r["pass"]]
    print(
        f"{len(RESULTS) - len(missed)} of {len(RESULTS)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    return 1 if (a.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
