"""The decision worker's checker process: signatures of codes still waiting in the queue.

When cadres queue up faster than the decision worker commits, most of each decision's
time goes into two Ed25519 verifications (the credential's and the presentation's). A
thread cannot take them off the worker: measured on our two-core machine, a checking
thread beside the worker made both slower than doing everything in one thread (the
GIL hand-over between a thread holding it for Python work and one coming back from
OpenSSL). So the checks of waiting codes run in one separate process, started with
``spawn`` (the daemon has threads, so it never forks) on the first backlog, not at start.

What comes back is only the digests of signatures that verified
(``tokens.good_signatures``); ``tokens.remember_good_signatures`` puts them in the
worker's memo, and the worker still runs every check in the spec's order at the
decision's own time and trust. The worker never depends on the process: a chunk not
started when its turn comes is cancelled and checked by the worker itself; one being
checked is waited for (at most ``WAIT_S``); a process that dies or hangs is given up
for the rest of the run with one log line, and the worker checks everything itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from protocol import tokens
from protocol.tokens import IssuerKey

log = logging.getLogger(__name__)

CHUNK = 16  # codes per task: small enough that the worker seldom waits long for one
IN_FLIGHT = 4  # tasks handed over and not yet claimed, at most
WAIT_S = 1.0  # the longest the worker waits for a chunk being checked


@dataclass
class _Task:
    future: Future[list[bytes]]
    texts: list[str]
    applied: bool = field(default=False)


class Checker:
    """Checks the signatures of waiting codes in one child process. One decision worker
    owns it and calls it from its own thread only."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._warm: Future[int] | None = None
        self._by_text: dict[str, _Task] = {}
        self._open: list[_Task] = []
        self.given_up = False
        self.checked_ahead = 0  # codes whose signatures came from the process
        self.taken_back = 0  # codes the worker checked itself after cancelling their task

    def ready(self) -> bool:
        """True once the process is up; the first call starts it (in the background)."""
        if self.given_up:
            return False
        if self._pool is None:
            try:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn")
                )
                self._warm = self._pool.submit(int, 0)  # spawns the process now
            except (OSError, RuntimeError) as exc:
                self._give_up(f"cannot start: {exc}")
                return False
        warm = self._warm
        if warm is None or not warm.done():
            return False
        if warm.exception() is not None:
            self._give_up(f"failed to start: {warm.exception()}")
            return False
        return True

    def submit(self, texts: Iterable[str], keys: list[IssuerKey]) -> None:
        """Hand codes not handed over yet to the process, in order, a chunk per task."""
        pool = self._pool
        if pool is None or self.given_up:
            return
        # Tasks the process is done with no longer count, claimed or not; answers nobody
        # claimed (codes dropped on a full disk) are forgotten past a bound.
        self._open = [t for t in self._open if not t.future.done()]
        if len(self._by_text) > 512:
            self._by_text = {k: t for k, t in self._by_text.items() if not t.future.done()}
        fresh = [t for t in dict.fromkeys(texts) if t not in self._by_text]
        for i in range(0, len(fresh), CHUNK):
            if len(self._open) >= IN_FLIGHT:
                return
            chunk = fresh[i : i + CHUNK]
            try:
                future = pool.submit(tokens.good_signatures, chunk, keys)
            except RuntimeError as exc:  # the pool broke or was shut down
                self._give_up(str(exc))
                return
            task = _Task(future, chunk)
            self._open.append(task)
            for text in chunk:
                self._by_text[text] = task

    def claim(self, text: str) -> None:
        """Before the worker checks ``text``: put the process's answers for its chunk in
        the memo, waiting if the chunk is being checked, or take the chunk back."""
        task = self._by_text.pop(text, None)
        if task is None or task.applied:
            return
        if task.future.cancel():
            self.taken_back += len(task.texts)
            for other in task.texts:
                self._by_text.pop(other, None)
            return
        try:
            digests = task.future.result(timeout=WAIT_S)
        except FutureTimeout:
            self._give_up(f"no answer within {WAIT_S:g} s")
            return
        except Exception as exc:  # BrokenProcessPool, or a bug in the child
            self._give_up(f"failed: {exc}")
            return
        task.applied = True
        self.checked_ahead += len(task.texts)
        tokens.remember_good_signatures(digests)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _give_up(self, why: str) -> None:
        if not self.given_up:
            log.warning(
                "signature checker process %s; the decision worker checks every code itself",
                why,
            )
        self.given_up = True
        self._by_text.clear()
        self._open.clear()
        pool = self._pool
        if pool is not None:
            # A hung child would hold the pool's manager thread, and so the daemon's exit:
            # end it (it holds nothing but codes' signatures).
            for process in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    process.kill()
        self.stop()
