"""The update commands of canteen-county and canteen-terminal, end to end, and their help."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from updateskit import NOW, RepoServer

from county import updates as cu
from county.updates_cli import add_update_commands as add_county
from terminal import trust
from terminal import updates as tu
from terminal.commands.update import add_update_commands as add_terminal


def parser(add: Any, prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    add(p.add_subparsers(dest="command", required=True))
    return p


def county(*args: str) -> int:
    a = parser(add_county, "canteen-county").parse_args(args)
    return int(a.func(a))


def terminal(*args: str) -> int:
    a = parser(add_terminal, "canteen-terminal").parse_args(args)
    return int(a.func(a))


def out_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def timestamp_version(data: Path) -> int:
    with cu.CountyRepository(data) as repo:
        return int(repo.timestamp().signed.version)


def test_every_command_has_help() -> None:
    for add, prog in ((add_county, "canteen-county"), (add_terminal, "canteen-terminal")):
        top = parser(add, prog)
        stack = [top]
        while stack:
            p = stack.pop()
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    helps = {c.dest: c.help for c in action._choices_actions}
                    for name, sub in action.choices.items():
                        assert helps.get(name), f"{prog} {name} has no help"
                        stack.append(sub)


@pytest.mark.slow
def test_county_it_to_a_terminal_by_usb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, keys = tmp_path / "county", tmp_path / "offline"
    assert county("updates", "init", "--data", str(data), "--root-keys", str(keys)) == 0
    captured = capsys.readouterr()
    init = json.loads(captured.out)
    assert init["root_threshold"] == "2 of 3" and len(list(keys.glob("*.pem"))) == 3
    assert "offline media" in captured.err

    bad = tmp_path / "bad.toml"
    bad.write_text('[[meals]]\nname = "x"\nstart = "11:00"\nend = "10:00"\n')
    assert county("publish", "settings", "--data", str(data), str(bad), "--all") == 2
    err = capsys.readouterr().err
    assert "nothing published" in err.lower() and err.count("\n") == 1
    good = tmp_path / "good.toml"
    good.write_text(
        '[[meals]]\nname = "lunch"\nstart = "11:00"\nend = "13:00"\n'
        "price_own_fen = 700\nprice_visitor_fen = 900\n"
    )
    assert county("publish", "settings", "--data", str(data), str(good), "--canteen", "c1") == 0
    capsys.readouterr()
    assert county("revoke", "--data", str(data), "cadre", "cz", "s-1") == 0
    assert out_json(capsys)["revocations_added"] == 1
    assert county("revoke", "--data", str(data), "card") == 2
    assert "takes UID_HEX" in capsys.readouterr().err
    assert county("timestamp", "refresh", "--data", str(data), "--force") == 0
    assert "timestamp" in out_json(capsys)["renewed"]
    assert county("rotate", "--data", str(data), "--root-keys", str(keys), "timestamp") == 0
    assert out_json(capsys)["root_version"] == 2
    assert county("updates", "renew-root", "--data", str(data), "--root-keys", str(keys)) == 0
    assert out_json(capsys)["root_version"] == 3
    assert county("updates", "renew-root", "--data", str(data), "--root-keys", str(data)) == 2
    assert "offline root keys" in capsys.readouterr().err

    state = tmp_path / "state"
    root_json = data / "updates" / "repository" / "metadata" / "1.root.json"
    assert terminal("update", "pin-root", "--state", str(state), str(root_json)) == 0
    assert out_json(capsys)["sha256"] == init["root_sha256"]
    usb = tmp_path / "usb"
    shutil.copytree(data / "updates" / "repository", usb / "repository")
    args = ("--state", str(state), "--canteen", "c1")
    assert terminal("update", "apply", str(usb), *args) == 0
    applied = out_json(capsys)
    assert applied["applied"] and set(applied["changed"]) == {"settings", "revocations"}
    assert terminal("update", "status", "--state", str(state)) == 0
    status = out_json(capsys)
    assert status["state"] == "current" and status["root_version"] == 3

    # An old copy of the stick after a newer set: refused, nothing changes.
    old = tmp_path / "old-usb"
    shutil.copytree(usb, old)
    assert county("revoke", "--data", str(data), "cadre", "cz", "s-2") == 0
    shutil.rmtree(usb)
    shutil.copytree(data / "updates" / "repository", usb / "repository")
    assert terminal("update", "apply", str(usb), *args) == 0
    capsys.readouterr()
    assert terminal("update", "apply", str(old), *args) == 2
    assert "version" in capsys.readouterr().err

    # What the terminal reports comes back in 'applied'.
    cu.record_applied(data, "c1-1", {"set": applied["set"]}, NOW * 1000)
    assert county("applied", "--data", str(data)) == 0
    rows = out_json(capsys)["terminals"]
    assert rows[0]["terminal"] == "c1-1" and rows[0]["set"] == applied["set"]


@pytest.mark.slow
def test_server_parts_refresher_and_conflicts(tmp_path: Path) -> None:
    data = tmp_path / "county"
    cu.init_repository(data, tmp_path / "offline", NOW)
    with cu.CountyRepository(data) as repo:
        first = repo.timestamp().signed.version
    # A clock two-thirds of a day on: the refresher must re-sign the timestamp.
    stop = cu.start_timestamp_refresher(data, 0.05, clock=lambda: NOW + 16 * 3600)
    try:
        wait_for(lambda: timestamp_version(data) > first, 10, "the timestamp to be re-signed")
    finally:
        stop()
    # No conflicts recorded: nothing to publish, and no error.
    from county.store import CountyStore

    CountyStore(data / "county.sqlite").close()
    assert cu.publish_conflict_revocations(data, NOW).revocations_added == 0

    # The repository is served read-only over HTTP by the app's mount.
    server = RepoServer(data).start()
    try:
        state = tmp_path / "state"
        tu.pin_root(state, (data / "updates/repository/metadata/1.root.json").read_bytes())
        store = trust.TrustStore(state / "trust.sqlite")
        try:
            updater = tu.TerminalUpdater(state, "c1", base_url=server.url)
            assert tu.update_once(updater, store, NOW) is not None
        finally:
            store.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_a_settings_file_nested_too_deep_is_one_line_and_nothing_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, keys = tmp_path / "county", tmp_path / "offline"
    assert county("updates", "init", "--data", str(data), "--root-keys", str(keys)) == 0
    capsys.readouterr()
    deep = tmp_path / "deep.toml"
    deep.write_text("[meals]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    with cu.CountyRepository(data) as repo:
        before = repo.timestamp().signed.version
    assert county("publish", "settings", "--data", str(data), "--all", str(deep)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing published" in err
    with cu.CountyRepository(data) as repo:
        assert repo.timestamp().signed.version == before
