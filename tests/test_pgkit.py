"""The test PostgreSQL cluster (tests/pgkit.py and the fixtures in conftest.py): it runs as
a non-root user, gives each test its own empty database, and restarts for real."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from pgkit import Cluster, find_bindir


def test_bindir_has_the_server_programs(pg_cluster: Cluster) -> None:
    bindir = find_bindir()
    for program in ("initdb", "pg_ctl", "postgres", "psql", "pg_dump", "pg_restore"):
        assert (bindir / program).is_file(), program
    assert pg_cluster.bindir == bindir


def test_bindir_is_found_without_pg_config_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with the server but not libpq-dev (no pg_config), and no initdb on PATH."""
    monkeypatch.setenv("PATH", "/nonexistent")
    bindir = find_bindir()
    assert bindir.parent.parent == Path("/usr/lib/postgresql")
    assert (bindir / "initdb").is_file()


def test_cluster_runs_as_a_non_root_user(pg_cluster: Cluster) -> None:
    owner = os.stat(f"/proc/{pg_cluster.postmaster_pid()}").st_uid
    assert owner != 0
    assert owner == os.stat(pg_cluster.data).st_uid
    if os.geteuid() == 0:
        assert owner != os.geteuid()
    else:
        assert owner == os.geteuid()
    # The server's own view: its data folder is the one made under /tmp, not pytest's.
    shown = pg_cluster.psql("SHOW data_directory").strip()
    assert Path(shown) == pg_cluster.data
    assert str(pg_cluster.dir).startswith("/tmp/")
    # Durable as in production.
    assert pg_cluster.psql("SHOW fsync").strip() == "on"
    assert pg_cluster.psql("SHOW listen_addresses").strip() == "127.0.0.1"


def _tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return [r[0] for r in rows]


# The same test twice: a table the first run makes is not there in the second.
@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_empty_database(pg_url: str, pg_cluster: Cluster, run: int) -> None:
    assert _tables(pg_url) == []
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE leftover (n integer)")
    assert _tables(pg_url) == ["leftover"]
    name = pg_url.rsplit("/", 1)[1]
    listed = pg_cluster.psql("SELECT datname FROM pg_database").split()
    assert name in listed
    assert not [d for d in listed if d != name and d.startswith(f"t{os.getpid()}_")], (
        "the database of an earlier test was not dropped"
    )


def test_restart_ends_old_connections_and_takes_new_ones(pg_cluster: Cluster, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n integer)")
        conn.execute("INSERT INTO kept VALUES (7)")
        before = pg_cluster.postmaster_pid()
        pg_cluster.restart()
        assert pg_cluster.postmaster_pid() != before
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]


def test_stop_and_start(pg_cluster: Cluster, pg_url: str) -> None:
    pg_cluster.stop()
    try:
        assert not pg_cluster.running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_url, connect_timeout=2)
    finally:
        pg_cluster.start()
    assert pg_cluster.running()
    psycopg.connect(pg_url).close()


def test_county_db_url_names_one_backend(
    county_db_url: str, request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["county_db_url"]
    assert county_db_url.startswith(f"{backend}://")
