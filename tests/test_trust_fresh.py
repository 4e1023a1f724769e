"""The trust store's memory of issuer keys, revoked issuer keys and list headers stays
exact: a list installed takes effect on the next code, whether this store installed it,
another TrustStore on the same file did, or another process did (the daemon and a
command may both open the file). Real tokens, real SQLite files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from canteenkit import ISSUER, LUNCH, wallet

from protocol import tokens
from terminal import trust

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ISSUER.trust_entry()
REVOKE_ISSUER = {"kind": "issuer_key", "public_key": ENTRY["public_key"]}


def install(
    store: trust.TrustStore, version: int, revoked: list[dict[str, str]], issuers: bool = True
) -> None:
    header = trust.ListHeader(version, LUNCH - 3600, None)
    if issuers:
        store.replace_issuers(trust.parse_issuer_keys([ENTRY]), header, LUNCH - 3600)
    store.replace_revocations(trust.parse_revocations(revoked), header, LUNCH - 3600)


def verdict(store: trust.TrustStore, sub: str = "F1") -> str:
    """ "ok" or the token check's reason for a fresh code of cadre ``sub``."""
    memo = tokens.SignatureMemo()  # as the worker keeps one: it must not hide a revocation
    try:
        tokens.verify_presentation(wallet(sub).draw(LUNCH), LUNCH, store, memo=memo)
    except tokens.TokenRejected as rejected:
        return rejected.code
    return "ok"


def test_an_issuer_key_revoked_by_this_store_refuses_the_next_code() -> None:
    store = trust.TrustStore(":memory:")
    install(store, 1, [])
    memo = tokens.SignatureMemo()
    code = wallet("F1").draw(LUNCH)
    tokens.verify_presentation(code, LUNCH, store, memo=memo)
    install(store, 2, [REVOKE_ISSUER], issuers=False)
    assert store.issuer_key_revoked(bytes.fromhex(ENTRY["public_key"]))
    with pytest.raises(tokens.TokenRejected) as refused:
        tokens.verify_presentation(code, LUNCH, store, memo=memo)  # the same code, memo warm
    assert refused.value.code == tokens.REVOKED
    # Lifted by the next list: the next code verifies again.
    install(store, 3, [], issuers=False)
    assert verdict(store) == "ok"


def test_a_list_installed_through_another_store_on_the_file_counts_at_the_next_code(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trust.sqlite"
    daemon = trust.TrustStore(path)
    tool = trust.TrustStore(path)
    try:
        assert verdict(daemon) == tokens.UNKNOWN_ISSUER_KEY  # nothing installed yet
        install(tool, 1, [])
        assert verdict(daemon) == "ok"  # the issuer keys, without a reload
        install(tool, 2, [REVOKE_ISSUER], issuers=False)
        assert verdict(daemon) == tokens.REVOKED
        info = daemon.list_info(trust.REVOCATIONS)
        assert info is not None and (info.version, info.count) == (2, 1)
        # A revocation of another kind leaves the issuer key usable again.
        other = {"kind": "cadre", "iss": ISSUER.iss, "sub": "F9"}
        install(tool, 3, [other], issuers=False)
        assert verdict(daemon) == "ok"
        info = daemon.list_info(trust.REVOCATIONS)
        assert info is not None and info.version == 3
    finally:
        tool.close()
        daemon.close()


INSTALLER = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = [sys.argv[2]]
    from terminal import trust
    store = trust.TrustStore(sys.argv[1])
    version, issued, entries = json.loads(sys.argv[3])
    store.replace_revocations(
        trust.parse_revocations(entries), trust.ListHeader(version, issued, None), issued
    )
    store.close()
    """
)


def test_a_revocation_installed_by_another_process_refuses_the_next_code(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trust.sqlite"
    daemon = trust.TrustStore(path)
    try:
        install(daemon, 1, [])
        assert verdict(daemon) == "ok"
        for version, entries, expected in (
            (2, [REVOKE_ISSUER], tokens.REVOKED),
            (3, [], "ok"),
        ):
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    INSTALLER,
                    str(path),
                    str(ROOT),
                    json.dumps([version, LUNCH - 3600, entries]),
                ],
                check=True,
                timeout=60,
            )
            assert verdict(daemon) == expected
    finally:
        daemon.close()


def test_revoked_kind_names_the_issuer_key_last() -> None:
    store = trust.TrustStore(":memory:")
    install(store, 1, [])
    p = tokens.verify_presentation(wallet("F2").draw(LUNCH), LUNCH, store)
    assert store.revoked_kind(p) is None
    cadre = {"kind": "cadre", "iss": ISSUER.iss, "sub": "F2"}
    install(store, 2, [REVOKE_ISSUER], issuers=False)
    assert store.revoked_kind(p) == "issuer_key"
    install(store, 3, [REVOKE_ISSUER, cadre], issuers=False)
    assert store.revoked_kind(p) == "cadre"
