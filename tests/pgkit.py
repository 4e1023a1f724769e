"""A throwaway PostgreSQL cluster for the tests, from Debian's `postgresql` package.

This module owns the one real PostgreSQL server a test process uses: it finds the
server's programs, makes a cluster in a fresh directory under /tmp (initdb), starts it
on 127.0.0.1 on a free port with its unix socket in that directory (pg_ctl), hands out
databases, restarts it for the fault tests, and stops and removes it at the end. The
fixtures that use it (`pg_cluster`, `pg_url`, `county_db_url`) live in conftest.py; no
test and no fixture lives here, and nothing starts until a test asks for it.

Why it looks the way it does:
- Debian does not put initdb or pg_ctl on PATH; they are in /usr/lib/postgresql/N/bin.
  `pg_config --bindir` names that folder when it has a server in it (libpq-dev's
  pg_config may belong to another version), else the newest version installed is used.
- PostgreSQL refuses to run as root, and CI runs as root. As root, every server program
  (initdb, pg_ctl, and so the postgres it starts) runs as `nobody` through runuser (or
  setpriv), and the cluster's directory is made under /tmp, not under pytest's 0700
  temporary folders, and handed to that user. Not as root, they run as the caller.
- The server is a real one: fsync stays on and commits are durable as in production;
  only its memory is small (shared_buffers), since many test processes may run one each.
  Authentication is trust, on 127.0.0.1 and the private socket folder only.
- A test process killed before its clean-up leaves its cluster behind; the next cluster
  made on the machine stops and removes those whose owning process is gone.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PREFIX = "canteen-pg-"  # the clusters' folders in /tmp
SUPERUSER = "postgres"  # the cluster's superuser (initdb -U), trusted on 127.0.0.1
UNPRIVILEGED = "nobody"  # who runs the server when the tests run as root
OWNER_FILE = "owner.pid"  # the pid of the test process a cluster belongs to
START_TIMEOUT_S = 60


class ClusterError(RuntimeError):
    """The test cluster could not be made, started or stopped; the message says why."""


def find_bindir() -> Path:
    """The folder with initdb, pg_ctl and postgres: `pg_config --bindir` when it has
    them, else the newest /usr/lib/postgresql/*/bin that does."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and (Path(out) / "initdb").is_file():
                return Path(out)
    found = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bindir / "initdb").is_file() and bindir.parent.name.isdigit():
            found.append((int(bindir.parent.name), bindir))
    if not found:
        raise ClusterError(
            "no PostgreSQL server found (no initdb in `pg_config --bindir` or "
            "/usr/lib/postgresql/*/bin): apt-get install postgresql (scripts/setup.sh does)"
        )
    return max(found)[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Cluster:
    """One PostgreSQL cluster in its own folder under /tmp, owned by one test process.

    ``make()`` creates and starts it; ``remove()`` stops it and deletes the folder.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.as_root = os.geteuid() == 0
        self.user = UNPRIVILEGED if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self.dir = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgresql.log"
        self.port = 0
        self.startup_s = 0.0  # initdb and the first start, measured
        (self.dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        if self.as_root:
            entry = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)

    # ---- running the server's programs ----

    def _as_owner(self, argv: list[str]) -> list[str]:
        """``argv`` to run as the cluster's owner (as ``nobody`` when we are root)."""
        if not self.as_root:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", UNPRIVILEGED, "--", *argv]
        entry = pwd.getpwnam(UNPRIVILEGED)
        return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
                *argv]  # fmt: skip

    def _run(self, program: str, *args: str, timeout: float = START_TIMEOUT_S) -> str:
        argv = self._as_owner([str(self.bindir / program), *args])
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, cwd=self.dir
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{program} {' '.join(args)}: no answer in {timeout:g} s") from None
        if done.returncode != 0:
            raise ClusterError(
                f"{program} {' '.join(args)} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}{self._log_tail()}"
            )
        return done.stdout

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(tail) if tail else ""

    # ---- the life of the cluster ----

    def make(self) -> Cluster:
        """initdb and the first start; remembers how long both took."""
        sweep_orphans()
        began = time.monotonic()
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-instructions",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# canteen tests (tests/pgkit.py)\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "shared_buffers = '16MB'\n"
                "max_connections = 60\n"
                "fsync = on\n"
                "log_min_messages = warning\n"
                "log_line_prefix = '%m [%p] '\n"
            )
        # A port is free when chosen but another process may take it before the
        # server binds it: choose again a few times.
        last: ClusterError | None = None
        for _ in range(5):
            self.port = _free_port()
            self._set_port()
            try:
                self.start()
            except ClusterError as exc:
                last = exc
                if "could not bind" not in str(exc) and "in use" not in str(exc):
                    raise
                continue
            self.startup_s = time.monotonic() - began
            return self
        raise ClusterError(f"no free port for the test cluster: {last}")

    def _set_port(self) -> None:
        auto = self.data / "postgresql.auto.conf"
        text = auto.read_text() if auto.exists() else ""
        text = re.sub(r"(?m)^port = .*\n", "", text) + f"port = {self.port}\n"
        auto.write_text(text)  # written as root, readable by the owner (0644)
        if self.as_root:
            entry = pwd.getpwnam(UNPRIVILEGED)
            os.chown(auto, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_S), "-D", str(self.data),
                  "-l", str(self.log))  # fmt: skip
        self.wait_ready()

    def stop(self) -> None:
        """Stop the server (fast: open connections are ended, nothing committed is lost)."""
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-t", str(START_TIMEOUT_S), "-D",
                  str(self.data))  # fmt: skip

    def restart(self) -> None:
        """pg_ctl restart -m fast, then wait until it accepts connections again."""
        self._run("pg_ctl", "restart", "-w", "-m", "fast", "-t", str(START_TIMEOUT_S), "-D",
                  str(self.data), "-l", str(self.log))  # fmt: skip
        self.wait_ready()

    def running(self) -> bool:
        """True while the cluster's postgres process exists (its pid file names a live one)."""
        try:
            return Path(f"/proc/{self.postmaster_pid()}").exists()
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Return once a new connection to the server succeeds."""
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise ClusterError(
                        f"the test cluster accepts no connection after {timeout_s:g} s: {exc}"
                        f"{self._log_tail()}"
                    ) from None
            time.sleep(0.05)

    def postmaster_pid(self) -> int:
        """The pid of the running postgres (the first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster's folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self.stop()
                except ClusterError:
                    _kill_postmaster(self.data)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- using it ----

    def dsn(self, dbname: str) -> str:
        """A libpq connection string (for psycopg.connect)."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """The database URL the county takes (``--database URL``)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` with psql and return its output, unaligned and without headers;
        any error stops it and raises ClusterError with psql's message."""
        argv = [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", dbname,
                "-c", sql]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise ClusterError(f"psql {sql!r}: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name``, empty or a copy of ``template`` (a database no one is
        connected to), and return its URL."""
        copy = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any connection still open to it (a server a test left)."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _kill_postmaster(data: Path) -> None:
    """Stop a cluster's postgres by its pid file when pg_ctl cannot (SIGQUIT: immediate),
    if that pid is still a postgres (not a process that reused the number)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGQUIT)


def sweep_orphans() -> None:
    """Stop and remove clusters in /tmp whose test process is gone (it was killed before
    its clean-up ran); a cluster whose owner still runs is left alone."""
    for folder in Path("/tmp").glob(PREFIX + "*"):
        try:
            owner = int((folder / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        _kill_postmaster(folder / "data")
        shutil.rmtree(folder, ignore_errors=True)
