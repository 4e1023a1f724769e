"""The staff panel in English on the 7-inch screen (800x480), in Debian's Chromium.

Measured in the browser: the totals table is no wider than its box and no cell is
cut; English text has ASCII brackets only. The figures come from a real ledger
(tests/displaykit.py), with big amounts in every column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL, shot
from displaykit import LUNCH, Kit, wallet

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect

FULL_WIDTH = re.compile(r"[\u3000-\u303f\uff00-\uffef]")  # CJK punctuation, full-width forms


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path / "state", language="en")
    k.ready(canteen_name="Chengguan Town Canteen")
    yield k
    k.close()


def measure(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => {
  const table = document.getElementById('totals');
  const box = document.getElementById('totals-box');
  const cut = [];
  for (const cell of table.querySelectorAll('th, td')) {
    if (cell.scrollWidth > cell.clientWidth + 1) cut.push(cell.textContent);
  }
  const right = box.getBoundingClientRect().right;
  for (const cell of table.querySelectorAll('th, td')) {
    if (cell.getBoundingClientRect().right > right + 0.5) cut.push(cell.textContent);
  }
  // Rectangles are fractional, clientWidth/scrollWidth whole pixels: compare like with like.
  return {table: table.getBoundingClientRect().width, tableScroll: table.scrollWidth,
          box: box.getBoundingClientRect().width, boxClient: box.clientWidth,
          boxScroll: box.scrollWidth, cut,
          text: document.getElementById('staff').innerText};
}"""
        )
    )


def test_the_english_panel_fits_800x480_with_ascii_brackets(browser: Any, kit: Kit) -> None:
    t = kit.terminal
    for n in range(12):
        t.present(wallet(f"E{n}", f"Cadre {n}", unit="elsewhere" if n % 2 else "own").draw(LUNCH))
    t.present(wallet("E0").draw(LUNCH + 1))  # already served: a refusal
    t.present("CT1:not-a-code")  # a refusal with no meal: its own row
    page = browser.new_page(viewport=SMALL)
    try:
        page.clock.install(time=t.clock_ms / 1000)
        page.goto(kit.url)
        expect(page.locator("#idle-meal")).to_have_text("Lunch")
        page.locator("#staff-button").click()
        for digit in "4821":
            page.locator(f'#pin-pad button[data-key="{digit}"]').click()
        page.locator("#pin-ok").click()
        expect(page.locator("#panel-view")).to_be_visible()
        page.locator("#reverse-button").click()
        page.locator("#reverse-yes").click()
        expect(page.locator("body")).to_have_attribute("data-reversal", "done")
        expect(page.locator("#totals tfoot")).to_contain_text("Total")
        shot(page, "staff-panel-en-800x480")
        m = measure(page)
        assert m["table"] <= m["box"] + 0.5, m
        assert m["tableScroll"] <= m["boxClient"] and m["boxScroll"] <= m["boxClient"], m
        assert not m["cut"], m
        assert "Refused" in m["text"] and "No meal" in m["text"]
        assert not FULL_WIDTH.findall(m["text"]), FULL_WIDTH.findall(m["text"])
        assert "(Reversible within 10 min)" in m["text"]
    finally:
        page.close()
