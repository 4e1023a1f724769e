"""Terminal replacement through the console (issue 16): a real console server and a real
county server on 127.0.0.1 over one county, Debian's Chromium through Playwright.

An admin retires a terminal, registers its replacement (which provisions with the code
the page shows and syncs) and uploads the old device's recovery file, all in the browser;
the old certificate is then refused by the terminal API. Finance and the inspector see
the history and change nothing; a POST without CSRF, a file that does not verify and a
150 MB body are each refused and change nothing.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import shot
from consolekit import (  # noqa: F401
    Console,
    check_page,
    console_fixture,
    console_template_fixture,
    no_change,
    role_page_fixture,
)
from countykit import T0_MS, Terminal, local_chain, provision_terminal, server_chain, sync

from terminal import state
from terminal.ledger import load_or_create_signing_key
from terminal.ledger_recovery import export_recovery
from terminal.link.provision import provision

PAGE = "/console/replacement"


def post_as(term: Terminal, url: str) -> requests.Response:
    ident = term.identity
    return requests.post(
        url + "/v1/ledger",
        json={"entries": []},
        cert=(str(ident.cert_file), str(ident.key_file)),
        verify=str(ident.ca_file),
        timeout=30,
    )


def recovery_file(term: Terminal, out: Path) -> Path:
    with open(out, "w", encoding="utf-8") as f:
        export_recovery(term.ledger_path, f)
    return out


def csrf_of(s: requests.Session, url: str) -> str:
    r = s.get(url + PAGE)
    assert r.status_code == 200, r.text
    m = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert m, r.text
    return m.group(1)


@pytest.mark.slow
def test_retire_replace_and_recover_in_the_browser(
    tmp_path: Path, console: Console, role_page: Any
) -> None:
    # The county server reads the wall clock: so does the console here, or the code it
    # prints would have expired long ago for the server.
    console.clock.now = time.time_ns() // 1_000_000
    county = console.county.start()
    old = provision_terminal(county, tmp_path / "old", "t1", "c1")
    old.append_entries(20)
    sync(old)
    old.append_entries(7, start_ms=T0_MS + 60_000)  # sold offline, never uploaded
    held_before = len(server_chain(county.store, "t1"))

    page = role_page("admin", "en", PAGE)
    check_page(page)
    page.select_option("#form-retire select[name=terminal]", "t1")
    page.fill("#form-retire input[name=reason]", "water damage")
    page.click("#form-retire button[type=submit]")
    page.wait_for_selector("#done")
    assert "t1 is retired: water damage" in page.inner_text("#done")
    assert "water damage" in page.inner_text("#retired")
    refused = post_as(old, county.url)
    assert refused.status_code == 403 and "t1 was retired (water damage)" in refused.text

    page.select_option("#form-replace select[name=old]", "t1")
    page.click("#form-replace button[type=submit]")
    page.wait_for_selector("#code")
    code = page.inner_text("#code").strip()
    assert "c1-1 is registered at canteen c1 in place of t1" in page.inner_text("#done")
    check_page(page)
    shot(page, "replacement-code-1366x768-en", "console")
    paths = state.prepare(tmp_path / "new")
    key = load_or_create_signing_key(paths.key)
    identity = provision(paths.root, county.url, code, key.public_key().public_bytes_raw())
    new = Terminal(paths.root, "c1-1", identity)
    new.append_entries(3)
    sync(new)
    assert len(server_chain(county.store, "c1-1")) == 4

    file = recovery_file(old, tmp_path / "t1.jsonl")
    page.select_option("#form-recover select[name=terminal]", "t1")
    page.set_input_files("#form-recover input[type=file]", str(file))
    page.click("#form-recover button[type=submit]")
    page.wait_for_selector("#done")
    whole = local_chain(old.ledger_path)
    text = page.inner_text("#done")
    assert f"{len(whole) - held_before} new entries taken, {held_before} already held" in text
    assert server_chain(county.store, "t1") == whole
    history = page.inner_text("#history")
    for word in ("retired", "replaced", "ledger recovered"):
        assert word in history

    # The admin's page in Chinese, with its forms and tables, fits too.
    check_page(role_page("admin", "zh", PAGE))
    # The same page in Chinese, for the inspector: the history, no form.
    zh = role_page("inspector", "zh", PAGE)
    check_page(zh)
    assert zh.locator("form#form-retire").count() == 0
    assert "找回账本" in zh.inner_text("#history") and "water damage" in zh.inner_text("#retired")
    shot(zh, "replacement-inspector-1366x768-zh", "console")


def test_only_the_admin_changes_anything(console: Console) -> None:
    county = console.county.start()
    term = provision_terminal(county, console.county.data.parent / "t1", "t1", "c1")
    form = {"terminal": "t1", "reason": "test"}
    for role in ("inspector", "finance"):
        s = console.http(role)
        token = csrf_of(s, console.url)
        assert 'id="form-retire"' not in s.get(console.url + PAGE).text
        with no_change(console):
            for action, data in (
                ("retire", form),
                ("replace", {"old": "t1"}),
            ):
                r = s.post(console.url + f"{PAGE}/{action}", data={"csrf": token, **data})
                assert r.status_code == 403, (role, action, r.text)
            r = s.post(
                console.url + f"{PAGE}/recover",
                data={"csrf": token, "terminal": "t1"},
                files={"file": ("x.jsonl", b"{}\n")},
            )
            assert r.status_code == 403
    admin = console.http("admin")
    with no_change(console):
        for data in ({}, {"csrf": "forged"}):
            r = admin.post(console.url + f"{PAGE}/retire", data={**data, **form})
            assert r.status_code == 403, r.text
            r = admin.post(console.url + f"{PAGE}/replace", data={**data, "old": "t1"})
            assert r.status_code == 403, r.text
            r = admin.post(
                console.url + f"{PAGE}/recover",
                data={**data, "terminal": "t1"},
                files={"file": ("x.jsonl", b"{}\n")},
            )
            assert r.status_code == 403, r.text
    assert post_as(term, county.url).status_code == 200
    assert console.audit_rows("terminal.retire") == []


def test_a_file_that_does_not_verify_is_refused_on_the_page(
    tmp_path: Path, console: Console
) -> None:
    county = console.county.start()
    term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
    term.append_entries(10)
    file = recovery_file(term, tmp_path / "t1.jsonl")
    lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join([*lines[:4], *lines[5:]]), encoding="utf-8")
    s = console.http("admin")
    token = csrf_of(s, console.url)
    with no_change(console):
        r = s.post(
            console.url + f"{PAGE}/recover",
            data={"csrf": token, "terminal": "t1"},
            files={"file": ("bad.jsonl", bad.read_bytes())},
        )
        assert r.status_code == 400
        assert "recovery file refused, nothing taken: entry 4 is missing" in r.text, re.findall(
            r"id=.refused.>[^<]*", r.text
        )
        r = s.post(console.url + f"{PAGE}/recover", data={"csrf": token, "terminal": "t1"})
        assert r.status_code == 400 and 'id="refused"' in r.text
    assert console.audit_rows("terminal.recover") == []


def test_a_150_mb_upload_is_413_and_changes_nothing(console: Console) -> None:
    s = console.http("admin")
    token = csrf_of(s, console.url)
    cookie = "; ".join(f"{k}={v}" for k, v in s.cookies.items())
    host, port = console.server.host, console.server.port
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{token}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="terminal"\r\n\r\nt1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    length = 150 * 1000 * 1000
    with no_change(console):
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(
                (
                    f"POST {PAGE}/recover HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Cookie: {cookie}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    f"Content-Length: {length}\r\n\r\n"
                ).encode()
                + head
                + b"\0" * 65536
            )
            answer = sock.recv(65536).decode("latin-1")
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert console.audit_rows("terminal.recover") == []
