"""Applying a set: whole or not at all, through SIGKILL, failed starts and invalid settings."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from updateskit import NOW, Canteen, open_canteen, revoked_cadre

from county import updates as cu
from terminal import trust
from terminal import updates as tu

# Every test here builds and copies a whole update repository (4,096 shards): slow.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
KILLS = 30  # SIGKILLs at random points of one apply


@pytest.fixture
def canteen(tmp_path: Path) -> Iterator[Canteen]:
    yield from open_canteen(tmp_path)


def cadres(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"kind": "cadre", "iss": "cz", "sub": f"{prefix}{i}"} for i in range(n)]


# ---- a terminal that does not start after an update goes back ----------------------


def test_failed_start_goes_back_to_the_last_good_set(canteen: Canteen) -> None:
    c = canteen
    c.settings(800)
    c.repo.revoke(cadres("a", 3), NOW)
    c.update()
    note = tu.begin_start(c.state, c.store)
    assert note.rolled_back_from is None and note.settings_file is not None
    tu.confirm_started(c.state, c.store)
    good = c.in_force()

    c.settings(900)
    c.repo.revoke(cadres("b", 2), NOW)
    bad = c.update()
    assert bad is not None and c.in_force()["price"] == 900
    first = tu.begin_start(c.state, c.store)  # the start with the new set ...
    assert first.rolled_back_from is None
    # ... never reached confirm_started (it crashed): the next start goes back.
    second = tu.begin_start(c.state, c.store)
    assert second.rolled_back_from == bad.set_version
    assert second.message is not None and "taken back" in second.message
    draft = second.ledger_draft()
    assert draft is not None and draft.reason == "rolled_back"
    assert c.in_force() == good
    assert revoked_cadre(c.store, "cz", "a1") and not revoked_cadre(c.store, "cz", "b1")
    settings = tu.effective_settings(None, second)
    assert settings.meals[0].price_own_fen == 800
    # The same settings do not come back at the next sync ...
    with pytest.raises(tu.UpdateRefused, match="stopped this terminal from starting"):
        c.update()
    assert c.in_force() == good
    # ... new ones do.
    c.settings(950)
    assert c.update() is not None and c.in_force()["price"] == 950


def test_begin_start_rewrites_a_pointer_lost_in_a_crash(canteen: Canteen) -> None:
    c = canteen
    c.settings(800)
    applied = c.update()
    assert applied is not None
    (c.state / "updates" / "applied.json").unlink()
    note = tu.begin_start(c.state, c.store)
    assert note.set_version == applied.set_version and note.settings_file is not None
    assert c.in_force()["pointer"] == applied.set_version


# ---- invalid settings never reach a terminal ----------------------------------------


def test_county_refuses_invalid_settings_with_line_and_reason(canteen: Canteen) -> None:
    c = canteen
    before = c.repo.timestamp().signed.version
    bad = c.tmp / "bad.toml"
    bad.write_text('[[meals]]\nname = "lunch"\nstart = "11:30"\nend = 13:30\n')
    with pytest.raises(cu.SettingsRefused, match="line 4"):
        c.repo.publish_settings(bad, None, NOW)
    bad.write_text(
        '[[meals]]\nname = "a"\nstart = "11:00"\nend = "13:00"\nprice_own_fen = 1\n'
        'price_visitor_fen = 1\n[[meals]]\nname = "b"\nstart = "12:00"\nend = "14:00"\n'
        "price_own_fen = 1\nprice_visitor_fen = 1\n"
    )
    with pytest.raises(cu.SettingsRefused, match="overlaps"):
        c.repo.publish_settings(bad, None, NOW)
    bad.write_text("[caps]\nqr_fen_per_day = -5\n")
    with pytest.raises(cu.SettingsRefused, match="qr_fen_per_day"):
        c.repo.publish_settings(bad, None, NOW)
    bad.write_text('[terminal]\nid = "t-1"\n')
    with pytest.raises(cu.SettingsRefused, match="one terminal's own"):
        c.repo.publish_settings(bad, "c1", NOW)
    assert c.repo.timestamp().signed.version == before, "nothing was published"


def test_terminal_refuses_signed_settings_its_loader_rejects(canteen: Canteen) -> None:
    c = canteen
    c.settings(800)
    c.update()
    before = c.in_force()
    # A county that skipped validation (an older tool, a hand-made repository).
    bad = b"[caps]\nqr_meals_per_day = 99\n"
    with c.repo._locked():
        c.repo._publish(NOW, top={tu.settings_target(None): (bad, {"version": 9})})
    with pytest.raises(tu.UpdateRefused, match="qr_meals_per_day"):
        c.update()
    assert c.in_force() == before


def test_canteen_settings_win_over_the_all_canteens_file(canteen: Canteen) -> None:
    c = canteen
    c.settings(800)
    c.settings(850, canteen="c2")
    c.update()
    assert c.in_force()["price"] == 800
    c.settings(870, canteen="c1")
    c.update()
    assert c.in_force()["price"] == 870


# ---- shards: counts that do not add up -----------------------------------------------


def test_a_missing_or_extra_shard_is_refused_whole(tmp_path: Path) -> None:
    store = trust.TrustStore(tmp_path / "trust.sqlite")
    keys = [trust.revocation_key("cadre", "cz", f"s{i}") for i in range(10)]
    by_shard: dict[str, list[bytes]] = {}
    for k in keys:
        by_shard.setdefault(tu.shard_of(k), []).append(k)
    shards = {s: (ks, 1, len(ks), f"h{s}") for s, ks in by_shard.items()}
    header = trust.ListHeader(1, NOW, None)
    with pytest.raises(trust.TrustError, match="missing"):
        store.apply_update_set(
            trust.UpdateSet(
                1,
                {},
                revocations=trust.ShardedRevocations(header, len(shards), 11, shards, whole=True),
            ),
            NOW,
        )
    assert store.revocation_count() == 0 and store.applied_update_set() is None
    store.apply_update_set(
        trust.UpdateSet(
            1, {}, revocations=trust.ShardedRevocations(header, len(shards), 10, shards, True)
        ),
        NOW,
    )
    assert store.revocation_count() == 10
    store.close()


# ---- SIGKILL in the middle of applying ------------------------------------------------

CHILD = """
import sys, time
from terminal import trust, updates as tu
state, medium = sys.argv[1], sys.argv[2]
store = trust.TrustStore(state + "/trust.sqlite")
up = tu.TerminalUpdater(state, "c1", medium=medium)
prepared = up.prepare(store.applied_update_set(), store.revocation_shard_hashes())
print("APPLY", flush=True)
tu.apply(state, store, prepared, int(time.time()))
print("DONE", flush=True)
"""


def _whole(state: Path, sets: dict[int, tuple[int, int]]) -> tuple[int, str]:
    """After a kill: start as the daemon would, then check one whole set is in force."""
    store = trust.TrustStore(state / "trust.sqlite")
    try:
        note = tu.begin_start(state, store)
        applied = store.applied_update_set()
        assert applied is not None
        version = applied["set"]
        price, count = sets[version]
        assert note.set_version == version
        assert store.revocation_count() == count
        info = store.list_info("revocations")
        assert info is not None and info.count == count
        settings = tu.effective_settings(None, note)
        assert settings.meals[0].price_own_fen == price
        pointer = json.loads((state / "updates" / "applied.json").read_text())
        assert pointer["set"] == version
        return version, "new" if price == 900 else "old"
    finally:
        store.close()


@pytest.mark.slow
def test_sigkill_while_applying_leaves_one_whole_set(canteen: Canteen, tmp_path: Path) -> None:
    c = canteen
    c.settings(800)
    c.repo.revoke(cadres("old", 2000), NOW)
    old = c.update()
    assert old is not None
    tu.begin_start(c.state, c.store)
    tu.confirm_started(c.state, c.store)
    c.settings(900)
    # 20,000 new revocations in 256 of the 4,096 shards: a big transaction, few files.
    subs = (f"new{i}" for i in itertools.count())
    in_0 = (s for s in subs if tu.shard_of(trust.revocation_key("cadre", "cz", s))[0] == "0")
    c.repo.revoke(
        [{"kind": "cadre", "iss": "cz", "sub": s} for s in itertools.islice(in_0, 20000)], NOW
    )
    new_set = c.repo.snapshot().signed.version
    sets = {old.set_version: (800, 2000), new_set: (900, 22000)}
    c.store.close()
    medium = c.repo.paths.root / "repository"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}"}

    def run(state: Path, kill_after: float | None) -> float:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(state), str(medium)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "APPLY", line
        started = time.monotonic()
        if kill_after is None:
            child.wait(60)
            assert child.returncode == 0
            return time.monotonic() - started
        # A SIGKILL at a random moment of the apply: the moment is what is tested, and
        # the child says nothing between its first write and its last.
        time.sleep(kill_after)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        return 0.0

    # Once to the end, for how long an apply takes.
    full = tmp_path / "full"
    shutil.copytree(c.state, full)
    apply_s = run(full, None)
    assert _whole(full, sets)[1] == "new"

    rng = random.Random(5)
    seen = {"old": 0, "new": 0}
    for n in range(KILLS):
        state = tmp_path / f"kill-{n}"
        shutil.copytree(c.state, state)
        run(state, rng.uniform(0, apply_s * 1.1))
        seen[_whole(state, sets)[1]] += 1
        shutil.rmtree(state)
    assert sum(seen.values()) == KILLS
    print(f"apply {apply_s:.3f} s; after SIGKILL: {seen}")


def test_a_set_prepared_against_another_set_is_fetched_again(canteen: Canteen) -> None:
    c = canteen
    c.settings(800)
    c.update()
    c.settings(900)
    c.repo.revoke(cadres("r", 2), NOW)
    # Two refreshes prepared against set A (say a sync and a technician's 'update fetch').
    first = c.updater().prepare_in_force()
    second = c.updater().prepare_in_force()
    assert tu.apply(c.state, c.store, first, NOW) is not None
    with pytest.raises(tu.UpdateError, match="fetched again"):
        tu.apply(c.state, c.store, second, NOW)
    assert c.in_force()["price"] == 900 and c.in_force()["revocations"] == 2
    again = c.updater().prepare_in_force()
    assert again.changed == [] and tu.apply(c.state, c.store, again, NOW) is None
