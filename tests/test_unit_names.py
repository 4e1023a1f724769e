"""Unit names on the screen: a real daemon, a card swiped on its reader, Debian's Chromium.

Neither the cadres' codes nor the card roster carry a unit's name, only its code;
the settings' optional `[canteen] unit_names` give the names staff see.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import SMALL, Browser, wait_for
from daemonkit import CARD_UID, PIN, ReaderPty, install_lists, write_settings

from terminal import config
from terminal.config import ConfigError
from terminal.service import daemon

NAME = "Bureau of Own Affairs"


def staff_open(url: str) -> dict[str, object]:
    request = urllib.request.Request(
        url + "staff/open",
        data=json.dumps({"pin": PIN}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dict(json.loads(answer.read()))


def test_the_screen_and_the_panel_name_the_unit(tmp_path: Path, browser: Browser) -> None:
    from playwright import sync_api

    install_lists(tmp_path / "state")
    reader = ReaderPty()
    settings = write_settings(
        tmp_path,
        reader_port=reader.path,
        camera_source=None,
        extra=f'[canteen.unit_names]\nown = "{NAME}"\n',
    )
    d = daemon.Daemon(config.load(settings), notifier=daemon.Notifier(""))
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: d.state == daemon.READY, what="ready")
        page = browser.new_page(viewport=SMALL)
        page.goto(d.screen.url)
        sync_api.expect(page.locator("body")).to_have_attribute("data-view", "idle")
        reader.swipe(CARD_UID)
        sync_api.expect(page.locator("#verdict-who")).to_have_text(f"Card holder · {NAME}")
        charge = staff_open(d.screen.url)["last_charge"]
        assert isinstance(charge, dict)
        assert (charge["unit"], charge["unit_name"]) == ("own", NAME)
    finally:
        d.request_stop()
        thread.join(15)
        reader.close()


def test_unit_names_are_checked(tmp_path: Path) -> None:
    assert config.load().unit_names == {}
    file = tmp_path / "terminal.toml"
    file.write_text('[canteen]\nunit_names = { own = "" }\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[canteen\] unit_names: own: must be a name"):
        config.load(file)
    file.write_text('[canteen]\nunit_names = ["own"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[canteen\] unit_names: must be a table"):
        config.load(file)
