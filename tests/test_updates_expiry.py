"""Update expiry is judged on trusted time, not on a wall clock far behind (issue 12, point 6).

A Pi without a real-time clock may boot weeks behind. The county's repository here
was signed and last refreshed a month ago by the county's own clock, so its
timestamp has long expired; by the terminal's clock it would still look fresh (a
freeze attack would serve exactly this). A real county server (mTLS) whose signed
time runs 30 days ahead of this machine's clock stands for the true time; a real
daemon on this machine's clock syncs with it, finds its clock far behind, and
refuses the expired set instead of applying it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from countykit import make_county
from daemonkit import ISSUER, UPDATES_SYNC, install_lists, write_settings

import county.app
from county import updates as cu
from terminal import config, ledger, state, trust
from terminal import updates as tu
from terminal.ledger import load_or_create_signing_key
from terminal.link.provision import provision
from terminal.service import daemon

DAY_MS = 86_400_000
AHEAD_MS = 30 * DAY_MS


def kinds(book: Path) -> list[str]:
    out = book.with_suffix(".jsonl")
    with open(out, "w", encoding="utf-8") as f:
        ledger.export_file(book, "jsonl", f)
    return [json.loads(x)["kind"] for x in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_a_clock_far_behind_does_not_take_expired_updates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time())  # the terminal's clock; the true time is 30 days on
    data = make_county(tmp_path)
    cu.init_repository(data.data, tmp_path / "root-keys", now)
    (tmp_path / "trust.json").write_text(json.dumps([ISSUER.trust_entry()]), encoding="utf-8")
    with cu.CountyRepository(data.data) as repo:
        repo.publish_trust(tmp_path / "trust.json", now)
    # The county's signed time: 30 days ahead of this machine's clock (the true time).
    real_create_app = county.app.create_app

    def create_app(data_dir: Path, store: Any, **kw: Any) -> Any:
        kw["clock"] = lambda: time.time_ns() // 1_000_000 + AHEAD_MS
        return real_create_app(data_dir, store, **kw)

    monkeypatch.setattr(county.app, "create_app", create_app)
    data.start()
    state_dir = tmp_path / "state"
    try:
        # Provisioning codes are dated by the county's clock.
        secret = data.store.add_terminal(
            "t-daemon", "c-daemon", time.time_ns() // 1_000_000 + AHEAD_MS
        )
        paths = state.prepare(state_dir)
        key = load_or_create_signing_key(paths.key)
        code = county.app.new_provisioning_code(data.data, secret)
        provision(paths.root, data.url, code, key.public_key().public_bytes_raw())
        install_lists(state_dir)
        data.pin_root(state_dir)

        # Judged at the county's time, the set is expired; at the system clock it is not.
        updater = tu.updater_for_county(state_dir)
        with pytest.raises(tu.UpdatesStale, match="expired"):
            updater.prepare_in_force(time.time_ns() // 1_000_000 + AHEAD_MS)
        assert updater.prepare_in_force(None).set_version >= 1  # what a freeze relies on

        settings = write_settings(
            tmp_path, reader_port=None, camera_source=None, extra=UPDATES_SYNC
        )
        d = daemon.Daemon(
            config.load(settings), notifier=daemon.Notifier(""), config_path=str(settings)
        )
        thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
        thread.start()
        try:
            wait_for(lambda: d.online is True, what="the first sync")
            wait_for(lambda: d.update_state == "stale", what="the refresh to find it expired")
            wait_for(
                lambda: d.worker.snapshot.get("clock_trusted") is False,
                what="the county's time to reach the clock",
            )
            snapshot = d.worker.snapshot
            assert snapshot["clock_ahead_ms"] < -AHEAD_MS + DAY_MS  # far behind
            wait_for(lambda: "updates stale" in d.sentence, what="the state to say so")
        finally:
            d.request_stop()
            thread.join(15)
        assert not thread.is_alive()
    finally:
        data.stop()
    book = state_dir / "ledger.sqlite"
    assert "config_applied" not in kinds(book)
    store = trust.TrustStore(state_dir / "trust.sqlite")
    try:
        assert store.applied_update_set() is None
    finally:
        store.close()
