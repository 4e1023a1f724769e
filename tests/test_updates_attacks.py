"""TUF's attack cases against a real HTTP server on 127.0.0.1: each leaves the old set whole.

Mirrors python-tuf's conformance cases (rollback of each role, freeze, mix and
match, wrong hash or length, endless data, slow retrieval, root threshold,
duplicated keys, skipped root versions) with the terminal's own updater and a
county repository; the server answers one path with what an attacker would
serve. Where an attack needs a signature, it uses the online key of that role
(the case where the county server itself is compromised): TUF must still refuse.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signature, SSlibKey
from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization.json import JSONSerializer
from updateskit import Canteen, endless, fixed, open_canteen, trickle

from county import updates as cu
from terminal import updates as tu


def signed_by(c: Canteen, md: Metadata[Any], role: str) -> bytes:
    md.signatures.clear()
    for signer in cu._load_signers(c.repo.paths.keys / role).values():
        md.sign(signer, append=True)
    return md.to_bytes(JSONSerializer(compact=True))


def refused(c: Canteen, before: dict[str, Any], kind: type[tu.UpdateError], *words: str) -> str:
    with pytest.raises(kind) as info:
        c.update()
    reason = str(info.value)
    for word in words:
        assert word.lower() in reason.lower(), reason
    assert c.in_force() == before, "the old set must stay whole"
    last = json.loads((c.state / "updates" / "last-refresh.json").read_text())
    assert last["ok"] is False and last["reason"] == reason
    return reason


@pytest.fixture
def canteen(tmp_path: Path) -> Iterator[Canteen]:
    yield from open_canteen(tmp_path)


@pytest.fixture
def two_sets(canteen: Canteen) -> Canteen:
    """Set A applied; the repository has since published set B (not yet fetched)."""
    canteen.settings(800)
    canteen.update()
    canteen.old_ts = canteen.meta("timestamp.json").read_bytes()  # type: ignore[attr-defined]
    canteen.settings(900)
    canteen.repo.revoke([{"kind": "cadre", "iss": "cz", "sub": "x9"}], canteen.now)
    return canteen


def test_rollback_of_timestamp(two_sets: Canteen) -> None:
    c = two_sets
    c.update()
    before = c.in_force()
    assert before["price"] == 900
    c.server.overrides.answers["/tuf/metadata/timestamp.json"] = fixed(c.old_ts)  # type: ignore[attr-defined]
    refused(c, before, tu.UpdateRefused, "version")


def test_rollback_of_snapshot(two_sets: Canteen) -> None:
    c = two_sets
    c.update()
    before = c.in_force()
    ts = Metadata.from_bytes(c.meta("timestamp.json").read_bytes())
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile(ts.signed.snapshot_meta.version - 2)
    c.server.overrides.answers["/tuf/metadata/timestamp.json"] = fixed(
        signed_by(c, ts, "timestamp")
    )
    refused(c, before, tu.UpdateRefused, "snapshot", "version")


def test_rollback_of_targets(two_sets: Canteen) -> None:
    c = two_sets
    c.update()
    before = c.in_force()
    ts = Metadata.from_bytes(c.meta("timestamp.json").read_bytes())
    snap_v = ts.signed.snapshot_meta.version
    snap = Metadata.from_bytes(c.meta(f"{snap_v}.snapshot.json").read_bytes())
    snap.signed.version += 1
    snap.signed.meta["targets.json"] = MetaFile(snap.signed.meta["targets.json"].version - 2)
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile(snap.signed.version)
    answers = c.server.overrides.answers
    answers[f"/tuf/metadata/{snap.signed.version}.snapshot.json"] = fixed(
        signed_by(c, snap, "snapshot")
    )
    answers["/tuf/metadata/timestamp.json"] = fixed(signed_by(c, ts, "timestamp"))
    refused(c, before, tu.UpdateRefused, "targets", "version")


def test_rollback_of_root(canteen: Canteen) -> None:
    c = canteen
    c.repo.rotate("root", c.now, c.root_keys)
    c.update()
    before = c.in_force()
    # Version 2 replayed where version 3 belongs.
    c.server.overrides.answers["/tuf/metadata/3.root.json"] = fixed(
        c.meta("2.root.json").read_bytes()
    )
    refused(c, before, tu.UpdateRefused, "version")


def test_freeze_expired_timestamp(two_sets: Canteen) -> None:
    c = two_sets
    ts = Metadata.from_bytes(c.meta("timestamp.json").read_bytes())
    ts.signed.expires = ts.signed.expires.replace(year=2020)
    c.server.overrides.answers["/tuf/metadata/timestamp.json"] = fixed(
        signed_by(c, ts, "timestamp")
    )
    before = c.in_force()
    refused(c, before, tu.UpdatesStale, "updates stale", "expired")
    status = tu.status(c.state, c.store, int(time.time()))
    assert status["state"] == "updates stale"


def test_mix_and_match_new_settings_with_an_old_shard(canteen: Canteen) -> None:
    c = canteen
    c.repo.revoke([{"kind": "cadre", "iss": "cz", "sub": "m1"}], c.now)
    c.settings(800)
    c.update()
    before = c.in_force()
    old = c.repo.target_info(tu.shard_target(tu.shard_of(_cadre_key("m1"))))
    assert old is not None
    old_bytes = _target_bytes(c, old)
    # Set B: new settings and a revocation in the same shard as m1.
    sub = next(s for s in (f"m{n}" for n in range(2, 5000)) if _same_shard(s, "m1"))
    c.settings(900)
    c.repo.revoke([{"kind": "cadre", "iss": "cz", "sub": sub}], c.now)
    new = c.repo.target_info(old.path)
    assert new is not None
    url = f"/tuf/targets/revocations/{new.hashes['sha256']}.{old.path.rsplit('/', 1)[1]}"
    c.server.overrides.answers[url] = fixed(old_bytes)
    refused(c, before, tu.UpdateRefused, "length")
    del c.server.overrides.answers[url]
    assert c.update() is not None
    assert c.in_force()["price"] == 900 and c.in_force()["revocations"] == 2


def test_target_with_a_wrong_hash_or_length(two_sets: Canteen) -> None:
    c = two_sets
    before = c.in_force()
    info = c.repo.target_info(tu.settings_target(None))
    assert info is not None
    url = f"/tuf/targets/settings/{info.hashes['sha256']}.all.toml"
    good = _target_bytes(c, info)
    same_length = good.replace(b"900", b"100")
    c.server.overrides.answers[url] = fixed(same_length)
    refused(c, before, tu.UpdateRefused, "hash")
    c.server.overrides.answers[url] = fixed(good + b"\n")
    refused(c, before, tu.UpdateRefused, "length")


def test_endless_body_is_cut_at_the_cap(two_sets: Canteen) -> None:
    c = two_sets
    before = c.in_force()
    c.server.overrides.answers["/tuf/metadata/timestamp.json"] = endless()
    started = time.monotonic()
    refused(c, before, tu.UpdateRefused, "exceeding")
    assert time.monotonic() - started < 10


def test_slow_retrieval_meets_the_total_deadline(two_sets: Canteen) -> None:
    c = two_sets
    before = c.in_force()
    body = c.meta("timestamp.json").read_bytes()
    c.server.overrides.answers["/tuf/metadata/timestamp.json"] = trickle(body, 0.02)
    c.limits = tu.UpdateLimits(deadline_s=1.5)
    started = time.monotonic()
    # Each byte comes well within the read timeout; only the total deadline stops it.
    refused(c, before, tu.UpdateUnavailable, "deadline")
    assert time.monotonic() - started < 1.5 + 2.0


def test_root_signed_below_threshold(canteen: Canteen) -> None:
    c = canteen
    c.update()
    before = c.in_force()
    root = Metadata.from_bytes(c.meta("root.json").read_bytes())
    root.signed.version = 2
    one = next(iter(cu._load_signers(c.root_keys).values()))
    root.signatures.clear()
    root.sign(one)
    c.server.overrides.answers["/tuf/metadata/2.root.json"] = fixed(
        root.to_bytes(JSONSerializer(compact=True))
    )
    refused(c, before, tu.UpdateRefused, "signed by 1/2")


def test_root_with_a_duplicated_key(canteen: Canteen) -> None:
    c = canteen
    c.update()
    before = c.in_force()
    signer = next(iter(cu._load_signers(c.root_keys).values()))
    root = Metadata.from_bytes(c.meta("root.json").read_bytes())
    root.signed.version = 2
    # One key listed a second time under another keyid, both "signatures" from it.
    pk = signer.public_key
    twin = SSlibKey("f" * 64, pk.keytype, pk.scheme, pk.keyval)
    root.signed.add_key(twin, "root")
    root.signatures.clear()
    sig = root.sign(signer)
    root.signatures[twin.keyid] = Signature(twin.keyid, sig.signature)
    c.server.overrides.answers["/tuf/metadata/2.root.json"] = fixed(
        root.to_bytes(JSONSerializer(compact=True))
    )
    refused(c, before, tu.UpdateRefused, "signed by 1/2")
    # And the same signature entry twice in the envelope.
    doc = json.loads(root.to_bytes())
    doc["signatures"] = [doc["signatures"][0], copy.deepcopy(doc["signatures"][0])]
    c.server.overrides.answers["/tuf/metadata/2.root.json"] = fixed(json.dumps(doc).encode())
    refused(c, before, tu.UpdateRefused, "multiple signatures")


def test_root_skipping_a_version_then_a_valid_rotation_1_2_3(canteen: Canteen) -> None:
    c = canteen
    c.update()
    before = c.in_force()
    c.repo.rotate("root", c.now, c.root_keys)
    c.repo.rotate("root", c.now, c.root_keys)
    c.settings(700)
    c.server.overrides.answers["/tuf/metadata/2.root.json"] = fixed(
        c.meta("3.root.json").read_bytes()
    )
    # Version 3 where 2 belongs: not signed by the keys of the root in force (1).
    refused(c, before, tu.UpdateRefused, "root was signed by 0/2")
    c.server.overrides.answers.clear()
    applied = c.update()
    assert applied is not None and c.in_force()["price"] == 700
    assert tu.status(c.state, c.store, int(time.time()))["root_version"] == 3


def test_rotating_online_keys_is_followed(canteen: Canteen) -> None:
    c = canteen
    c.update()
    for role in ("timestamp", "snapshot", "targets", "bins"):
        c.repo.rotate(role, c.now, c.root_keys)
    c.repo.revoke([{"kind": "card", "uid": "04a1b2c3"}], c.now)
    applied = c.update()
    assert applied is not None and "revocations" in applied.changed


# ---- helpers --------------------------------------------------------------------------


def _cadre_key(sub: str) -> bytes:
    from terminal.trust import revocation_key

    return revocation_key("cadre", "cz", sub)


def _same_shard(a: str, b: str) -> bool:
    return tu.shard_of(_cadre_key(a)) == tu.shard_of(_cadre_key(b))


def _target_bytes(c: Canteen, info: Any) -> bytes:
    directory, _, base = info.path.rpartition("/")
    return (c.repo.paths.targets / directory / f"{info.hashes['sha256']}.{base}").read_bytes()


def test_a_canteen_id_with_a_path_in_it_is_refused(tmp_path: Path) -> None:
    with pytest.raises(cu.SettingsRefused):
        cu.validate_settings(tmp_path / "x.toml", "../etc")
