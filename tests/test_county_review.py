"""A hostile review of the county's move to SQLAlchemy and PostgreSQL (issue 14).

Each test here is a finding of that review: something the port answered differently on
PostgreSQL than the SQLite store did (a 500 where a 4xx belongs, a batch that stays
poisoned), proved first on the backend that failed and kept on both. Every test goes
through the real county server over HTTPS with the terminal's client certificate, or
through the real store and commands.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import requests
from countykit import ON_EACH_BACKEND, T0_MS, County, Terminal, provision_terminal, sync
from sqlalchemy import text

from protocol.chain import checkpoint_message, entry_hash
from terminal.ledger import ACCEPT, SALE, load_or_create_signing_key

DAY = "2026-05-28"


def _post(term: Terminal, doc: dict[str, Any]) -> requests.Response:
    ident = term.identity
    return requests.post(
        ident.server + "/v1/ledger",
        json=doc,
        cert=(str(ident.cert_file), str(ident.key_file)),
        verify=str(ident.ca_file),
        timeout=30,
    )


def _signed_batch(
    county: County, term: Terminal, changes: list[dict[int, Any]], first: int | None = None
) -> dict[str, Any]:
    """A batch continuing what the county acknowledged of ``term`` (or starting at
    ``first``, linked to nothing the county holds), one card sale per item of
    ``changes`` (field index to value), its last entry signed with the terminal's own
    ledger key: everything a hostile terminal with its key can send."""
    with county.store.db.read() as conn:
        seq, prev = conn.execute(
            text("SELECT acked_seq, last_hash FROM terminals WHERE terminal_id = :t"),
            {"t": term.terminal_id},
        ).one()
    prev = bytes(prev)
    if first is not None:
        seq, prev = first - 1, bytes(32)
    rows: list[list[Any]] = []
    for change in changes:
        seq += 1
        fields: list[Any] = [seq, secrets.token_hex(8), T0_MS, SALE, ACCEPT, None, "card"]
        fields += ["iss/x", "card/0badc0de", None, "u", DAY, "lunch", 1000, None, "{}"]
        for index, value in change.items():
            fields[index] = value
        digest = entry_hash(prev, fields)
        rows.append([*fields, prev.hex(), digest.hex()])
        prev = digest
    key = load_or_create_signing_key(term.root / "terminal-key.pem")
    last = rows[-1]
    signature = key.sign(checkpoint_message(term.terminal_id, last[0], bytes.fromhex(last[17])))
    return {
        "nonce": "",
        "entries": rows,
        "checkpoints": [[last[0], last[17], 0, signature.hex()]],
    }


# --- NUL characters: PostgreSQL refuses them in text, SQLite stored them ------------------


@ON_EACH_BACKEND
def test_a_nul_character_in_a_text_field_is_a_400_and_the_terminal_goes_on(
    county: County, tmp_path: Path
) -> None:
    """PostgreSQL cannot store U+0000 in TEXT: a signed entry with one in its detail,
    cadre or another text field reached the database and came back as a 500 (retry for
    ever). It is malformed input, one line and 400 on both backends, nothing is stored,
    and the same terminal's honest batch is taken right after."""
    term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    sync(term)
    acked = county.store.terminal("a1").acked_seq  # type: ignore[union-attr]
    for index, value in ((15, '{"note":"a\x00b"}'), (7, "iss/x\x00"), (1, "\x00"), (5, "r\x00")):
        answer = _post(term, _signed_batch(county, term, [{}, {index: value}]))
        assert answer.status_code == 400, answer.text
        problem = answer.json()["problem"]
        assert "NUL" in problem and "\n" not in problem, problem
        assert county.store.terminal("a1").acked_seq == acked  # type: ignore[union-attr]
    answer = _post(term, _signed_batch(county, term, [{}, {}]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2
