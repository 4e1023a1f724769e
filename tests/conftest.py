"""What every test module shares: one way to wait, the canteen fixtures, one browser.

It owns `wait_for` (poll a condition until it holds, never a fixed sleep), the
fixtures that several modules set up the same way (a running county server, a card
reader on a pty, a screen over a test terminal, a checkout canteen with its lists),
one throwaway PostgreSQL cluster per test process (tests/pgkit.py) with a fresh database
per test, and one headless Chromium per test process (Debian's /usr/bin/chromium driven by
Playwright). It never downloads a browser (`playwright install` is not used) and never
starts anything a test did not ask for: each fixture is built only when requested.

Test modules import `wait_for` and the constants from here (`from conftest import ...`);
the helpers that build things live in the kits beside it (canteenkit, countykit,
daemonkit, displaykit, updateskit).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from canteenkit import Canteen
from countykit import County, make_county
from daemonkit import ReaderPty
from displaykit import Kit
from pgkit import Cluster

from terminal import trust

WAIT_S = 30.0  # long enough for a loaded 2-core machine; a passing test never waits it out

# Property tests: scripts/test.sh's default step (-m "not slow") runs them with a fifth of their
# examples (--hypothesis-profile=quick); its second step and a plain `pytest` run every one.
hypothesis.settings.register_profile("quick", max_examples=20)


def examples(n: int) -> int:
    """A property test's example count: ``n`` under hypothesis's default profile (100
    examples), scaled by the profile in force (a fifth under "quick"), at least min(n, 5)."""
    return max(min(n, 5), n * hypothesis.settings.default.max_examples // 100)


def wait_for(
    predicate: Callable[[], object],
    timeout_s: float = WAIT_S,
    what: str = "",
    *,
    every_s: float = 0.02,
) -> bool:
    """Poll until ``predicate()`` is true and return True; fail the test after ``timeout_s``.

    A predicate that raises OSError (a socket not listening yet, a file not written yet)
    counts as not yet; the last such error is named in the failure.
    """
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while True:
        try:
            if predicate():
                return True
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            why = f" (last error: {last})" if last is not None else ""
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}{why}")
        time.sleep(every_s)


def listening(host: str, port: int) -> bool:
    """True when something accepts TCP connections on (host, port)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


ROOT = Path(__file__).resolve().parent.parent


def run_terminal(
    *args: str, stdin: str | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`canteen-terminal ARGS` in a child process of this checkout (hw-sim importable)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "hw-sim"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", "terminal.commands.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def run_script_env(checkout: Path, run: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The environment for scripts/run-terminal.sh of ``checkout`` with its run folder ``run``,
    no setup step, and free ports for the screen, camera and county; and those ports."""
    ports = {"screen": free_port(), "camera": free_port(), "county": free_port()}
    env = {
        **os.environ,
        "CANTEEN_SETUP": "skip",
        "PYTHON": sys.executable,
        "PYTHONPATH": f"{checkout}{os.pathsep}{checkout / 'hw-sim'}",
        "CANTEEN_RUN": str(run),
        "CANTEEN_SCREEN_PORT": str(ports["screen"]),
        "CANTEEN_CAMERA_PORT": str(ports["camera"]),
        "CANTEEN_COUNTY_PORT": str(ports["county"]),
    }
    return env, ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the browser ----

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright's own browsers are never fetched
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
SMALL = {"width": 800, "height": 480}  # the 7-inch Pi screen
LARGE = {"width": 1024, "height": 600}
# Screenshots for a person to look at; CI keeps this directory.
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


def shot(page: Any, name: str, folder: str = "display") -> None:
    """Save a screenshot of ``page`` as ARTIFACTS/<folder>/<name>.png."""
    (ARTIFACTS / folder).mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / folder / f"{name}.png"))


class Browser:
    """The session's Chromium, seen by one test: pages and contexts it opens are closed
    when the test ends, so one test's page never outlives it."""

    def __init__(self, chromium: Any) -> None:
        self._chromium = chromium
        self._opened: list[Any] = []

    def new_page(self, **options: Any) -> Any:
        page = self._chromium.new_page(**options)
        self._opened.append(page)
        return page

    def new_context(self, **options: Any) -> Any:
        context = self._chromium.new_context(**options)
        self._opened.append(context)
        return context

    def close(self) -> None:
        for thing in reversed(self._opened):
            with contextlib.suppress(Exception):  # already closed, or the browser went away
                thing.close()
        self._opened.clear()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for this test process; skips when it or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium fonts-noto-cjk")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def browser(chromium: Any) -> Iterator[Browser]:
    b = Browser(chromium)
    yield b
    b.close()


@pytest.fixture
def maybe_browser(request: pytest.FixtureRequest) -> Iterator[Browser | None]:
    """The browser where Chromium and Playwright are installed, else None: for tests whose
    screen check is one part among others."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        yield None
        return
    if not CHROMIUM.exists():
        yield None
        return
    b = Browser(request.getfixturevalue("chromium"))
    yield b
    b.close()


# ---- the canteen fixtures ----


@pytest.fixture
def county(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[County]:
    """A county (its CA in tmp_path/county) with its server running on a free port.

    Its database is the SQLite file in its data directory, or, for a test marked
    ``countykit.ON_EACH_BACKEND`` (parametrised indirectly over "sqlite" and
    "postgresql"), once that and once a fresh PostgreSQL database at the migrations' head.
    """
    url = None
    if getattr(request, "param", "sqlite") == "postgresql":
        url = str(request.getfixturevalue("pg_county_url"))
    c = make_county(tmp_path, database_url=url).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def reader() -> Iterator[ReaderPty]:
    """A card reader on a pty: the daemon opens ``reader.path``, the test swipes."""
    pty = ReaderPty()
    yield pty
    pty.close()


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    """A screen server over a test terminal at lunch (tests/displaykit.py)."""
    k = Kit(tmp_path / "state")
    yield k
    k.close()


@pytest.fixture
def canteen_cards() -> list[trust.RosterCard]:
    """The roster of the `canteen` fixture; a module overrides this to add its cards."""
    return []


@pytest.fixture
def canteen(tmp_path: Path, canteen_cards: list[trust.RosterCard]) -> Iterator[Canteen]:
    """A terminal's state with the test issuer's lists, opened like the daemon would
    (tests/canteenkit.py)."""
    place = Canteen(tmp_path / "state")
    place.install(cards=canteen_cards)
    yield place
    place.close()


# ---- PostgreSQL ----


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """This test process's PostgreSQL cluster (tests/pgkit.py), made the first time a test
    asks for it; each xdist worker has its own. Stopped and removed when the session ends,
    whatever happened in it."""
    cluster = Cluster()
    try:
        cluster.make()
        yield cluster
    finally:
        cluster.remove()


_pg_names = itertools.count(1)


@contextlib.contextmanager
def _test_database(
    cluster: Cluster, request: pytest.FixtureRequest, template: str | None = None
) -> Iterator[str]:
    """A database named after the test (and this process), created, yielded as a URL,
    then dropped whatever the test left connected to it."""
    if not cluster.running():
        cluster.start()  # a test before this one stopped it and failed
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    name = f"t{os.getpid()}_{next(_pg_names)}_{stem}"
    url = cluster.create_database(name, template)
    try:
        yield url
    finally:
        if not cluster.running():
            cluster.start()
        cluster.drop_database(name)


@pytest.fixture
def pg_url(pg_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database for this test, dropped after it."""
    with _test_database(pg_cluster, request) as url:
        yield url


@pytest.fixture(scope="session")
def pg_county_template(pg_cluster: Cluster) -> str:
    """A database brought to the county migrations' head once per test process (as
    `canteen-county db upgrade` does), the template of each test's county database: a
    county server refuses a PostgreSQL database behind its migrations, and copying a
    migrated one is quicker than migrating each."""
    from county.db import Database
    from county.db.migrations import upgrade

    name = "county_template"
    db = Database(pg_cluster.create_database(name))
    try:
        upgrade(db)
    finally:
        db.close()  # a template must have no connection when it is copied
    return name


@pytest.fixture
def pg_county_url(
    pg_cluster: Cluster, pg_county_template: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The URL of a new PostgreSQL county database at the migrations' head, for this test."""
    with _test_database(pg_cluster, request, pg_county_template) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def county_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A county database URL, once per backend (ids `sqlite` and `postgresql`, so `-k sqlite`
    or `-k postgresql` picks one): a SQLite file in tmp_path (the county makes its tables
    when it opens it), or a fresh PostgreSQL database at the migrations' head
    (pg_county_url). The cluster starts only for the postgresql case."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'county-db' / 'county.sqlite'}"
    return str(request.getfixturevalue("pg_county_url"))
