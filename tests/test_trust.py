"""Trust store: the three lists in SQLite, replaced whole, looked up fast, errors named."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protocol.tokens import IssuerKey, Presentation
from terminal import trust

PK1 = bytes(range(32))
PK2 = bytes(range(1, 33))
KID1 = hashlib.sha256(PK1).digest()[:8]


def presentation(**changes: object) -> Presentation:
    base = dict(
        iss="hn-test",
        sub="C0001",
        cti=bytes.fromhex("00112233445566778899aabb"),
        ctr=1,
        t=0,
        iat=0,
        exp=10,
        unit="u",
        display_name="n",
        allowance=None,
        holder_key=PK2,
        issuer_key=PK1,
    )
    base.update(changes)
    return Presentation(**base)  # type: ignore[arg-type]


def test_issuer_keys_with_windows_and_shared_kid(tmp_path: Path) -> None:
    store = trust.TrustStore(tmp_path / "trust.sqlite")
    entries = [
        {"iss": "hn-test", "kid": KID1.hex(), "public_key": PK1.hex(), "not_before": 5},
        {"iss": "hn-other", "kid": KID1.hex(), "public_key": PK1.hex()},
    ]
    # Two entries for one key and kid under different issuers: both are kept, both are tried.
    keys = trust.parse_issuer_keys(entries)
    store.replace_issuers(keys, trust.ListHeader(3, 100, 200), now=150)
    found = store.issuer_keys(KID1)
    assert {k.iss for k in found} == {"hn-test", "hn-other"}
    assert next(k for k in found if k.iss == "hn-test").not_before == 5
    assert store.issuer_keys(b"\0" * 8) == ()
    # Two different keys that share a kid (a truncated hash can collide): both are kept.
    twin = IssuerKey("hn-test", KID1, PK2)
    store.replace_issuers([*keys, twin], trust.ListHeader(3, 100, 200), now=150)
    assert {k.public_key for k in store.issuer_keys(KID1)} == {PK1, PK2}
    store.replace_issuers(keys, trust.ListHeader(3, 100, 200), now=150)
    info = store.list_info(trust.ISSUERS)
    assert info == trust.ListInfo(trust.ISSUERS, 3, 100, 200, 150, 2)
    store.close()
    # Reopened from the file: the same keys, the same version.
    again = trust.TrustStore(tmp_path / "trust.sqlite")
    assert len(again.issuer_keys(KID1)) == 2
    assert again.list_info(trust.ISSUERS) == info


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"iss": "x", "kid": "00" * 8, "public_key": PK1.hex()},
            "is not the kid of its public key",
        ),
        ({"iss": "x", "kid": KID1.hex(), "public_key": "zz"}, "public_key: not hex"),
        ({"iss": "x", "kid": KID1.hex(), "public_key": "00" * 31}, "must be 32 bytes"),
        ({"iss": "", "kid": KID1.hex(), "public_key": PK1.hex()}, "iss: must be a non-empty text"),
        (
            {"iss": "x", "kid": KID1.hex(), "public_key": PK1.hex(), "not_after": "soon"},
            "not_after: must be a whole number",
        ),
        ("just text", "must be an object"),
    ],
)
def test_bad_trust_entries_are_named(entry: object, message: str) -> None:
    with pytest.raises(trust.TrustError, match="trust list entry 0") as err:
        trust.parse_issuer_keys([entry])
    assert message in str(err.value)


def test_every_revocation_kind_in_spec_order() -> None:
    store = trust.TrustStore(":memory:")
    p = presentation()
    cases = [
        ({"kind": "credential", "iss": "hn-test", "cti": p.cti.hex()}, "credential"),
        ({"kind": "cadre", "iss": "hn-test", "sub": "C0001"}, "cadre"),
        ({"kind": "holder_key", "public_key": PK2.hex()}, "holder_key"),
        ({"kind": "issuer_key", "public_key": PK1.hex()}, "issuer_key"),
    ]
    for version, (entry, kind) in enumerate(cases, start=1):
        store.replace_revocations(
            trust.parse_revocations([entry]), trust.ListHeader(version, 1, None), 1
        )
        assert store.revoked_kind(p) == kind
    # The same cadre id at another issuer, another credential: not revoked.
    store.replace_revocations(
        trust.parse_revocations([cases[1][0], cases[0][0]]), trust.ListHeader(9, 1, None), 1
    )
    assert store.revoked_kind(presentation(iss="hn-else", cti=b"\1" * 8)) is None
    assert store.revoked_kind(p) == "credential"  # checked first
    assert not store.issuer_key_revoked(PK1)


def test_revocation_keys_cannot_collide_across_field_boundaries() -> None:
    a = trust.revocation_key("cadre", "a\0b", "c")
    b = trust.revocation_key("cadre", "a", "b\0c")
    assert a != b
    assert trust.revocation_key("card", b"\1\2\3\4") != trust.revocation_key(
        "holder_key", b"\1\2\3\4"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "ghost"}, "kind must be one of"),
        ({"kind": "credential", "iss": "x", "cti": "xyz"}, "cti: not hex"),
        ({"kind": "cadre", "iss": "x"}, "sub: must be a non-empty text"),
        ({"kind": "holder_key", "public_key": "00"}, "must be 32 bytes"),
        ({"kind": "card", "uid": "00"}, "uid must be 4 to 10 bytes"),
        (["credential"], "must be an object"),
    ],
)
def test_bad_revocation_entries_are_named(entry: object, message: str) -> None:
    with pytest.raises(trust.TrustError, match="revocation list entry 1") as err:
        list(trust.parse_revocations([{"kind": "card", "uid": "01020304"}, entry]))
    assert message in str(err.value)


def test_a_bad_entry_leaves_the_old_list_in_force(tmp_path: Path) -> None:
    store = trust.TrustStore(tmp_path / "t.sqlite")
    good = [{"kind": "card", "uid": "01020304"}]
    store.replace_revocations(trust.parse_revocations(good), trust.ListHeader(1, 10, None), 10)
    bad = [{"kind": "card", "uid": "0a0b0c0d"}, {"kind": "card", "uid": "bad"}]
    with pytest.raises(trust.TrustError):
        store.replace_revocations(trust.parse_revocations(bad), trust.ListHeader(2, 20, None), 20)
    assert store.card_revoked(bytes.fromhex("01020304"))
    assert not store.card_revoked(bytes.fromhex("0a0b0c0d"))
    info = store.list_info(trust.REVOCATIONS)
    assert info is not None and (info.version, info.count) == (1, 1)


def test_an_older_version_is_refused() -> None:
    store = trust.TrustStore(":memory:")
    store.replace_roster([], trust.ListHeader(5, 10, None), 10)
    with pytest.raises(trust.TrustError, match="version 4 is older than the version in force"):
        store.replace_roster([], trust.ListHeader(4, 10, None), 10)
    store.replace_roster([], trust.ListHeader(5, 11, None), 11)  # the same version again is fine


def test_list_documents_bare_or_wrapped() -> None:
    entries, header = trust.split_list([{"kind": "card"}], "revocation")
    assert header == trust.ListHeader(0, None, None) and len(entries) == 1
    doc = {"version": 7, "issued_at": 100, "expires_at": 200, "entries": []}
    assert trust.split_list(doc, "revocation") == ([], trust.ListHeader(7, 100, 200))
    with pytest.raises(trust.TrustError, match="must be a JSON array"):
        trust.split_list({"items": []}, "revocation")
    with pytest.raises(trust.TrustError, match="version: must be a whole number"):
        trust.split_list({"version": "7", "entries": []}, "revocation")


def test_roster_csv(tmp_path: Path) -> None:
    text = (
        "uid,iss,sub,unit,display_name,status\n"
        "0A1B2C3D,hn-test,C0001,finance,张伟,active\n"
        "04a1b2c3d4e5f6,hn-test,C0002,finance,李娜,lost\n"
    )
    cards = trust.parse_roster_csv(text)
    store = trust.TrustStore(":memory:")
    store.replace_roster(cards, trust.ListHeader(1, 5, None), 5)
    card = store.card(bytes.fromhex("0a1b2c3d"))
    assert card is not None and card.cadre == "hn-test/C0001" and card.display_name == "张伟"
    lost = store.card(bytes.fromhex("04a1b2c3d4e5f6"))
    assert lost is not None and lost.status == "lost"
    assert store.card(b"\0\0\0\0") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uid,iss\n01020304,x\n", "the header must be"),
        ("uid,iss,sub,unit,display_name,status\n0102,x,y,z,n,active\n", "line 2: uid must be 4"),
        ("uid,iss,sub,unit,display_name,status\n01020304,x,y,z,n,gone\n", "status must be one of"),
        ("uid,iss,sub,unit,display_name,status\n01020304,x,,z,n,active\n", "sub: must be"),
    ],
)
def test_bad_roster_lines(text: str, message: str) -> None:
    with pytest.raises(trust.TrustError, match="roster CSV") as err:
        trust.parse_roster_csv(text)
    assert message in str(err.value)


def test_unreadable_and_broken_json_files(tmp_path: Path) -> None:
    with pytest.raises(trust.TrustError, match="cannot read the trust list"):
        trust.read_json_file(tmp_path / "absent.json", "trust")
    bad = tmp_path / "bad.json"
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(trust.TrustError, match="not valid JSON"):
        trust.read_json_file(bad, "trust")


def test_a_corrupt_trust_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "trust.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(trust.TrustError, match="cannot open the trust store"):
        trust.TrustStore(path)


MILLION = textwrap.dedent(
    """
    import sys
    from terminal import trust
    store = trust.TrustStore(sys.argv[1])
    keys = (trust.revocation_key("credential", "hn-cz", i.to_bytes(12, "big"))
            for i in range(1_000_000))
    store.replace_revocations(keys, trust.ListHeader(1, 0, None), 0)
    store.close()
    store = trust.TrustStore(sys.argv[1])
    hits = sum(store._has(trust.revocation_key("credential", "hn-cz", i.to_bytes(12, "big")))
               for i in range(0, 2_000_000, 1000))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent.
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(store.revocation_count(), hits, peak_kb // 1024)
    """
)


@pytest.mark.slow
def test_a_million_revocations_load_and_answer_in_a_small_footprint(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", MILLION, str(tmp_path / "trust.sqlite")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    ).stdout.split()
    count, hits, rss_mb = map(int, out)
    assert count == 1_000_000
    assert hits == 1000  # every key under a million is found, none above
    # The list lives on disk: the process stays far below what a million Python objects take.
    assert rss_mb < 150, f"{rss_mb} MB"


def test_reload_sees_a_list_replaced_by_another_process(tmp_path: Path) -> None:
    daemon = trust.TrustStore(tmp_path / "t.sqlite")
    assert daemon.list_info(trust.ROSTER) is None and daemon.issuer_keys(KID1) == ()
    tool = trust.TrustStore(tmp_path / "t.sqlite")
    tool.replace_roster([], trust.ListHeader(2, 50, None), 60)
    tool.replace_issuers([IssuerKey("hn", KID1, PK1)], trust.ListHeader(1, 50, None), 60)
    tool.close()
    daemon.reload()
    info = daemon.list_info(trust.ROSTER)
    assert info is not None and info.version == 2
    assert len(daemon.issuer_keys(KID1)) == 1
