"""The canteen-terminal command as technicians run it: a real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_terminal as run

ROOT = Path(__file__).parent.parent
VECTORS = json.loads((ROOT / "tests" / "data" / "vectors-v1.json").read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def trust_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "trust.json", VECTORS["trust"])


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_public_vectors_through_verify_token(
    case: dict[str, Any], tmp_path: Path, trust_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each vector through the command's own main() in this process (the same parser, files
    and verdict lines; the other tests here start the real process, this one would start 23)."""
    from terminal.commands.main import main

    args = [
        "verify-token",
        "--trust",
        str(trust_file),
        "--window",
        str(VECTORS["window_s"]),
        "--skew",
        str(VECTORS["skew_s"]),
        "--state",
        str(tmp_path / "st"),
    ]
    if case.get("revoked"):
        args += ["--revoked", str(write_json(tmp_path / "revoked.json", case["revoked"]))]
    for step in case["steps"]:
        status = main([*args, "--now", str(step["now"]), step["qr"]])
        out = capsys.readouterr()
        assert status == 0, out.err
        line = json.loads(out.out)
        expected = step["expect"]
        if expected == "accept":
            assert (line["verdict"], line["reason"]) == ("accept", None)
            assert line["iss"] == "hn-test" and isinstance(line["ctr"], int)
            assert len(bytes.fromhex(line["cti"])) in range(8, 17)
        else:
            assert (line["verdict"], line["reason"]) == ("reject", expected)


def test_stdin_streams_and_replay_is_remembered_within_one_run(
    tmp_path: Path, trust_file: Path
) -> None:
    case = next(c for c in VECTORS["cases"] if c["name"] == "replay_same_code")
    code = case["steps"][0]["qr"]
    now = case["steps"][0]["now"]
    out = run(
        "verify-token",
        "--trust",
        str(trust_file),
        "--now",
        str(now),
        stdin=f"{code}\n\n{code}\nnot a code\n",
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["reason"] for x in lines] == [None, "replayed", "malformed"]


def test_ledger_option_records_every_verdict_and_verifies(tmp_path: Path, trust_file: Path) -> None:
    case = next(c for c in VECTORS["cases"] if c["name"] == "counter_goes_up")
    book = tmp_path / "checks.sqlite"
    for step in case["steps"]:
        out = run(
            "verify-token",
            "--trust",
            str(trust_file),
            "--ledger",
            str(book),
            "--now",
            str(step["now"]),
            step["qr"],
            "CT1:%%%",
        )
        assert out.returncode == 0, out.stderr
    verify = run("ledger", "verify", str(book))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    stats = json.loads(run("ledger", "stats", str(book), "--json").stdout)
    assert stats["entries"] == 5  # genesis + 2 runs of (accept, malformed)
    exported = run("ledger", "export", str(book), "--format", "jsonl").stdout.splitlines()
    kinds = [json.loads(x)["kind"] for x in exported]
    assert kinds == ["genesis", "token_check", "token_check", "token_check", "token_check"]
    csv_out = run("ledger", "export", str(book), "--format", "csv").stdout.splitlines()
    assert len(csv_out) == 6 and "seq" in csv_out[0]


def test_tampered_ledger_fails_verify_naming_the_entry(tmp_path: Path, trust_file: Path) -> None:
    import sqlite3

    book = tmp_path / "l.sqlite"
    code = VECTORS["cases"][0]["steps"][0]["qr"]
    assert (
        run(
            "verify-token",
            "--trust",
            str(trust_file),
            "--ledger",
            str(book),
            "--now",
            "1790000000",
            code,
            "x",
            "y",
        ).returncode
        == 0
    )
    db = sqlite3.connect(book)
    triggers = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    for name in triggers:
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE entries SET reason = 'replayed' WHERE seq = 3")
    db.commit()
    db.close()
    out = run("ledger", "verify", str(book))
    assert out.returncode == 1
    assert "entry 3" in out.stdout


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-trust", "cannot read the trust list"),
        ("bad-json", "not valid JSON"),
        ("bad-entry", "trust list entry 0"),
        ("bad-revoked", "revocation list entry 0"),
        ("bad-config", "unknown option"),
    ],
)
def test_bad_inputs_give_one_clear_line(
    tmp_path: Path, trust_file: Path, setup: str, message: str
) -> None:
    args = ["verify-token", "--trust", str(trust_file), "CT1:X"]
    if setup == "missing-trust":
        args[2] = str(tmp_path / "absent.json")
    elif setup == "bad-json":
        (tmp_path / "t.json").write_text("[{]", encoding="utf-8")
        args[2] = str(tmp_path / "t.json")
    elif setup == "bad-entry":
        args[2] = str(write_json(tmp_path / "t.json", [{"iss": "x"}]))
    elif setup == "bad-revoked":
        args += ["--revoked", str(write_json(tmp_path / "r.json", [{"kind": "nope"}]))]
    elif setup == "bad-config":
        (tmp_path / "c.toml").write_text("[tokens]\nwindows = 3\n", encoding="utf-8")
        args += ["--config", str(tmp_path / "c.toml")]
    out = run(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("canteen-terminal: error:") and message in lines[0]
    )


def test_ledger_tools_on_a_file_that_is_not_a_ledger(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite at all" * 50)
    for action in ("verify", "stats", "export"):
        out = run("ledger", action, str(junk))
        assert out.returncode in (1, 2), action
        assert "Traceback" not in out.stderr
    missing = run("ledger", "verify", str(tmp_path / "absent.sqlite"))
    assert missing.returncode in (1, 2) and "Traceback" not in missing.stderr


def test_lists_install_and_show(tmp_path: Path, trust_file: Path) -> None:
    roster = tmp_path / "roster.csv"
    roster.write_text(
        "uid,iss,sub,unit,display_name,status\n01020304,hn-test,C1,u,n,active\n", encoding="utf-8"
    )
    st = str(tmp_path / "st")
    out = run(
        "lists",
        "install",
        "--state",
        st,
        "--issuers",
        str(trust_file),
        "--roster",
        str(roster),
        "--roster-version",
        "4",
        "--now",
        "1790000000",
    )
    assert out.returncode == 0, out.stderr
    shown = [json.loads(x) for x in run("lists", "show", "--state", st).stdout.splitlines()]
    by_name = {x["name"]: x for x in shown}
    assert by_name["issuers"]["count"] == 2
    assert by_name["roster"]["version"] == 4 and by_name["roster"]["count"] == 1
    assert by_name["revocations"] == {"name": "revocations", "installed": False}
    assert run("lists", "install", "--state", st).returncode == 2


def test_demo_runs_the_core_and_verifies(tmp_path: Path) -> None:
    out = run("demo", "--state", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for reason in (
        "replayed",
        "already_served",
        "revoked",
        "card_revoked",
        "card_unknown",
        "malformed",
    ):
        assert f"REFUSE {reason}" in text, reason
    assert text.count("ACCEPT") == 3
    assert "verifies" in text


@pytest.mark.slow
def test_every_command_has_help() -> None:
    from terminal.commands.main import build_parser

    parser = build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    commands = actions[0].choices  # type: ignore[attr-defined]
    for name, sub in commands.items():
        assert sub.format_help().strip(), name
        assert run(name, "--help").returncode == 0, name


def test_each_group_adds_the_commands_the_table_names(tmp_path: Path) -> None:
    """main.py names each group's commands so that a run imports its group alone: the names
    must be what each group really adds, and a command run alone must not pull in the
    libraries of the others (requests, APScheduler, python-tuf, OpenCV)."""
    import argparse

    from terminal.commands import main

    for adder, _optional, names in main.GROUPS:
        sub = argparse.ArgumentParser().add_subparsers()
        adder()(sub)
        assert tuple(sub.choices) == names
    child = (
        "import sys\n"
        "from terminal.commands.main import main\n"
        "status = main(sys.argv[1:])\n"
        "heavy = ('requests', 'apscheduler', 'tuf', 'cv2')\n"
        "print(status, [m for m in heavy if m in sys.modules])\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}"}
    argv = ["ledger", "stats", str(tmp_path / "absent.sqlite")]
    out = subprocess.run(
        [sys.executable, "-c", child, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.stdout.split() == ["2", "[]"], out.stdout + out.stderr
    assert "no ledger file" in out.stderr


def test_verify_token_against_a_terminals_own_lists(tmp_path: Path, trust_file: Path) -> None:
    case = next(c for c in VECTORS["cases"] if c["name"] == "revoked_credential")
    code, now = case["steps"][0]["qr"], str(case["steps"][0]["now"])
    revoked = write_json(tmp_path / "revoked.json", case["revoked"])
    clean = write_json(tmp_path / "none.json", [])
    reasons = []
    for name, revocations in (("clean", clean), ("revoking", revoked)):
        st = tmp_path / name
        out = run(
            "lists",
            "install",
            "--state",
            str(st),
            "--issuers",
            str(trust_file),
            "--revocations",
            str(revocations),
            "--now",
            now,
        )
        assert out.returncode == 0, out.stderr
        out = run("verify-token", "--state", str(st), "--now", now, code)
        assert out.returncode == 0, out.stderr
        reasons.append(json.loads(out.stdout)["reason"])
    assert reasons == [None, "revoked"]  # each terminal's own applied lists decide
    missing = run("verify-token", "CT1:X")
    assert missing.returncode == 2 and "--state DIR of a terminal" in missing.stderr
    mixed = run("verify-token", "--state", str(tmp_path / "clean"), "--revoked", str(revoked), "X")
    assert mixed.returncode == 2 and "--revoked needs --trust" in mixed.stderr
