"""The decision worker's checker process (terminal/service/checker.py): a real spawned process
checks the signatures of waiting codes; its answers are exactly the worker's own; a
process that dies is given up with one log line and the worker goes on alone."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
from hwsim.wallet import Issuer, key_from_seed, make_wallet

from protocol import tokens
from protocol.tokens import TokenRejected, verify_presentation
from terminal.service.checker import Checker

NOW = 1_790_000_000
ISSUER = Issuer("hn-checker", key_from_seed("checker-test-issuer"))


class Ring:
    def __init__(self) -> None:
        self.key = ISSUER.issuer_key()

    def issuer_keys(self, kid: bytes) -> list[tokens.IssuerKey]:
        return [self.key] if kid == self.key.kid else []

    def issuer_key_revoked(self, public_key: bytes) -> bool:
        return False


def codes(prefix: str, n: int) -> list[str]:
    return [
        make_wallet(ISSUER, f"{prefix}{i}", "u", "n", now=NOW - 100).draw(NOW) for i in range(n)
    ]


def ready(checker: Checker) -> None:
    deadline = time.monotonic() + 60
    while not checker.ready():
        assert time.monotonic() < deadline, "the checker process did not start"
        assert not checker.given_up
        time.sleep(0.02)


def test_answers_from_the_process_are_the_workers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    checker = Checker()
    try:
        ready(checker)
        texts = codes("A", 20)
        forged = texts[0][:-8] + ("AAAAAAAA" if not texts[0].endswith("AAAAAAAA") else "BBBBBBBB")
        tokens._verified.clear()
        checker.submit([*texts, forged], [ISSUER.issuer_key()])
        deadline = time.monotonic() + 30
        while not all(t.future.done() for t in checker._open):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for text in [*texts, forged]:
            checker.claim(text)
        assert (checker.checked_ahead, checker.taken_back, checker.given_up) == (21, 0, False)
        ahead = set(tokens._verified)
        assert len(ahead) == 40  # 20 codes x 2; the forgery adds only the first credential
        # What the worker finds by itself, in a fresh memo, is the same set of signatures.
        tokens._verified.clear()
        ring = Ring()
        for text in texts:
            verify_presentation(text, NOW, ring)
        with pytest.raises(TokenRejected):
            verify_presentation(forged, NOW, ring)
        assert ahead == set(tokens._verified)
    finally:
        checker.stop()


def test_a_process_that_dies_is_given_up_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    checker = Checker()
    try:
        ready(checker)
        pool = checker._pool
        assert pool is not None
        for pid in list(pool._processes):  # the one child
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        texts = codes("B", 4)
        with caplog.at_level(logging.WARNING, logger="terminal.service.checker"):
            checker.submit(texts, [ISSUER.issuer_key()])
            for text in texts:
                checker.claim(text)
            assert checker.given_up and not checker.ready()
            checker.submit(texts, [ISSUER.issuer_key()])  # nothing happens any more
            for text in texts:
                checker.claim(text)
        lines = [r.getMessage() for r in caplog.records if r.name == "terminal.service.checker"]
        assert len(lines) == 1 and "checks every code itself" in lines[0]
        ring = Ring()
        assert [verify_presentation(t, NOW, ring).sub for t in texts] == [f"B{i}" for i in range(4)]
    finally:
        checker.stop()


def test_a_hung_process_is_given_up_and_ended() -> None:
    checker = Checker()
    try:
        ready(checker)
        pool = checker._pool
        assert pool is not None
        children = list(pool._processes.values())
        for child in children:
            os.kill(child.pid, signal.SIGSTOP)  # hangs, as a wedged process would
        texts = codes("H", 2)
        checker.submit(texts, [ISSUER.issuer_key()])
        deadline = time.monotonic() + 10
        while not all(t.future.running() for t in checker._open):  # handed to the child
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        for text in texts:
            checker.claim(text)
        assert checker.given_up
        assert time.monotonic() - started < 10  # the worker waited about WAIT_S, once
        for child in children:
            child.join(10)
            assert not child.is_alive()
        ring = Ring()
        assert verify_presentation(texts[0], NOW, ring).sub == "H0"
    finally:
        checker.stop()
