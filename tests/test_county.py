"""The reference county server: cross-terminal conflicts and their revocations, the report,
the OpenAPI description, and the canteen-county / canteen-terminal sync commands end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import listening, wait_for
from countykit import (
    ON_EACH_BACKEND,
    T0_MS,
    County,
    append_entries,
    provision_terminal,
    signed_sale,
    sync,
)
from hwsim.wallet import Issuer, key_from_seed, make_wallet

from county.cli import build_parser
from county.cli import main as county_main
from terminal import trust
from terminal.commands.sync import add_sync_commands

ROOT = Path(__file__).resolve().parent.parent


@ON_EACH_BACKEND
def test_conflicts_become_revocations_and_are_reported_per_unit(
    county: County, tmp_path: Path
) -> None:
    issuer = Issuer("iss", key_from_seed("county-report-issuer"))
    county.store.add_issuer_keys([issuer.trust_entry()], T0_MS)
    t0 = T0_MS // 1000

    x = make_wallet(issuer, "x", "u-tax", "x", now=t0 - 86_400, seed="x")
    copied = x.draw(t0, ctr=5)
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    same = provision_terminal(county, tmp_path / "a2", "a2", "canteen-a")
    for term, draft in (
        # The same presentation (iss, cti, ctr) accepted at another terminal.
        (a, signed_sale(issuer, "x", "u-tax", t0, code=copied, ctr=5)),
        (b, signed_sale(issuer, "x", "u-tax", t0, code=copied, ctr=5)),
        # The same cadre served at another canteen in the same meal window.
        (b, signed_sale(issuer, "z", "u-water", t0, ctr=1)),
        (a, signed_sale(issuer, "z", "u-water", t0 + 60, ctr=2)),
        # Once each at two meals of one canteen: no conflict.
        (same, signed_sale(issuer, "w", "u-x", t0, ctr=1)),
    ):
        book = term.open_ledger()
        book.append(draft, T0_MS)
        book.close()
        sync(term)
    kinds = sorted(c["kind"] for c in county.store.conflicts())
    assert kinds == ["presentation_twice", "served_twice"]
    revocations = county.store.revocations()
    z = make_wallet(issuer, "z", "u-water", "z", now=t0 - 86_400, seed="z")
    assert {(r["kind"], r.get("cti")) for r in revocations} == {
        ("credential", x.cti.hex()),
        ("credential", z.cti.hex()),
    }
    # The list is a revocation list the terminal's trust store takes as it is.
    keys = list(trust.parse_revocations(revocations))
    assert len(keys) == 2
    report = county.store.report(int(time.time() * 1000), 3_600_000)
    assert report["conflicts_by_unit"] == {
        "u-tax": {"presentation_twice": 1},
        "u-water": {"served_twice": 1},
    }
    day = {(d["canteen"], d["day"]): d for d in report["days"]}
    assert day[("canteen-b", "2026-05-28")]["conflicts"] == 1
    assert day[("canteen-a", "2026-05-28")]["meals"] == 3


@ON_EACH_BACKEND
def test_report_counts_meals_amounts_refusals_and_silent_terminals(
    county: County, tmp_path: Path
) -> None:
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    county.code("never-1", "canteen-z")  # registered, never heard from
    a.append_entries(100)
    sync(a)
    report = county.store.report(int(time.time() * 1000), 3_600_000)
    [d] = [d for d in report["days"] if d["day"] == "2026-05-28"]
    refusals = sum(sum(x["refusals"].values()) for x in report["days"])
    accepted = sum(1 for i in range(100) if i % 9 != 8)
    reversed_ = 2  # one undo per 50 sales
    assert d["meals"] == accepted - reversed_ and d["reversals"] == reversed_
    assert d["amount_fen"] == (accepted - reversed_) * 1000
    assert refusals == 100 - accepted
    assert [t["terminal"] for t in report["terminals_not_heard_from"]] == ["never-1"]


def test_openapi_describes_every_endpoint(county: County) -> None:
    doc = requests.get(
        county.url + "/openapi.json", verify=str(county.data / "ca.pem"), timeout=5
    ).json()
    assert {"/v1/ledger", "/v1/provision", "/v1/ca.pem", "/v1/health"} <= set(doc["paths"])
    body = doc["paths"]["/v1/ledger"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert {"nonce", "entries", "checkpoints"} <= set(body["properties"])


def test_every_command_has_help() -> None:
    parser = build_parser()
    actions = [a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
    for name, sub in actions[0].choices.items():
        assert sub.description or sub.format_help(), name
    import argparse

    p = argparse.ArgumentParser()
    add_sync_commands(p.add_subparsers())
    for argv in (["provision", "--help"], ["sync", "--help"]):
        with pytest.raises(SystemExit) as exc:
            p.parse_args(argv)
        assert exc.value.code == 0


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}")
    proc = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_commands_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "county"
    assert county_main(["ca", "init", "--data", str(data)]) == 0
    assert county_main(["ca", "init", "--data", str(data)]) == 2  # never replaced
    code = (
        _run(
            "county.cli",
            "terminal",
            "add",
            "--data",
            str(data),
            "--canteen",
            "c1",
            "--terminal",
            "t1",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "county.cli", "serve", "--data", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}"),
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split("serving on ")[1].split()[0]
        # The line comes before the socket listens.
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        wait_for(lambda: listening(host, int(port)), what="the county server to listen")
        st = tmp_path / "state"
        # No ledger yet: the sync says so and fails.
        out = _run(
            "terminal.commands.sync",
            "provision",
            "--state",
            str(st),
            "--server",
            url,
            "--code",
            code,
        ).stdout
        assert json.loads(out)["terminal"] == "t1"
        assert (
            _run(
                "terminal.commands.sync",
                "provision",
                "--state",
                str(st),
                "--server",
                url,
                "--code",
                code,
                check=False,
            ).returncode
            == 2
        )
        from terminal import state

        book = state.open_ledger(st / "ledger.sqlite", st / "terminal-key.pem", "t1", T0_MS)
        append_entries(book, 120)
        book.close()
        proc = _run("terminal.commands.sync", "sync", "--once", "--state", str(st))
        summary = json.loads(proc.stdout)
        assert summary["complete"] and summary["unacked"] == 0 and summary["errors"] == []
        entries = [
            json.loads(x)
            for x in _run(
                "county.cli", "entries", "--data", str(data), "--terminal", "t1"
            ).stdout.splitlines()
        ]
        assert [e["seq"] for e in entries] == list(range(1, summary["last_seq"] + 1))
        assert {"terminal", "seq", "hash"} <= set(entries[0])
        # The report covers the last 7 local days unless asked; the entries are of T0_MS.
        day = ["--from", "2026-05-28", "--to", "2026-05-28"]
        report = json.loads(_run("county.cli", "report", "--data", str(data), *day).stdout)
        assert report["days"][0]["canteen"] == "c1"
        assert "meals" in _run("county.cli", "report", "--data", str(data), "--text", *day).stdout
        revs = json.loads(_run("county.cli", "revocations", "--data", str(data)).stdout)
        assert revs["entries"] == []
    finally:
        server.terminate()
        server.wait(15)
    # Server gone: one JSON line with the error, exit 1.
    proc = _run("terminal.commands.sync", "sync", "--once", "--state", str(st), check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error_kind"] == "network"
    # Not provisioned: one line, exit 2.
    proc = _run(
        "terminal.commands.sync",
        "sync",
        "--once",
        "--state",
        str(tmp_path / "nothing"),
        check=False,
    )
    assert proc.returncode == 2 and "provision" in proc.stderr
