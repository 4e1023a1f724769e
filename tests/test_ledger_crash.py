"""Crash test: SIGKILL a process appending to the ledger at random moments.

Every entry the writer acknowledged (printed after ``append`` returned) must be
in the ledger exactly once at the same seq, and the chain and SQLite's
integrity check must pass. The loop itself lives in bench/ledger_bench.py so
the benchmark runs the same code at 1,000 kills.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ledger_bench import crash_loop


@pytest.mark.slow
def test_sigkill_loses_and_duplicates_no_acknowledged_entry(tmp_path: Path) -> None:
    result = crash_loop(60, tmp_path)
    assert result["kills"] == 60
    assert result["acknowledged"] > 100, result  # the kills really landed among appends
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["integrity"] == "ok", result
    assert result["verify_ok"], result["verify_problem"]
    assert result["entries_in_ledger"] >= result["acknowledged"]
