"""The whole path with the simulators: hw-sim issuer's lists installed in a real terminal daemon,
a phone shown to the simulated camera and a card swiped on the simulated reader, each ending as
an accepted, committed ledger entry."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from conftest import wait_for
from daemonkit import install_sim_lists, write_settings
from hwsim import population as pop
from hwsim.camera import CameraSim
from hwsim.reader import ReaderSim

from terminal import config, ledger
from terminal.service import daemon


def test_phone_and_card_through_the_simulators_to_the_ledger(tmp_path: Path) -> None:
    now = int(time.time())
    population = pop.make_population(
        now=now - 3600, cadres=4, units=["own"], cards_fraction=0.5, seed="daemon"
    )
    pop.write_population(population, tmp_path / "sim")
    install_sim_lists(tmp_path / "sim", tmp_path / "state", now)
    camera = CameraSim(port=0, fps=10, lifetime_s=120).start()
    reader = ReaderSim("rdm6300", tmp_path / "reader", lifetime_s=120).start()
    settings = write_settings(tmp_path, reader_port=str(reader.link), camera_source=camera.url)
    d = daemon.Daemon(config.load(settings), notifier=daemon.Notifier(""))
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: d.camera is not None and d.camera.health().up, what="camera up")
        wait_for(lambda: d.reader is not None and d.reader.health().up, what="reader up")
        phone = next(c for c in population.cadres if c.card_uid is None)
        card = population.cards()[0]
        camera.show(phone.wallet.draw(int(time.time())))
        wait_for(lambda: d.worker.decisions == 1, what="the phone's decision")
        reader.swipe(card.card_uid or b"")
        wait_for(lambda: d.worker.decisions == 2, what="the card's decision")
    finally:
        d.request_stop()
        thread.join(15)
        camera.stop()
        reader.stop()
    assert not thread.is_alive()
    book = tmp_path / "state" / "ledger.sqlite"
    assert ledger.verify_file(book).ok
    with open(tmp_path / "export.jsonl", "w", encoding="utf-8") as out:
        ledger.export_file(book, "jsonl", out)
    entries = [json.loads(x) for x in (tmp_path / "export.jsonl").read_text().splitlines()]
    sales = [(e["kind"], e["verdict"], e["cadre"]) for e in entries if e["kind"] == "sale"]
    assert sales == [
        ("sale", "accept", f"hn-sim/{phone.sub}"),
        ("sale", "accept", f"hn-sim/{card.sub}"),
    ]
