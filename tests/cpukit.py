"""A pytest plugin that notes each test's CPU time beside its wall time (for bench work on
the suite's own speed, docs/architecture.md "The test suite's time"), never loaded by default.

    PYTHONPATH=tests .venv/bin/python -m pytest -p cpukit --cpu-report=DIR -n 2 -m "not slow"

Each test process writes DIR/<worker>.tsv: test id, phase (setup, call, teardown), wall
seconds, CPU seconds of the test process, and CPU seconds of its child processes that ended
during the phase (a `canteen-terminal` run, a county server stopped by the test). Threads of
the test process (servers started in-process) count as the process's own. A PostgreSQL
cluster or a Chromium the session started is counted when it ends, in the phase that stops it.
`python tests/cpukit.py DIR` sums the files: per test file and the slowest tests by CPU.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-report", metavar="DIR", help="write each test's CPU time to DIR")


class _Recorder:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.out = (folder / f"{worker}.tsv").open("a", encoding="utf-8")

    def _phase(self, item: pytest.Item, phase: str) -> Generator[None, Any, Any]:
        wall, (own, kids) = time.monotonic(), _cpu()
        try:
            return (yield)
        finally:
            own2, kids2 = _cpu()
            row = (item.nodeid, phase, time.monotonic() - wall, own2 - own, kids2 - kids)
            self.out.write("{}\t{}\t{:.3f}\t{:.3f}\t{:.3f}\n".format(*row))
            self.out.flush()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
        return (yield from self._phase(item, "setup"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        return (yield from self._phase(item, "call"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, Any]:
        return (yield from self._phase(item, "teardown"))


def pytest_configure(config: pytest.Config) -> None:
    folder = config.getoption("--cpu-report")
    # Under xdist the workers run the tests; the controller only collects their reports.
    controller = not hasattr(config, "workerinput") and bool(config.getoption("numprocesses", 0))
    if folder and not controller:
        config.pluginmanager.register(_Recorder(Path(folder)), "cpukit-recorder")


def summarise(folder: Path, top: int = 40) -> str:
    """Per test file and per test (all phases): wall, own CPU and children's CPU, by CPU."""
    by_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    by_test: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for tsv in sorted(folder.glob("*.tsv")):
        for line in tsv.read_text(encoding="utf-8").splitlines():
            nodeid, _phase, wall, own, kids = line.split("\t")
            for table, key in ((by_file, nodeid.split("::")[0]), (by_test, nodeid)):
                row = table[key]
                row[0] += float(wall)
                row[1] += float(own)
                row[2] += float(kids)
    lines = []
    total = [sum(r[i] for r in by_file.values()) for i in range(3)]
    wall, own, kids = total
    lines.append(
        f"total: wall {wall:.1f} s, CPU {own + kids:.1f} s (own {own:.1f}, children {kids:.1f})"
    )
    for title, table, n in (("files", by_file, top), ("tests", by_test, top)):
        lines.append(f"\n{title} by CPU (wall, CPU, own, children):")
        ranked = sorted(table.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))
        for key, (wall, own, kids) in ranked[:n]:
            lines.append(f"{wall:7.1f} {own + kids:7.1f} {own:7.1f} {kids:7.1f}  {key}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 40))
