"""Console bench (issue 16): each console page over two generated years of a county.

Run:  PYTHONPATH=.:hw-sim .venv/bin/python bench/console.py [--months 24] [--canteens 80]
          [--cadres 9000] [--seed 16] [--repeat 20] [--keep DIR] [--json FILE]

Target (issue 16): p95 < 1 s per page on this 2-core machine, over two years of a county
(``--months 24 --canteens 80 --cadres 9000``: about 5.08 million entries) on PostgreSQL.

The county. A throwaway PostgreSQL cluster (tests/pgkit.py's, with the memory of a small
dedicated server, as bench/county_scale.py has it), brought to the schema's head by
``canteen-county db upgrade``, then filled by ``hw-sim county history ... --placeholder-codes``
(no page re-verifies a phone code; signing them would add ten minutes). That load takes
about six minutes on a quiet machine and longer on a busy one, so ``--keep DIR`` keeps the
cluster and the county's data directory in DIR: a later run with the same options starts
that cluster again and skips the load (DIR/ready.json says which options it holds; a DIR
holding other options, or a load that never finished, is made again).

The console. ``canteen-county console`` runs as a subprocess on 127.0.0.1, as a county
runs it: its own process, its own interpreter lock and its own uvicorn, so a figure is
what an officer's browser waits for (the HTTP round trip, the queries, the rendering)
and the bench's client never shares a core's interpreter with the server it times. A
bench user (admin, so every page opens) is added to the database with a password, and
the bench logs in through the login form like a browser (the form's token cookie, the
POST, the session cookie).

The walk. Each page route with realistic values (``plan_pages``): the default period
(the last three months), a year, a quarter, a canteen, an agency, a township, a
terminal, and the drill-downs a user clicks, taken from the links of the rendered pages
(so they are exactly what the console offers). Pages that the console's navigation
shows and the table does not name (a page added after this bench) are walked with their
default values, so every page is measured.

The figures, per page:
- ``first``: the first view of its default URL in a fresh console process (the
  inspection pages' per-query memo is empty; PostgreSQL's cache is whatever the load and
  earlier pages left);
- ``p50``/``p95`` of ``--repeat`` further views of that URL (the memo answers the
  inspection pages here: what an officer who comes back sees);
- ``cold p95``: each variant URL (other query values) viewed once, for the first time,
  so the memo hides none of the database's work; with the first view among them.
A page PASSes when both its repeated p95 and its cold p95 are under the target. The load
average is printed beside the figures, as the other benches do, since this machine is
shared. A progress bar shows on a terminal; nothing of it when the output is a file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
# Appended, not put first: a test imports this module, and bench/ holds names (sync.py,
# core.py) that must not hide anything of the test process.
sys.path += [str(p) for p in (ROOT, ROOT / "hw-sim", ROOT / "bench") if str(p) not in sys.path]

import requests  # noqa: E402
from figures import finish, report  # noqa: E402
from tqdm import tqdm  # noqa: E402

TARGET_S = 1.0  # p95 per page (issue 16)
USER = "bench-admin"
PASSWORD = "bench-console-Pw7q"
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}")


def on_terminal() -> bool:
    return sys.stderr.isatty()


def say(text: str) -> None:
    print(text, flush=True)


def quantile(xs: Sequence[float], q: float) -> float:
    """The q-quantile by the nearest rank (p95 of 20 views is the 19th)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, -(-int(q * 1000) * len(s) // 1000) - 1))]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --- the county: a PostgreSQL cluster with the generated history ----------------------------


@dataclass(frozen=True)
class History:
    months: int = 24
    canteens: int = 80
    cadres: int = 9000
    seed: int = 16
    start: dt.date = dt.date(2024, 12, 1)

    def args(self) -> list[str]:
        return [
            "--months", str(self.months), "--canteens", str(self.canteens),
            "--cadres", str(self.cadres), "--seed", str(self.seed),
            "--start", self.start.isoformat(), "--placeholder-codes",
        ]  # fmt: skip

    def key(self) -> dict[str, Any]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}

    @property
    def end(self) -> dt.date:
        """The last day of the history."""
        m = self.start.month - 1 + self.months
        return dt.date(self.start.year + m // 12, m % 12 + 1, 1) - dt.timedelta(days=1)


def run_cli(module: str, *args: str, quiet: bool = True) -> str:
    """``python -m MODULE ARGS`` from this checkout; its standard output. Its standard
    error (a progress bar) goes to ours unless ``quiet``."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=7200,
    )
    if done.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args)}: {(done.stderr or '').strip()}")
    return done.stdout


def cluster_in(folder: Path) -> Any:
    """A pgkit cluster object whose files live in ``folder`` (kept across runs), not in a
    fresh folder under /tmp that the next test run's sweep may remove."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pgkit

    cluster = pgkit.Cluster()
    shutil.rmtree(cluster.dir, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    cluster.dir, cluster.data, cluster.log = folder, folder / "data", folder / "postgresql.log"
    if cluster.as_root:
        import pwd

        entry = pwd.getpwnam(pgkit.UNPRIVILEGED)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    os.chmod(folder, 0o700)
    return cluster


def tune(cluster: Any) -> None:
    """A small dedicated server's memory instead of a test's (bench/county_scale.py's)."""
    with (cluster.data / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# bench/console.py: a small dedicated server, not a test's\n"
            "shared_buffers = '1GB'\n"
            "effective_cache_size = '4GB'\n"
            "work_mem = '64MB'\n"
            "maintenance_work_mem = '512MB'\n"
            "max_wal_size = '4GB'\n"
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_county(work: Path, history: History) -> tuple[Any, str, Path]:
    """The cluster (running), the county database's URL and its data directory in
    ``work``: the ones a run before left there for the same options, else new ones."""
    ready = work / "ready.json"
    data = work / "county"
    if ready.is_file() and json.loads(ready.read_text()) == history.key():
        cluster = cluster_in(work / "pg")
        cluster.port = free_port()
        cluster._set_port()
        cluster.start()
        say(f"reusing the county in {work} ({history.months} months, kept by --keep)")
        return cluster, cluster.url("county"), data
    for old in (ready, work / "pg", data):
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    cluster = cluster_in(work / "pg")
    cluster.make()
    tune(cluster)
    cluster.restart()
    url = cluster.create_database("county")
    run_cli("county.cli", "db", "upgrade", "--database", url)
    began = time.monotonic()
    say(f"loading {history.months} months of {history.canteens} canteens (load {load_average()})")
    out = run_cli(
        "hwsim.cli", "county", "history", "--data", str(data), "--database", url,
        *history.args(), quiet=False,
    )  # fmt: skip
    say(f"  {out.strip()}  [{time.monotonic() - began:.0f} s, load {load_average()}]")
    ready.write_text(json.dumps(history.key()))
    return cluster, url, data


# --- the console and its user ---------------------------------------------------------------


def add_user(database_url: str, data: Path) -> None:
    """The bench's admin with a password of its own (made again if a kept county has it)."""
    from county.console import users
    from county.db import Database
    from county.db.engine import database_url as url_of

    db = Database(url_of(database_url, data))
    try:
        with db.write() as conn:
            # A kept county has the user from an earlier run: its password is set again.
            with contextlib.suppress(users.UserError):
                users.add_user(conn, USER, "admin", int(time.time() * 1000))
            users.set_password(conn, USER, PASSWORD)
    finally:
        db.close()


class ConsoleProcess:
    """``canteen-county console`` on 127.0.0.1 on a free port, in a subprocess."""

    def __init__(self, data: Path, database_url: str | None) -> None:
        argv = [sys.executable, "-m", "county.cli", "console", "--data", str(data),
                "--port", "0"]  # fmt: skip
        if database_url:
            argv += ["--database", database_url]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if " on " not in first:
            self.stop()
            raise SystemExit(f"canteen-county console did not start: {first.strip()!r}")
        self.url = first.split(" on ", 1)[1].split()[0].removesuffix("/console")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def log_in(base: str, name: str = USER, password: str = PASSWORD) -> requests.Session:
    """A requests session logged in through the login form, as a browser does."""
    s = requests.Session()
    form = s.get(f"{base}/console/login", timeout=60)
    token = re.search(r'name="csrf"\s+value="([^"]+)"', form.text)
    if form.status_code != 200 or token is None:
        raise SystemExit(f"the console's login page: HTTP {form.status_code}, no form token")
    done = s.post(
        f"{base}/console/login",
        data={"name": name, "password": password, "csrf": html.unescape(token.group(1))},
        allow_redirects=False,
        timeout=60,
    )
    if done.status_code != 303:
        raise SystemExit(f"logging in as {name}: HTTP {done.status_code}")
    return s


# --- which pages, with which values ---------------------------------------------------------


@dataclass
class Page:
    """One page route: its default URL and the variants (other query values)."""

    name: str
    default: str
    variants: list[str] = field(default_factory=list)
    # Filled by the measuring loop: seconds.
    first: float = float("nan")
    repeated: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def verdict(self) -> bool:
        return (
            not self.errors
            and quantile(self.repeated, 0.95) < TARGET_S
            and quantile(self.cold, 0.95) < TARGET_S
        )


def url(path: str, **query: str) -> str:
    return f"{path}?{urlencode(query)}" if query else path


def links(page_html: str, prefix: str) -> list[str]:
    """The distinct hrefs of a page that start with ``prefix``, in their order."""
    found: list[str] = []
    for raw in re.findall(r'href="([^"]+)"', page_html):
        href = html.unescape(raw)
        if href.startswith(prefix) and href not in found:
            found.append(href)
    return found


def months_back(day: dt.date, n: int) -> dt.date:
    """The first day of the month ``n`` months before ``day``'s."""
    m = day.year * 12 + day.month - 1 - n
    return dt.date(m // 12, m % 12 + 1, 1)


def periods(end: dt.date, start: dt.date) -> dict[str, tuple[str, str]]:
    """Realistic periods of the history (each within it): its last twelve months, its
    last quarter, its last month and, when there is one, the year before the last."""
    year_from = max(start, months_back(end, 11))
    found = {
        "year": (year_from, end),
        "quarter": (max(start, months_back(end, 2)), end),
        "month": (end.replace(day=1), end),
    }
    if year_from > start:
        found["year before"] = (max(start, months_back(end, 23)), year_from - dt.timedelta(1))
    return {k: (a.isoformat(), b.isoformat()) for k, (a, b) in found.items()}


def county_values(database_url: str | None, data: Path) -> dict[str, list[str]]:
    """Canteens, terminals and agencies of the county from its database: every canteen
    and terminal, and the agencies whose cadres ate, the busiest first (the ones an
    officer looks at)."""
    from sqlalchemy import text

    from county.db import Database
    from county.db.engine import database_url as url_of

    db = Database(url_of(database_url, data))
    try:
        with db.read() as conn:

            def column(sql: str) -> list[str]:
                return [str(r[0]) for r in conn.execute(text(sql))]

            return {
                "canteen": column("SELECT DISTINCT canteen FROM terminals ORDER BY canteen"),
                "terminal": column("SELECT terminal_id FROM terminals ORDER BY terminal_id"),
                "unit": column(
                    "SELECT unit FROM entries WHERE kind = 'sale' AND unit IS NOT NULL"
                    " GROUP BY unit ORDER BY count(*) DESC, unit"
                ),
            }
    finally:
        db.close()


def spread(values: Sequence[str], n: int) -> list[str]:
    """``n`` values spread over the list (first, last and between)."""
    if len(values) <= n:
        return list(values)
    step = (len(values) - 1) / max(1, n - 1)
    return [values[round(i * step)] for i in range(n)]


# Links of the navigation that are no page to measure.
NOT_PAGES = ("/console/static", "/console/login", "/console/logout")
# The pages this bench knows, each with how its variants are made. Others found in the
# console's navigation are walked with their default URL alone.
KNOWN = (
    "/console",
    "/console/fleet",
    "/console/inspection",
    "/console/inspection/spending",
    "/console/inspection/anomalies",
    "/console/replacement",
    "/console/users",
    "/console/audit",
    "/console/alarms",
    "/console/meals",
    "/console/meals/entries",
    "/console/alarms/",
)


def after(pages: list[Page], name: str, page: Page) -> None:
    """Put a drill-down right after the page it is opened from, as an officer walks
    (while that page's figures are still in the console's memo)."""
    at = next((i + 1 for i, p in enumerate(pages) if p.name == name), len(pages))
    pages.insert(at, page)


def plan_pages(
    get: Callable[[str], str],
    values: dict[str, list[str]],
    end: dt.date,
    start: dt.date,
    variants: int = 6,
    limit: int | None = None,
) -> list[Page]:
    """Every page route with realistic query values. ``get(path)`` fetches a page's HTML
    (used to find the console's navigation and the drill-down links it offers).
    ``variants`` canteens, agencies, terminals and drill-downs are taken; ``limit``, when
    given, keeps at most that many variants of each page (a quick walk)."""
    p = periods(end, start)
    year, quarter, month = p["year"], p["quarter"], p["month"]
    spans = [p[k] for k in ("year", "quarter", "month", "year before") if k in p]
    canteens = spread(values["canteen"], variants)
    units = values["unit"][:variants]
    terminals = spread(values["terminal"], variants)

    def period(path: str, span: tuple[str, str], **more: str) -> str:
        return url(path, **{"from": span[0], "to": span[1]}, **more)

    pages = [
        Page("home", "/console"),
        Page(
            "fleet",
            "/console/fleet",
            [
                url("/console/fleet", sort="canteen"),
                url("/console/fleet", state="silent"),
                url("/console/fleet", retired="1"),
                url("/console/fleet", sort="last_seen", desc="1"),
            ]
            + [url("/console/fleet", canteen=c) for c in canteens[:3]],
        ),
        Page(
            "fleet/ID",
            f"/console/fleet/{terminals[0]}",
            [f"/console/fleet/{t}" for t in terminals[1:]],
        ),
        Page(
            "inspection batches",
            "/console/inspection",
            [period("/console/inspection", s) for s in spans]
            + [period("/console/inspection", year, canteen=c) for c in canteens[:2]]
            + [period("/console/inspection", year, unit=u) for u in units[:2]]
            + [period("/console/inspection", quarter, min_people="6", window_min="30")],
        ),
        Page(
            "inspection spending",
            "/console/inspection/spending",
            [
                period("/console/inspection/spending", s, by=b)
                for s in (year, quarter, month)
                for b in ("township", "agency")
            ]
            + [period("/console/inspection/spending", year, canteen=c) for c in canteens[:2]],
        ),
        Page(
            "inspection anomalies",
            "/console/inspection/anomalies",
            [period("/console/inspection/anomalies", s) for s in spans]
            + [
                period(
                    "/console/inspection/anomalies", quarter, repeat_batches="2", repeat_days="60"
                )
            ],
        ),
        Page("replacement", "/console/replacement"),
        Page("users", "/console/users"),
        Page(
            "audit",
            "/console/audit",
            [
                url("/console/audit", user=USER),
                url("/console/audit", action="login"),
                url("/console/audit", **{"from": year[0], "to": year[1]}),
            ],
        ),
        Page(
            "alarms",
            "/console/alarms",
            [
                url("/console/alarms", state="open"),
                url("/console/alarms", what="conflict"),
                url("/console/alarms", state="withdrawn"),
            ]
            + [url("/console/alarms", terminal=t) for t in terminals[:2]],
        ),
        Page(
            "meals",
            "/console/meals",
            [period("/console/meals", s) for s in (year, quarter, month)]
            + [period("/console/meals", quarter, canteen=c) for c in canteens[:2]]
            + [period("/console/meals", month, canteen=canteens[-1], by="day")],
        ),
    ]
    # The drill-downs: the entries behind the figures, as the pages link them (the year's
    # batches and spending: a batch, a canteen's batches, a month's total, a year before).
    drill: list[str] = []
    for source in (period("/console/inspection", year),
                   period("/console/inspection/spending", year, by="agency"),
                   period("/console/inspection/spending", quarter, by="township")):  # fmt: skip
        drill += links(get(source), "/console/inspection/entries")
    drill = spread(list(dict.fromkeys(drill)), variants + 1)
    if drill:
        after(pages, "inspection spending", Page("inspection entries", drill[0], drill[1:]))
    # The meals' drill-downs (a canteen's meals of a window, of a weekday) and a review
    # item of the alarms page (when the county has any), as those pages link them.
    for name, sources, prefix, parent in (
        ("meals entries", [period("/console/meals", quarter),
                           period("/console/meals", quarter, canteen=canteens[0])],
         "/console/meals/entries", "meals"),
        ("alarms item", ["/console/alarms"], "/console/alarms/", "alarms"),
    ):  # fmt: skip
        found = [link for source in sources for link in links(get(source), prefix)]
        found = spread(list(dict.fromkeys(found)), variants + 1)
        if found:
            after(pages, parent, Page(name, found[0], found[1:]))
    # Pages the navigation shows that the table above does not know (added since).
    nav = links(get("/console"), "/console")
    known = {urlsplit(p.default).path for p in pages} | set(KNOWN)
    for href in nav:
        path = urlsplit(href).path
        if path not in known and not path.startswith(NOT_PAGES):
            known.add(path)
            pages.append(Page(path.removeprefix("/console/"), href))
    if limit is not None:
        for page in pages:
            del page.variants[limit:]
    return pages


# --- the measuring loop ---------------------------------------------------------------------


def timed_get(session: requests.Session, base: str, path: str) -> tuple[float, int, str]:
    """Seconds to the whole answer (the body read), its status and its text."""
    began = time.perf_counter()
    answer = session.get(base + path, timeout=300, allow_redirects=False)
    body = answer.text
    return time.perf_counter() - began, answer.status_code, body


def measure(
    session: requests.Session,
    base: str,
    pages: list[Page],
    repeat: int,
    show_slow: float | None = None,
) -> list[Page]:
    """For each page: the first view of its default URL, ``repeat`` views more, then each
    variant once. A page whose default URL answers 404 is not there (a page not yet
    written): it is dropped. Any other status but 200 is an error of the page. A variant
    that took ``show_slow`` seconds or more is named as it is measured."""
    present = []
    total = sum(1 + repeat + len(p.variants) for p in pages)
    with tqdm(total=total, desc="console pages", unit="view", disable=not on_terminal(),
              leave=False) as bar:  # fmt: skip
        for page in pages:
            took, status, _ = timed_get(session, base, page.default)
            bar.update(1)
            if status == 404:
                bar.update(repeat + len(page.variants))
                continue
            present.append(page)
            page.first = took
            page.cold.append(took)
            if status != 200:
                page.errors.append(f"{page.default}: HTTP {status}")
            for _ in range(repeat):
                took, status, _ = timed_get(session, base, page.default)
                page.repeated.append(took)
                bar.update(1)
            for variant in page.variants:
                took, status, _ = timed_get(session, base, variant)
                if status == 200:
                    page.cold.append(took)
                    if show_slow is not None and took >= show_slow:
                        say(f"slow: {took:.3f} s {variant}")
                else:
                    page.errors.append(f"{variant}: HTTP {status}")
                bar.update(1)
    return present


def print_figures(pages: Iterable[Page], label: str) -> None:
    load = load_average()
    say(f"\n{label}  (load average {load}; target p95 < {TARGET_S:g} s per page)")
    say(f"{'page':<24}{'first':>8}{'p50':>8}{'p95':>8}{'cold p95':>10}{'views':>7}  verdict")
    for p in pages:
        ok = p.verdict()
        say(
            f"{p.name:<24}{p.first:>8.3f}{quantile(p.repeated, 0.5):>8.3f}"
            f"{quantile(p.repeated, 0.95):>8.3f}{quantile(p.cold, 0.95):>10.3f}"
            f"{len(p.repeated) + len(p.cold):>7}  {'PASS' if ok else 'MISS'}"
        )
        for error in p.errors[:3]:
            say(f"    error: {error}")
    for p in pages:
        worst = max([*p.repeated, *p.cold], default=float("nan"))
        report(
            f"console {p.name}: p95 of repeated and of cold views (worst of the two)",
            max(quantile(p.repeated, 0.95), quantile(p.cold, 0.95)),
            "s",
            f"first {p.first:.3f} s, worst {worst:.3f} s, load {load}",
            f"< {TARGET_S:g} s",
            p.verdict(),
        )


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--months", type=int, default=24, help="months of history (24)")
    ap.add_argument("--canteens", type=int, default=80, help="canteens (80)")
    ap.add_argument("--cadres", type=int, default=9000, help="cadres (9000)")
    ap.add_argument("--seed", type=int, default=16, help="the history's seed (16)")
    ap.add_argument("--repeat", type=int, default=20, help="repeated views a page (20)")
    ap.add_argument("--variants", type=int, default=6, help="canteens, agencies, ... (6)")
    ap.add_argument("--keep", metavar="DIR", help="keep (or reuse) the county in DIR")
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    ap.add_argument(
        "--show-slow", type=float, metavar="S", help="name each variant that took S seconds or more"
    )
    a = ap.parse_args(argv)
    if a.repeat < 1 or a.variants < 2:
        ap.error("--repeat must be at least 1 and --variants at least 2")
    # The history ends with the last whole month, so the pages' default period (the last
    # three months to today) holds data, as it does in a county in service.
    from hwsim.history import HistoryError, Options

    try:  # the history's own rules, checked before a cluster is made for it
        Options(months=a.months, canteens=a.canteens, cadres=a.cadres, seed=a.seed).check()
    except HistoryError as exc:
        ap.error(str(exc))
    start = months_back(dt.date.today(), a.months)
    history = History(a.months, a.canteens, a.cadres, a.seed, start)
    work = Path(a.keep).resolve() if a.keep else Path(tempfile.mkdtemp(prefix="console-bench-"))
    if work.exists() and not work.is_dir():
        ap.error(f"--keep {a.keep}: not a folder")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the cluster's owner (nobody, when we are root) passes through it
    say(f"bench/console.py: {history.months} months, {history.canteens} canteens, "
        f"{history.cadres} cadres, seed {history.seed}; load average {load_average()}")  # fmt: skip
    cluster = None
    console = None
    try:
        cluster, db_url, data = open_county(work, history)
        entries = cluster.psql("SELECT count(*) FROM entries", "county").strip()
        say(f"county: {int(entries):,} entries on PostgreSQL ({db_url})")
        add_user(db_url, data)
        values = county_values(db_url, data)
        # The first views must find an empty memo: plan (which reads pages for their
        # links) in a console process of its own, then measure in a fresh one.
        planner = ConsoleProcess(data, db_url)
        try:
            planning = log_in(planner.url)

            def get(path: str) -> str:
                return planning.get(planner.url + path, timeout=300).text

            pages = plan_pages(get, values, history.end, history.start, a.variants)
        finally:
            planner.stop()
        console = ConsoleProcess(data, db_url)
        session = log_in(console.url)
        present = measure(session, console.url, pages, a.repeat, a.show_slow)
        print_figures(present, f"console pages over {int(entries):,} entries")
        missing = [p.name for p in pages if p not in present]
        if missing:
            say(f"not in this console (404): {', '.join(missing)}")
    finally:
        if console is not None:
            console.stop()
        if cluster is not None:
            if a.keep:
                cluster.stop()
                say(f"county kept in {work} (--keep {a.keep} again to reuse it)")
            else:
                cluster.remove()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    finish(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
