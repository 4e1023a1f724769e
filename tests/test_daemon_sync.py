"""The daemon with its county: a sale uploads by itself, the server's answer is applied by
the decision worker, and the screen shows online, then the offline banner once the county
server stops (Debian's Chromium through Playwright, screenshots at 800x480)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import SMALL, Browser, shot, wait_for
from countykit import County, provision_terminal
from daemonkit import CARD_UID, SYNC, ReaderPty, install_lists, write_settings

from terminal import config, ledger
from terminal.service import daemon, selftest


# A whole daemon (or a county server and a terminal's sync): 5-9 s, in the second step.
@pytest.mark.slow
def test_sales_upload_by_themselves_and_the_banner_follows_the_county(
    tmp_path: Path, county: County, maybe_browser: Browser | None
) -> None:
    provision_terminal(county, tmp_path / "state", "t-daemon", "c-daemon")
    install_lists(tmp_path / "state")
    reader = ReaderPty()
    settings = write_settings(
        tmp_path,
        reader_port=reader.path,
        camera_source=None,
        extra=SYNC,
    )
    text = settings.read_text(encoding="utf-8").replace(
        "[display]\n", "[display]\noffline_banner_after_s = 2\n"
    )
    settings.write_text(text, encoding="utf-8")
    d = daemon.Daemon(config.load(settings), notifier=daemon.Notifier(""))
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    page = None
    try:
        wait_for(lambda: d.reader is not None and d.reader.health().up, what="reader up")
        wait_for(lambda: d.online is True, what="the first sync")
        reader.swipe(CARD_UID)
        wait_for(lambda: d.worker.decisions == 1, what="the sale")
        # Nudged after the sale: the server acknowledges it and the worker marks it.
        wait_for(lambda: d.worker.snapshot.get("unsynced") == 0, what="everything acknowledged")
        held = list(county.store.iter_entries("t-daemon"))
        assert [e["seq"] for e in held] == list(range(1, len(held) + 1))
        assert any(e.get("kind") == "sale" for e in held)
        health = daemon.ask_status(tmp_path / "state")
        assert health["online"] is True and health["sync"]["complete"] is True
        (county_line,) = selftest.run_checks(config.load(settings), parts=("county",))
        assert county_line.result == selftest.OK and "mTLS" in county_line.detail

        if maybe_browser is not None:
            from playwright import sync_api

            page = maybe_browser.new_page(viewport=SMALL)
            page.goto(d.screen.url)
            sync_api.expect(page.locator("#st-online")).to_contain_text("Online")
            sync_api.expect(page.locator("#banner-offline")).to_be_hidden()

        county.stop()
        wait_for(lambda: d.online is False, what="the daemon to notice", timeout_s=30)
        (county_line,) = selftest.run_checks(
            config.load(settings), parts=("county",), camera_timeout_s=2
        )
        assert county_line.result == selftest.FAIL and "check the network" in county_line.detail
        if page is not None:
            sync_api.expect(page.locator("#banner-offline")).to_be_visible(timeout=15000)
            shot(page, "offline-banner-800x480", "daemon")
        # Offline, the terminal still sells: the next swipe is decided and kept.
        reader.swipe(bytes.fromhex("0102030405"))
        wait_for(lambda: d.worker.decisions == 2, what="an offline decision")
        assert d.worker.snapshot.get("unsynced", 0) >= 1
    finally:
        d.request_stop()
        thread.join(15)
        reader.close()
    assert not thread.is_alive()
    report = ledger.verify_file(tmp_path / "state" / "ledger.sqlite")
    assert report.ok, report.problem
