"""The county's systemd units, users, backup directory and backup script (docs/county-ops.md).

The units are checked as tests/test_systemd_units.py checks the terminal's:
``systemd-analyze verify`` in a scratch root holding stubs of the installed command
(/opt/canteen-county/.venv/bin/canteen-county) and /bin/sh, the exposure score of each
service (``systemd-analyze security --offline=true``), and the settings that must stay.
systemd as PID 1 is the one thing not run: the units' command lines are parsed by the
real county CLI and run as systemd would run them (their environment files, %i), the
sysusers and tmpfiles files are applied to a scratch root by the real systemd-sysusers
and systemd-tmpfiles, and the backup script runs the real pg_dump and pg_restore against
the tests' PostgreSQL cluster (tests/pgkit.py). docs/county-ops.md is held to its word
here too: its roles' SQL, its restore drill and its point-in-time recovery run as written.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port, wait_for
from pgkit import SUPERUSER, Cluster
from test_systemd_units import ANALYZE, complaints, ids, needs_analyze, scratch_root, verify

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
TEMPLATE = UNITS / "canteen-county@.service"
MIGRATE = UNITS / "canteen-county-migrate.service"
BACKUP = UNITS / "canteen-county-backup.service"
TIMER = UNITS / "canteen-county-backup.timer"
TARGET = UNITS / "canteen-county.target"
CONSOLE = UNITS / "canteen-county-console.service"
SYSUSERS = UNITS / "canteen-county.sysusers"
TMPFILES = UNITS / "canteen-county.tmpfiles"
BACKUP_SCRIPT = UNITS / "canteen-county-backup.sh"
COMMAND = "/opt/canteen-county/.venv/bin/canteen-county"
DATA_DIR = "/var/lib/canteen-county"
BACKUP_DIR = "/var/backups/canteen-county"

# Services and the exposure each must stay at or below (the terminal's unit: 2.0, at 1.5
# today). The oneshots reach only a local database, so they are held lower.
EXPOSURE_LIMITS = {
    "canteen-county@8443.service": 1.2,
    CONSOLE.name: 1.2,
    MIGRATE.name: 1.0,
    BACKUP.name: 1.0,
}


def settings(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` line of a unit, each key with its values in order."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def county_root(tmp_path: Path) -> Path:
    """The terminal tests' scratch root, plus the county's command and /bin/sh as stubs."""
    root = scratch_root(tmp_path)
    for stub in (COMMAND, "/bin/sh"):
        path = root / stub.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    # The units name each other: verify loads the ones beside the unit it checks.
    where = root / "etc/systemd/system"
    where.mkdir(parents=True, exist_ok=True)
    for unit in (TEMPLATE, CONSOLE, MIGRATE, BACKUP, TIMER, TARGET):
        shutil.copyfile(unit, where / unit.name)
    return root


# ---- systemd-analyze ----


@needs_analyze
@pytest.mark.parametrize("unit", [CONSOLE, MIGRATE, BACKUP, TIMER, TARGET], ids=lambda u: u.name)
def test_each_county_unit_verifies(tmp_path: Path, unit: Path) -> None:
    result = verify(county_root(tmp_path), unit)
    assert result.returncode == 0 and complaints(result) == [], complaints(result)


@needs_analyze
def test_the_server_template_verifies_as_an_instance(tmp_path: Path) -> None:
    root = county_root(tmp_path)
    instance = tmp_path / "canteen-county@8443.service"
    shutil.copyfile(TEMPLATE, instance)
    result = verify(root, instance)
    assert result.returncode == 0 and complaints(result) == [], complaints(result)
    # The same check sees a misspelt key and a missing command.
    instance.write_text(TEMPLATE.read_text().replace("ProtectSystem=", "ProtectSystm="))
    assert any("ProtectSystm" in line for line in complaints(verify(root, instance)))
    (root / COMMAND.lstrip("/")).unlink()
    shutil.copyfile(TEMPLATE, instance)
    result = verify(root, instance)
    assert result.returncode != 0 and "is not executable" in result.stderr


@needs_analyze
@pytest.mark.parametrize("name", sorted(EXPOSURE_LIMITS))
def test_each_county_service_exposure_is_low(tmp_path: Path, name: str) -> None:
    assert ANALYZE is not None
    source = TEMPLATE if name.startswith("canteen-county@") else UNITS / name
    shutil.copyfile(source, tmp_path / name)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"{name} exposure {exposure}")
    assert exposure <= EXPOSURE_LIMITS[name], result.stdout


# ---- the settings that must stay ----

HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictSUIDSGID": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictNamespaces": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


@pytest.mark.parametrize("unit", [TEMPLATE, CONSOLE, MIGRATE, BACKUP], ids=lambda u: u.name)
def test_each_county_service_keeps_the_hardening(unit: Path) -> None:
    found = settings(unit)
    for key, value in HARDENING.items():
        assert found.get(key) == [value], f"{unit.name}: {key}={found.get(key)}"
    assert found["SystemCallFilter"][0] == "@system-service"
    assert "MemoryMax" in found
    # Whoever runs it, never root.
    assert found.get("User") or found.get("DynamicUser") == ["yes"]
    assert found.get("User") != ["root"]


def test_the_servers_take_their_database_from_a_file_not_the_command_line() -> None:
    found = settings(TEMPLATE)
    assert found["EnvironmentFile"] == ["/etc/canteen-county/county.env"]
    assert found["Type"] == ["exec"] and found["Restart"] == ["on-failure"]
    assert found["User"] == ["canteen-county"] and found["StateDirectory"] == ["canteen-county"]
    # Only the data directory is written: StateDirectory= under ProtectSystem=strict, and
    # no other writable path.
    assert "ReadWritePaths" not in found
    (exec_start,) = found["ExecStart"]
    assert "DATABASE" not in exec_start and "postgresql" not in exec_start
    argv = shlex.split(exec_start)
    assert argv[:2] == [COMMAND, "serve"]
    assert argv[argv.index("--data") + 1] == DATA_DIR
    assert argv[argv.index("--port") + 1] == "%i"
    # Ordered after the database, the network and the migrations, which it requires.
    after = " ".join(found["After"]).split()
    assert {"canteen-county-migrate.service", "postgresql.service"} <= set(after)
    assert "network-online.target" in after
    assert found["Requires"] == ["canteen-county-migrate.service"]
    assert found["PartOf"] == ["canteen-county.target"]
    assert found["WantedBy"] == ["canteen-county.target"]


def test_the_units_command_lines_are_ones_the_county_cli_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from county.cli import build_parser
    from county.command import store_url

    # The URL the environment file gives is the database the command opens.
    url = "postgresql://canteen_app:secret@127.0.0.1:5432/canteen_county"
    monkeypatch.setenv("CANTEEN_COUNTY_DATABASE", url)
    (exec_start,) = settings(TEMPLATE)["ExecStart"]
    argv = shlex.split(exec_start.replace("%i", "8443").replace("${CANTEEN_COUNTY_HOST}", "::"))
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.data, args.host, args.port) == ("serve", DATA_DIR, "::", 8443)
    assert store_url(args) == url
    (exec_start,) = settings(MIGRATE)["ExecStart"]
    args = build_parser().parse_args(shlex.split(exec_start)[1:])
    assert (args.command, args.db_command) == ("db", "upgrade")
    assert store_url(args) == url


def test_the_console_unit_runs_the_console_as_the_servers_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its own listener (127.0.0.1:8080 unless console.env says otherwise), the servers'
    user, database file and data directory, after the migrations; its options split as
    systemd splits an unbraced variable, and none when it is empty."""
    from county.cli import build_parser
    from county.command import store_url

    found = settings(CONSOLE)
    assert found["EnvironmentFile"] == [
        "/etc/canteen-county/county.env",
        "-/etc/canteen-county/console.env",
    ]
    assert found["User"] == ["canteen-county"] and found["StateDirectory"] == ["canteen-county"]
    assert found["Requires"] == ["canteen-county-migrate.service"]
    assert found["PartOf"] == ["canteen-county.target"]
    assert found["WantedBy"] == ["canteen-county.target"]
    defaults = dict(
        pair.split("=", 1) for line in found["Environment"] for pair in shlex.split(line)
    )
    assert defaults["CANTEEN_CONSOLE_HOST"] == "127.0.0.1"
    (exec_start,) = found["ExecStart"]
    assert "DATABASE" not in exec_start and "postgresql" not in exec_start
    url = "postgresql://canteen_app:secret@127.0.0.1:5432/canteen_county"
    monkeypatch.setenv("CANTEEN_COUNTY_DATABASE", url)
    for options, tls in (("", None), ("--tls-cert /etc/c.crt --tls-key /etc/c.key", "/etc/c.crt")):
        line = (
            exec_start.replace("${CANTEEN_CONSOLE_HOST}", defaults["CANTEEN_CONSOLE_HOST"])
            .replace("${CANTEEN_CONSOLE_PORT}", defaults["CANTEEN_CONSOLE_PORT"])
            .replace("$CANTEEN_CONSOLE_OPTIONS", options)
        )
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert (args.command, args.data, args.host, args.port) == (
            "console",
            DATA_DIR,
            "127.0.0.1",
            8080,
        )
        assert args.tls_cert == tls and store_url(args) == url


def test_the_migrations_run_once_before_the_servers() -> None:
    found = settings(MIGRATE)
    assert found["Type"] == ["oneshot"] and found["RemainAfterExit"] == ["yes"]
    assert found["ExecStart"] == [f"{COMMAND} db upgrade"]
    assert found["EnvironmentFile"] == ["/etc/canteen-county/migrate.env"]
    assert found["DynamicUser"] == ["yes"]
    assert "canteen-county.target" in found["Before"]
    assert found["IPAddressDeny"] == ["any"] and found["IPAddressAllow"] == ["localhost"]
    target = settings(TARGET)
    assert target["Wants"] == [MIGRATE.name] and target["WantedBy"] == ["multi-user.target"]


def test_the_backup_runs_nightly_as_its_own_user_into_its_own_directory() -> None:
    timer = settings(TIMER)
    assert timer["OnCalendar"] == ["*-*-* 02:30:00"] and timer["Persistent"] == ["yes"]
    assert timer["WantedBy"] == ["timers.target"]
    found = settings(BACKUP)
    assert found["Type"] == ["oneshot"]
    assert found["User"] == ["canteen-county-backup"]
    assert found["ReadWritePaths"] == [BACKUP_DIR]
    assert found["ExecStart"] == ["/bin/sh /opt/canteen-county/systemd/canteen-county-backup.sh"]
    assert f"CANTEEN_COUNTY_BACKUP_DIR={BACKUP_DIR}" in found["Environment"]
    # The password: a credential file, never the environment or the command line.
    assert found["LoadCredential"] == ["pgpass:/etc/canteen-county/backup.pgpass"]
    assert "PGPASSFILE=%d/pgpass" in found["Environment"]
    assert "PGPASSWORD" not in BACKUP.read_text().replace("# ", "")
    lines = [x for x in TMPFILES.read_text().splitlines() if x and not x.startswith("#")]
    assert lines == [f"d {BACKUP_DIR} 0700 canteen-county-backup canteen-county-backup -"]


@pytest.mark.skipif(os.geteuid() != 0, reason="makes users and changes owners: needs root")
def test_the_users_and_the_backup_directory_are_made(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for command in (
        ["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
        ["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    server = ids(root, "passwd", "canteen-county")
    backup = ids(root, "passwd", "canteen-county-backup")
    assert server != backup and 0 < server < 1000 and 0 < backup < 1000
    info = (root / BACKUP_DIR.lstrip("/")).stat()
    assert (info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)) == (
        backup,
        ids(root, "group", "canteen-county-backup"),
        "0o700",
    )


# ---- the backup script, with the real pg_dump against the tests' cluster ----

needs_pg_dump = pytest.mark.skipif(
    shutil.which("pg_dump") is None or shutil.which("pg_restore") is None,
    reason="apt-get install postgresql-client",
)
DUMP_NAME = re.compile(r"^canteen-county-\d{8}T\d{6}Z\.dump$")


def run_backup(
    backups: Path, cluster: Cluster, dbname: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    """The script as the unit runs it: libpq's variables name the server, nothing else."""
    env = {
        "PATH": os.environ["PATH"],
        "CANTEEN_COUNTY_BACKUP_DIR": str(backups),
        "PGHOST": "127.0.0.1",
        "PGPORT": str(cluster.port),
        "PGUSER": SUPERUSER,
        "PGDATABASE": dbname,
        **extra,
    }
    return subprocess.run(
        ["/bin/sh", str(BACKUP_SCRIPT)], capture_output=True, text=True, timeout=120, env=env
    )


def old_dump(backups: Path, days: float) -> Path:
    """The dump of an earlier night, ``days`` old (by its name and its time)."""
    then = time.time() - days * 86_400
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(then))
    path = backups / f"canteen-county-{stamp}.dump"
    path.write_bytes(b"an older night's dump")
    os.utime(path, (then, then))
    return path


@needs_pg_dump
def test_the_backup_dumps_keeps_the_newest_and_restores(
    tmp_path: Path, pg_cluster: Cluster, pg_url: str
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    pg_cluster.psql(
        "CREATE TABLE entries (terminal text, seq bigint, hash bytea, PRIMARY KEY (terminal, seq));"
        "INSERT INTO entries SELECT 'T' || (i % 3), i, sha256(i::text::bytea)"
        " FROM generate_series(1, 500) i",
        dbname,
    )
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    # Five earlier nights, 0.5 to 12 days old; the partial file of a run killed two days ago.
    kept_young = [old_dump(backups, days) for days in (0.5, 1.5)]
    kept_newest_old = old_dump(backups, 10)
    gone = [old_dump(backups, days) for days in (11, 12)]
    stale = backups / ".canteen-county-20261130T023000Z.dump.partial"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * 86_400,) * 2)

    done = run_backup(
        backups,
        pg_cluster,
        dbname,
        CANTEEN_COUNTY_BACKUP_KEEP_DAYS="7",
        CANTEEN_COUNTY_BACKUP_KEEP_MIN="4",
    )
    assert done.returncode == 0, done.stderr
    new = [p for p in backups.iterdir() if DUMP_NAME.match(p.name) and p.stat().st_size > 100]
    assert len(new) == 1 and f"wrote {new[0]}" in done.stdout
    # The newest four stay whatever their age (tonight's, two young ones, one 10 days
    # old); past them, only what is older than 7 days goes, and the stale partial file.
    assert sorted(backups.iterdir()) == sorted([*new, *kept_young, kept_newest_old])
    assert all(not p.exists() for p in gone) and not stale.exists()
    assert oct(new[0].stat().st_mode & 0o777) == "0o600"  # the script's own umask

    # The restore drill on tonight's dump: into a new database, the same rows.
    restored = pg_cluster.create_database(dbname + "_r").rsplit("/", 1)[1]
    try:
        where = ["-h", "127.0.0.1", "-p", str(pg_cluster.port), "-U", SUPERUSER]
        subprocess.run(
            ["pg_restore", "--no-owner", *where, "-d", restored, str(new[0])],
            check=True,
            capture_output=True,
            timeout=120,
        )
        query = "SELECT terminal, seq, encode(hash, 'hex') FROM entries ORDER BY 1, 2"
        before = pg_cluster.psql(query, dbname)
        assert before.count("\n") == 500
        assert pg_cluster.psql(query, restored) == before
    finally:
        pg_cluster.drop_database(restored)


@needs_pg_dump
def test_a_failed_backup_leaves_no_file_and_says_why(tmp_path: Path, pg_cluster: Cluster) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    kept = old_dump(backups, 30)
    done = run_backup(backups, pg_cluster, "no_such_database", CANTEEN_COUNTY_BACKUP_KEEP_MIN="0")
    assert done.returncode != 0
    assert "pg_dump failed" in done.stderr and "no_such_database" in done.stderr
    # Nothing written, and a failed night removes nothing.
    assert list(backups.iterdir()) == [kept]
    for bad, words in (
        ({"CANTEEN_COUNTY_BACKUP_KEEP_DAYS": "two"}, "expected a whole number of days"),
        ({"CANTEEN_COUNTY_BACKUP_KEEP_DAYS": "0"}, "keep dumps at least 1 day"),
        ({"CANTEEN_COUNTY_BACKUP_DIR": str(tmp_path / "none")}, "no such writable directory"),
    ):
        done = run_backup(backups, pg_cluster, "postgres", **bad)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and words in lines[0], done.stderr
    assert list(backups.iterdir()) == [kept]


# ---- docs/county-ops.md's roles, as written there, on a real PostgreSQL ----

OPS_DOC = ROOT / "docs" / "county-ops.md"


def ops_roles_sql() -> str:
    """The SQL of docs/county-ops.md section 2 (the psql here-document), as written."""
    text = OPS_DOC.read_text()
    match = re.search(r"sudo -u postgres psql <<'SQL'\n(.*?)\n\s*SQL\n", text, re.S)
    assert match, "docs/county-ops.md: the roles' psql here-document is missing"
    return "\n".join(line.strip() for line in match.group(1).splitlines())


def psql_as(cluster: Cluster, user: str, dbname: str, sql: str) -> subprocess.CompletedProcess[str]:
    argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
            "-p", str(cluster.port), "-U", user, "-d", dbname]  # fmt: skip
    return subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("psql") is None, reason="apt-get install postgresql-client")
def test_the_documented_roles_give_each_job_only_what_it_needs(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    # The cluster is shared by this test process: names of this run, dropped afterwards.
    tag = f"ops{os.getpid()}"
    names = {
        "canteen_county": f"{tag}_county",
        "canteen_owner": f"{tag}_owner",
        "canteen_app": f"{tag}_app",
        "canteen_backup": f"{tag}_backup",
    }
    sql = ops_roles_sql()
    for documented, used in names.items():
        sql = sql.replace(documented, used)
    db, owner, app, backup = names.values()
    try:
        done = psql_as(pg_cluster, SUPERUSER, "postgres", sql)
        assert done.returncode == 0, done.stderr
        # The owner makes a table, as a migration does.
        made = "CREATE TABLE entries (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
        assert psql_as(pg_cluster, owner, db, made + ", v text)").returncode == 0
        # The servers' role: rows, yes; the schema, no.
        rows = (
            "INSERT INTO entries (v) VALUES ('a'), ('b');"
            "UPDATE entries SET v = 'c' WHERE v = 'a';"
            "DELETE FROM entries WHERE v = 'b'; SELECT v FROM entries FOR UPDATE;"
        )
        done = psql_as(pg_cluster, app, db, rows)
        assert done.returncode == 0 and done.stdout.split() == ["c"], done.stderr
        for ddl in (
            "CREATE TABLE mine (x int)",
            "DROP TABLE entries",
            "ALTER TABLE entries ADD COLUMN x int",
            "TRUNCATE entries",
        ):
            done = psql_as(pg_cluster, app, db, ddl)
            refused = "permission denied" in done.stderr or "must be owner" in done.stderr
            assert done.returncode != 0 and refused, (ddl, done.stderr)
        # The dump's role reads everything and writes nothing.
        where = ["-h", "127.0.0.1", "-p", str(pg_cluster.port), "-U", backup, "-d", db]
        dump = subprocess.run(
            ["pg_dump", "-Fc", *where, "-f", str(tmp_path / "d.dump")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dump.returncode == 0, dump.stderr
        done = psql_as(pg_cluster, backup, db, "INSERT INTO entries (v) VALUES ('x')")
        assert done.returncode != 0 and "permission denied" in done.stderr
        # The drill's restore: dropped, then made again from the dump with --create, with
        # its owner and its grants (the app connects and writes, the owner owns).
        done = psql_as(pg_cluster, SUPERUSER, "postgres", f'DROP DATABASE "{db}"')
        assert done.returncode == 0, done.stderr
        restore = subprocess.run(
            ["pg_restore", "--create", "--exit-on-error", "-h", "127.0.0.1", "-p",
             str(pg_cluster.port), "-U", SUPERUSER, "-d", "postgres", str(tmp_path / "d.dump")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert restore.returncode == 0, restore.stderr
        again = "INSERT INTO entries (v) VALUES ('d'); SELECT v FROM entries ORDER BY v"
        done = psql_as(pg_cluster, app, db, again)
        assert done.returncode == 0 and done.stdout.split() == ["c", "d"], done.stderr
        done = psql_as(pg_cluster, app, db, "CREATE TABLE mine (x int)")
        assert done.returncode != 0 and "permission denied" in done.stderr
        owner_of = f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'"
        assert psql_as(pg_cluster, SUPERUSER, "postgres", owner_of).stdout.split() == [owner]
        # Nobody else gets in.
        done = psql_as(pg_cluster, SUPERUSER, "postgres", f"CREATE ROLE {tag}_other LOGIN")
        assert done.returncode == 0, done.stderr
        done = psql_as(pg_cluster, f"{tag}_other", db, "SELECT 1")
        assert done.returncode != 0 and "permission denied for database" in done.stderr
    finally:
        psql_as(
            pg_cluster,
            SUPERUSER,
            "postgres",
            f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE);'
            + "".join(f"DROP ROLE IF EXISTS {r};" for r in (owner, app, backup, f"{tag}_other")),
        )


# ---- the units' commands, run as systemd runs them, against the test cluster ----


def unit_environment(unit: Path, env_file: Path) -> dict[str, str]:
    """The environment systemd gives the service: the unit's Environment= lines, then its
    EnvironmentFile= (whose settings win), on top of nothing the test process has set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANTEEN_COUNTY_")}
    for line in settings(unit).get("Environment", []):
        env.update(pair.split("=", 1) for pair in shlex.split(line))
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def unit_argv(unit: Path, env: dict[str, str], instance: str = "") -> list[str]:
    """ExecStart= as systemd runs it: %i and ${VAR} filled in, this checkout's command."""
    (line,) = settings(unit)["ExecStart"]
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line.replace("%i", instance))
    argv = shlex.split(line)
    assert argv[0] == COMMAND
    return [str(ROOT / ".venv/bin/canteen-county"), *argv[1:]]


@pytest.mark.slow  # a migration and a server start: about 20 s on a busy 2-core machine
def test_the_migrations_then_a_server_run_from_the_units_files(tmp_path: Path, pg_url: str) -> None:
    import ssl
    import urllib.request

    from county import ca

    data = tmp_path / "data"
    ca.init_ca(data)
    # A password in the URL (the test cluster trusts 127.0.0.1 and never asks for it):
    # it must reach the server through the environment file, never its command line.
    secret = "pw-only-in-the-env-file"
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    migrate_env = tmp_path / "migrate.env"
    migrate_env.write_text(f"# the owner's URL\nCANTEEN_COUNTY_DATABASE={url}\n")
    county_env = tmp_path / "county.env"
    county_env.write_text(
        f"CANTEEN_COUNTY_DATABASE={url}\n"
        "# listen here, not on 0.0.0.0\n"
        "CANTEEN_COUNTY_HOST=127.0.0.1\n"
    )

    env = unit_environment(MIGRATE, migrate_env)
    done = subprocess.run(
        unit_argv(MIGRATE, env), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "upgraded" in done.stdout, done.stdout + done.stderr
    assert secret not in done.stdout + done.stderr

    env = unit_environment(TEMPLATE, county_env)
    port = free_port()
    argv = unit_argv(TEMPLATE, env, str(port))
    argv[argv.index(DATA_DIR)] = str(data)
    server = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        context = ssl.create_default_context(cafile=str(data / ca.CA_CERT))

        def healthy() -> bool:
            assert server.poll() is None, server.communicate()
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/v1/health", context=context, timeout=5
            ) as answer:
                return bool(answer.status == 200)

        wait_for(healthy, what="the server started from the unit's command line")
        assert secret not in Path(f"/proc/{server.pid}/cmdline").read_text()
    finally:
        # systemd's stop: SIGTERM, then SIGKILL after TimeoutStopSec=20.
        server.terminate()
        out, err = server.communicate(timeout=20)
    # uvicorn shuts down, then raises the SIGTERM it caught again, so the process ends by
    # that signal: systemd counts SIGTERM as a clean end (not a failure to restart).
    assert server.returncode in (0, -signal.SIGTERM), out + err
    assert secret not in out + err


# ---- docs/county-ops.md's point-in-time recovery, on a cluster of its own ----


@pytest.mark.slow  # a cluster of its own, a base backup and a recovery: about 30 s
def test_the_documented_point_in_time_recovery(tmp_path: Path) -> None:
    """Section 6 of docs/county-ops.md on a throwaway cluster: WAL archived by the
    documented archive_command, a base backup with the documented pg_basebackup options,
    then the walk-through (base.tar.gz into the data folder, pg_wal.tar.gz into pg_wal,
    restore_command, recovery_target_time, recovery.signal): the rows committed before
    the target are back, the ones after it are not, and the server is promoted."""
    import pwd
    import tarfile

    cluster = Cluster()
    try:
        cluster.make()
        owner = pwd.getpwnam(cluster.user)
        archive = cluster.dir / "archive"
        archive.mkdir()
        os.chown(archive, owner.pw_uid, owner.pw_gid)
        command = f"test ! -f {archive}/%f && cp %p {archive}/%f"
        doc = OPS_DOC.read_text()
        assert command.replace(str(archive), "/srv/canteen-wal/archive") in doc
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(f"wal_level = replica\narchive_mode = on\narchive_command = '{command}'\n")
        cluster.restart()
        cluster.psql("CREATE TABLE entries (seq int PRIMARY KEY); INSERT INTO entries VALUES (1)")

        base = tmp_path / "base"
        options = "--format=tar --gzip --wal-method=stream --checkpoint=fast"
        assert options in doc
        subprocess.run(
            [str(cluster.bindir / "pg_basebackup"), f"--pgdata={base}", *options.split(),
             "-h", "127.0.0.1", "-p", str(cluster.port), "-U", SUPERUSER],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        cluster.psql("INSERT INTO entries VALUES (2)")
        # The target: after entry 2's commit, before entry 3's.
        target = cluster.psql("SELECT now()").strip()
        cluster.psql("INSERT INTO entries VALUES (3)")
        # The segment that holds entry 3, closed now and archived by archive_command.
        segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
        archived = "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"
        wait_for(
            lambda: cluster.psql(archived).strip() >= segment,
            what=f"WAL segment {segment} archived",
        )
        cluster.stop()

        # The walk-through, step by step.
        cluster.data.rename(cluster.dir / "main.broken")
        cluster.data.mkdir(mode=0o700)
        with tarfile.open(base / "base.tar.gz") as tar:
            tar.extractall(cluster.data, filter="tar")
        with tarfile.open(base / "pg_wal.tar.gz") as tar:
            tar.extractall(cluster.data / "pg_wal", filter="tar")
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"restore_command = 'cp {archive}/%f %p'\n"
                f"recovery_target_time = '{target}'\n"
                "recovery_target_action = 'promote'\n"
            )
        (cluster.data / "recovery.signal").touch()
        for path in [cluster.data, *cluster.data.rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        cluster.start()
        wait_for(
            lambda: cluster.psql("SELECT pg_is_in_recovery()").strip() == "f",
            what="the recovered server promoted",
        )
        assert cluster.psql("SELECT seq FROM entries ORDER BY seq").split() == ["1", "2"]
        assert not (cluster.data / "recovery.signal").exists()
    finally:
        cluster.remove()
