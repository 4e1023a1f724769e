"""The update tests' own support (tests/updateskit.py): a fresh terminal applies a whole
signed set, one revocation costs one bin and one shard, and status names the set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api._payload import SuccinctRoles  # re-exported by tuf.api.metadata, not to mypy
from updateskit import NOW, Canteen, open_canteen, revoked_cadre

from protocol.layout import BIN_BITS, BIN_PREFIX, SHARD_COUNT, all_shards, shard_of, shard_target
from terminal import trust
from terminal import updates as tu


@pytest.fixture
def canteen(tmp_path: Path) -> Iterator[Canteen]:
    yield from open_canteen(tmp_path)


def test_fresh_terminal_applies_the_whole_set(canteen: Canteen) -> None:
    canteen.settings(900)
    canteen.repo.revoke([{"kind": "cadre", "iss": "cz", "sub": "a1"}], NOW)
    applied = canteen.update()
    assert applied is not None
    assert set(applied.changed) == {"settings", "revocations"}
    draft = applied.ledger_draft()
    assert draft.kind == "config_applied" and draft.detail["set"] == applied.set_version
    assert canteen.in_force() == {
        "set": applied.set_version,
        "pointer": applied.set_version,
        "price": 900,
        "revocations": 1,
    }
    assert revoked_cadre(canteen.store, "cz", "a1")
    # Nothing new: no second entry, and the lists are vouched current by the timestamp.
    assert canteen.update() is None


def test_one_revocation_costs_one_bin_and_one_shard(canteen: Canteen) -> None:
    first = canteen.updater().prepare_in_force(NOW * 1000)
    assert first.shards_looked_up == SHARD_COUNT  # a first load reads every shard's hash
    canteen.update()
    canteen.server.overrides.requests.clear()
    canteen.repo.revoke([{"kind": "cadre", "iss": "cz", "sub": "b2"}], NOW)
    # Only the shards of the bin whose version changed are looked up: that bin's.
    prepared = canteen.updater().prepare_in_force(NOW * 1000)
    bins = SuccinctRoles([], 1, BIN_BITS, BIN_PREFIX)
    shard = shard_of(trust.revocation_key("cadre", "cz", "b2"))
    changed = bins.get_role_for_target(shard_target(shard))
    in_bin = [s for s in all_shards() if bins.get_role_for_target(shard_target(s)) == changed]
    assert prepared.shards_looked_up == len(in_bin) < SHARD_COUNT / 16
    applied = canteen.update()
    assert applied is not None and applied.changed == ("revocations",)
    got = canteen.server.overrides.requests
    shards = [p for p in got if "/targets/revocations/" in p and "shard-" in p]
    bins = [p for p in got if "bins-" in p]
    assert len(shards) == 1 and len(bins) == 1, got
    assert revoked_cadre(canteen.store, "cz", "b2")
    # And a second one in another shard, with the first still in force.
    canteen.repo.revoke([{"kind": "cadre", "iss": "cz", "sub": "b9"}], NOW)
    assert canteen.update() is not None
    assert revoked_cadre(canteen.store, "cz", "b2") and revoked_cadre(canteen.store, "cz", "b9")


def test_status_names_the_set_and_freshness(canteen: Canteen) -> None:
    canteen.update()
    # A later timestamp vouches that the unchanged lists are current (the policy's
    # [lists] limits count from it), without a new set.
    canteen.repo.refresh(NOW + 3600, force=True)
    assert canteen.update() is None
    info = canteen.store.list_info("revocations")
    assert info is not None and info.issued_at == NOW + 3600
    status = tu.status(canteen.state, canteen.store, NOW)
    assert status["state"] == "current" and status["pinned"]
    later = tu.status(canteen.state, canteen.store, NOW + 2 * 86400)
    assert later["state"] == "updates stale" and "timestamp" in later["what_to_do"]
