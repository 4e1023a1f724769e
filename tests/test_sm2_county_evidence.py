"""The county's evidence check of uploaded sales made with SM2 tokens (token.md §7).

The county verifies the signed code a terminal keeps in a sale before it acts on a
conflict (county/conflicts.py). Its keyring must give a 65-byte trusted key the SM2
algorithm, or every SM2 code would be "no evidence". Real county server, real sync.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from countykit import County, make_county, provision_terminal, sync
from hwsim.wallet import Issuer, make_wallet
from test_county_evidence import T0, alarms_of, qr_sale, record

from county import updates as cu
from county.app import CountyServer
from county.store import BAD_EVIDENCE
from protocol.issue import SM2, sm2_key_from_seed

SM2_ISSUER = Issuer("hn-sm2", sm2_key_from_seed("evidence-sm2-issuer"))

pytestmark = pytest.mark.slow  # publishing a trust list and two syncs: about 10 s


@pytest.fixture(name="county")
def county_fixture(tmp_path: Path) -> Iterator[County]:
    county = make_county(tmp_path / "county")
    now = int(time.time())
    cu.init_repository(county.data, tmp_path / "root-keys", now)
    trust_file = tmp_path / "trust.json"
    trust_file.write_text(
        json.dumps({"version": 1, "issued_at": now, "entries": [SM2_ISSUER.trust_entry()]})
    )
    with cu.CountyRepository(county.data) as repo:
        repo.publish_trust(trust_file, now)  # also the keys the county verifies codes with
    county.server = CountyServer(county.data, refresh_interval_s=3600).start()
    try:
        yield county
    finally:
        county.stop()


@pytest.mark.parametrize("holder_alg", [SM2, "Ed25519"])
def test_sm2_issuer_codes_are_evidence_for_a_conflict(
    county: County, tmp_path: Path, holder_alg: str
) -> None:
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    w = make_wallet(
        SM2_ISSUER, "W", "u-water", "Cadre W", now=T0 - 86_400, seed="W", alg=holder_alg
    )
    record(a, qr_sale(w, w.draw(T0), 1))
    sync(a)
    record(b, qr_sale(w, w.draw(T0 + 60), 2))
    sync(b)
    [c] = county.store.conflicts()
    assert c["kind"] == "served_twice"
    assert c["revokes"] == [f"qr/{w.iss}/{w.cti.hex()}"]
    assert alarms_of(county, BAD_EVIDENCE) == []
