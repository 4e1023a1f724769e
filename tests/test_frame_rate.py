"""The camera's measured frame rate in `status` and `selftest`: the simulated MJPEG camera
sends 8 frames a second while the settings ask for 25; a real daemon reads it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import run_terminal as cli
from conftest import wait_for
from daemonkit import install_lists, write_settings
from hwsim.camera import CameraSim

from terminal import config
from terminal.service import daemon

ROOT = Path(__file__).parent.parent
SENT_FPS = 8
ASKED_FPS = 25


@pytest.mark.slow
def test_status_and_selftest_give_the_rate_the_camera_delivers(tmp_path: Path) -> None:
    camera = CameraSim(port=0, fps=SENT_FPS, size=(320, 240), lifetime_s=120).start()
    try:
        install_lists(tmp_path / "state")
        settings = write_settings(tmp_path, reader_port=None, camera_source=camera.url)
        text = settings.read_text(encoding="utf-8").replace("fps = 10", f"fps = {ASKED_FPS}")
        settings.write_text(text, encoding="utf-8")

        check = cli("selftest", "--config", str(settings), "--camera-timeout", "5", cwd=tmp_path)
        (line,) = [x for x in check.stdout.splitlines() if x.split()[1:2] == ["camera"]]
        assert "frames/s measured" in line, line
        measured = float(line.split(" frames/s measured")[0].rsplit(" ", 1)[1])
        assert SENT_FPS * 0.6 <= measured <= SENT_FPS * 1.4, line
        assert f"settings ask {ASKED_FPS}" in line

        d = daemon.Daemon(config.load(settings), notifier=daemon.Notifier(""))
        thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
        thread.start()
        try:
            wait_for(lambda: d.camera is not None and d.camera.health().up, what="camera up")
            # Up for a few seconds: the rate is over a window of frames.
            wait_for(
                lambda: (
                    (d.health()["devices"]["camera"].get("fps_measured") or 0) > 0
                    and d.camera.health().counters.get("frames", 0) > 3 * SENT_FPS
                ),
                what="frames",
            )
            answer = cli("status", "--config", str(settings), "--json", cwd=tmp_path)
            text_answer = cli("status", "--config", str(settings), cwd=tmp_path)
        finally:
            d.request_stop()
            thread.join(15)
    finally:
        camera.stop()
    cam = json.loads(answer.stdout)["devices"]["camera"]
    assert SENT_FPS * 0.6 <= cam["fps_measured"] <= SENT_FPS * 1.4, cam
    assert cam["fps_asked"] == ASKED_FPS
    (line,) = [x for x in text_answer.stdout.splitlines() if x.strip().startswith("camera:")]
    assert "frames/s measured (settings ask 25)" in line, line
