"""Updates through the real county server: HTTPS with the terminal's client certificate,
a conflict found at intake becoming a published revocation, and the applied set reported."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from countykit import (
    T0_MS,
    County,
    make_county,
    provision_terminal,
    sale,
    sync,
)
from hwsim.wallet import Issuer, key_from_seed, make_wallet

from county import updates as cu
from county.app import ASGIApp
from terminal import trust
from terminal import updates as tu


@pytest.mark.slow
def test_conflict_to_refusal_through_the_county_server(tmp_path: Path) -> None:
    county: County = make_county(tmp_path)
    now = int(time.time())
    cu.init_repository(county.data, tmp_path / "root-keys", now)

    def with_repository(app: ASGIApp) -> ASGIApp:
        cu.mount_repository(app, county.data)  # what county/app.py will do
        return app

    county.start(wrap=with_repository)
    try:
        a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
        b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
        county.pin_root(a.root)
        store = trust.TrustStore(a.root / "trust.sqlite")
        try:
            # Over HTTPS, the county CA pinned at provisioning, the client certificate sent.
            updater = tu.updater_for_county(a.root)
            first = tu.update_once(updater, store, now)
            assert first is not None and "revocations" in first.changed

            # One phone code, accepted at two terminals: a copied code.
            issuer = Issuer("iss", key_from_seed("updates-county-issuer"))
            county.store.add_issuer_keys([issuer.trust_entry()], T0_MS)
            w = make_wallet(issuer, "x", "u1", "x", now=T0_MS // 1000 - 86_400, seed="x")
            code = w.draw(T0_MS // 1000, ctr=5)
            for term in (a, b):
                book = term.open_ledger()
                draft = sale(
                    0,
                    cadre="iss/x",
                    credential=f"qr/iss/{w.cti.hex()}",
                    ctr=5,
                    detail={"qr": code},
                )
                book.append(draft, T0_MS)
                book.close()
                sync(term)
            # The server's refresher publishes the conflict's revocation by itself.
            with cu.CountyRepository(county.data) as repo:
                before = repo.revocation_count()
            stop = cu.start_timestamp_refresher(county.data, 0.1)
            try:
                deadline = time.monotonic() + 20
                while True:
                    with cu.CountyRepository(county.data) as repo:
                        if repo.revocation_count() > before:
                            break
                    assert time.monotonic() < deadline, "the conflict was not published"
                    time.sleep(0.1)
            finally:
                stop()
            assert cu.publish_conflict_revocations(county.data, now).revocations_added == 0

            applied = tu.update_once(tu.updater_for_county(a.root), store, now)
            assert applied is not None and applied.changed == ("revocations",)
            key = trust.revocation_key("credential", "iss", w.cti)
            assert store._has(key)

            # The terminal reports what it applied; county IT sees it.
            draft = applied.ledger_draft()
            cu.record_applied(county.data, "a1", draft.detail, T0_MS)
            with cu.CountyRepository(county.data) as repo:
                rows = repo.applied()
            assert rows[0]["terminal"] == "a1" and rows[0]["set"] == applied.set_version
        finally:
            store.close()
    finally:
        county.stop()
