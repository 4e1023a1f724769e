"""Signed updates: what one revocation costs a terminal at 1,000,000 entries, and how fast.

Prints:
- bytes a terminal downloads for one new revocation when the list holds N entries
  (default 1,000,000), against the size of the whole list (every shard), and the ratio;
- time from county IT revoking a cadre to an online terminal refusing that cadre,
  in sync intervals ([sync] interval_s, default 300 s): publication + the wait for
  the next sync (worst case a whole interval) + refresh and apply;
- apply time of that one-shard set, and of the first full load.

The county repository is real (python-tuf Metadata API, 4,096 shards in 64 bins);
the terminal loads the full list once from a repository copy (the USB path, to
keep the run short), then takes the one-revocation update over HTTP from uvicorn
on 127.0.0.1, which stops at the end. Run:

    PYTHONPATH=.:hw-sim .venv/bin/python bench/updates.py [--entries N]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from hwsim.wallet import Issuer, key_from_seed, make_wallet

from county import updates as cu
from terminal import config, state, trust
from terminal import updates as tu
from terminal.core.checkout import Checkout


def serve(data: Path) -> tuple[uvicorn.Server, threading.Thread, int]:
    app = FastAPI()
    cu.mount_repository(app, data)
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    stopper = threading.Timer(600, lambda: setattr(server, "should_exit", True))
    stopper.daemon = True
    stopper.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    args = ap.parse_args()
    sync = config.load().section("sync")
    interval_s, jitter_s = sync.get_int("interval_s"), sync.get_int("jitter_s")
    rng = random.Random(7)
    now = int(time.time())
    with tempfile.TemporaryDirectory(prefix="bench-updates-") as tmp:
        base = Path(tmp)
        data = base / "county"
        t = time.perf_counter()
        cu.init_repository(data, base / "root-keys", now)
        init_s = time.perf_counter() - t
        entries = [
            {"kind": "credential", "iss": "chenzhou", "cti": rng.randbytes(16).hex()}
            for _ in range(args.entries)
        ]
        repo = cu.CountyRepository(data)
        issuer = Issuer("chenzhou", key_from_seed("bench-updates-issuer"))
        trust_file = base / "trust.json"
        trust_file.write_text(json.dumps({"version": 1, "entries": [issuer.trust_entry()]}))
        repo.publish_trust(trust_file, now)
        t = time.perf_counter()
        repo.revoke(entries, now)
        publish_all_s = time.perf_counter() - t
        del entries
        full_bytes = 0
        for shard in tu.all_shards():
            info = repo.target_info(tu.shard_target(shard))
            assert info is not None
            full_bytes += info.length

        state_dir = base / "state"
        now_ms = now * 1000
        tu.pin_root(state_dir, (repo.paths.metadata / "1.root.json").read_bytes())
        store = trust.TrustStore(state_dir / "trust.sqlite")
        usb = tu.TerminalUpdater(state_dir, "c1", medium=repo.paths.root / "repository")
        t = time.perf_counter()
        first = tu.update_once(usb, store, now)
        first_s = time.perf_counter() - t
        assert first is not None and store.revocation_count() == args.entries

        # A real cadre's phone, and the terminal's own decision core.
        wallet = make_wallet(issuer, "cadre-00042", "u1", "张三", now=now)
        book = state.open_ledger(state_dir / "ledger.sqlite", state_dir / "key.pem", "t1", now_ms)
        counter = Checkout(config.load(), book, store)
        before = counter.verify_token(wallet.draw(now), now_ms)
        assert before.accepted, before.reason

        server, thread, port = serve(data)
        try:
            online = tu.TerminalUpdater(state_dir, "c1", base_url=f"http://127.0.0.1:{port}/tuf")
            assert tu.update_once(online, store, now) is None  # in step: nothing to fetch
            t = time.perf_counter()
            repo.revoke([{"kind": "cadre", "iss": "chenzhou", "sub": "cadre-00042"}], now)
            revoke_s = time.perf_counter() - t
            # The next sync of the terminal:
            online = tu.TerminalUpdater(state_dir, "c1", base_url=f"http://127.0.0.1:{port}/tuf")
            t = time.perf_counter()
            applied = tu.update_once(online, store, now)
            after = counter.verify_token(wallet.draw(now + 1), now_ms + 1000)
            refresh_s = time.perf_counter() - t
            assert applied is not None
            assert not after.accepted, "the terminal does not refuse the revoked cadre"
            one_bytes = online.fetcher.bytes_received
        finally:
            book.close()
            server.should_exit = True
            thread.join(10)
        store.close()
        repo.close()

    n = f"{args.entries:,}"
    print(f"repository init (4,096 empty shards, 64 bins): {init_s:.1f} s")
    print(f"county publishes {n} revocations: {publish_all_s:.1f} s")
    print(f"first full load on a terminal (USB copy, verify + apply): {first_s:.1f} s")
    print(
        f"one revocation at {n} entries: {one_bytes:,} bytes downloaded "
        f"(metadata + one bin + one shard) vs the full list {full_bytes:,} bytes: "
        f"ratio 1:{full_bytes / max(one_bytes, 1):,.0f} "
        f"({one_bytes / 1024:.1f} KiB; target < 64 KiB)"
    )
    # A sync starts interval_s less uniform(0, jitter_s) after the previous one: a
    # revocation published just after a sync waits at most interval_s, on average half
    # of the mean gap (interval_s - jitter_s / 2).
    worst = revoke_s + interval_s + refresh_s
    mean = revoke_s + (interval_s - jitter_s / 2) / 2 + refresh_s
    print(
        f"revoke cadre -> terminal refuses ({after.reason}): publish {revoke_s:.2f} s "
        f"+ wait for the next sync (at most {interval_s} s; they start up to {jitter_s} s "
        "early) "
        f"+ refresh/apply {refresh_s:.2f} s: "
        f"worst {worst:.0f} s = {worst / interval_s:.3f} sync intervals, "
        f"mean {mean:.0f} s = {mean / interval_s:.3f}"
    )
    assert applied is not None
    print(f"apply time of the one-shard set: {applied.apply_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
