"""The county's agency directory commands (county/directory_cli.py, county/directory.py),
run as county IT runs them, on a real SQLite file and a real PostgreSQL database.

What is proved, on each backend: a good agencies file is stored whole and listed with its
Chinese names, levels and parents, as a table, JSON, or CSV that imports again to the same
directory; a file with several bad rows (unknown level, unknown parent, a cycle, a
duplicate code, a bad code) is refused with one line per row naming its line, and the
directory stored before stays as it was; canteens with an operator the directory lacks
are refused the same way; an agencies file that would remove an agency a canteen runs is
refused one line per canteen; ``load_directory`` gives settlement the stored directory and
the tier rule on it. Publishing: an import signs the directory as the next version of
lists/directory.json, whose bytes match the signed hash and parse with the parser the
terminal installs it with; without an update repository the import stores and says how
the terminals get it. One test runs the installed command in its own process.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for
from countykit import ON_EACH_BACKEND, County, copy_county
from sqlalchemy import text

from county import updates as cu
from county.cli import main as county_main
from county.db import Database
from county.db.migrations import prepare
from county.directory import (
    DirectoryRefused,
    load_directory,
    operator_of,
    replace_agencies,
    replace_canteens,
)
from protocol import agencies as ag
from protocol.layout import DIRECTORY_TARGET

ROOT = Path(__file__).resolve().parent.parent

AGENCIES = """\
code,name,level,parent,finance_account
ZJ,浙江省机关事务管理局,province,,6222000001
HZ,杭州市机关事务管理局,city,ZJ,6222000002
YH,余杭区机关事务管理局,county,HZ,6222000003
XH,西湖区机关事务管理局,county,HZ,6222000004
YH-LP,余杭区良渚街道,township,YH,
"""
CANTEENS = """\
canteen,name,operator
yh-1,余杭区机关食堂,YH
yh-2,余杭区行政服务中心食堂,YH
hz-1,杭州市级机关食堂,HZ
"""
# Each bad row's file line, and a word its error line carries.
BAD_AGENCIES = """\
code,name,level,parent,finance_account
ZJ,浙江省,province,,1
HZ,杭州市,metro,ZJ,2
YH,余杭区,county,NOPE,3
ZJ,浙江省又一次,province,,
b@d,坏代码,county,HZ,
A1,甲县,county,A2,
A2,乙县,county,A1,
F1,某单位,county,HZ,62\x0022
"""
BAD_LINES = {
    3: "level 'metro'",
    4: "parent 'NOPE' is not an agency",
    5: "already on line 2",
    6: "code 'b@d'",
    7: "cycle: A1 -> A2 -> A1",
    9: "finance_account must be at most 64 printable characters",  # a NUL in it
}


def _county(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """canteen-county ARGS in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = county_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _file(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return str(path)


def _stored(url: str) -> ag.Directory:
    db = Database(url)
    try:
        prepare(db)
        with db.read() as conn:
            return load_directory(conn)
    finally:
        db.close()


def _same(a: ag.Directory, b: ag.Directory) -> bool:
    return dict(a.agencies) == dict(b.agencies) and dict(a.canteens) == dict(b.canteens)


def test_import_and_list(
    county_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database", county_db_url)
    rc, out, err = _county(
        "agencies", "import", _file(tmp_path, "a.csv", AGENCIES), *db, capsys=capsys
    )
    assert (rc, err) == (0, "")
    assert out.startswith("5 agencies (1 province, 1 city, 2 county, 1 township), 0 canteens;")
    # No --data: no update repository, and the line says how the terminals get it.
    assert "not published" in out and "updates init" in out and "agencies publish" in out
    assert len(out.splitlines()) == 1
    stored = _stored(county_db_url)
    assert _same(stored, ag.parse_agencies_csv(AGENCIES))

    rc, out, _ = _county("agencies", "list", *db, capsys=capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["code", "name"]
    # Parents first, each followed by its children.
    assert [line.split()[0] for line in lines[1:]] == ["ZJ", "HZ", "XH", "YH", "YH-LP"]
    assert (
        "YH-LP" in lines[5]
        and "township 乡镇" in lines[5]
        and "YH 余杭区机关事务管理局" in lines[5]
    )

    rc, out, _ = _county(
        "agencies", "list", "--format", "json", "--level", "county", *db, capsys=capsys
    )
    listed = json.loads(out)
    assert [x["code"] for x in listed] == ["XH", "YH"]
    assert listed[1] == {
        "code": "YH",
        "name": "余杭区机关事务管理局",
        "level": "county",
        "parent": "HZ",
        "finance_account": "6222000003",
        "level_name": "县级",
        "parent_name": "杭州市机关事务管理局",
    }

    # CSV round-trips: what list prints imports again to the same directory.
    rc, out, _ = _county("agencies", "list", "--format", "csv", *db, capsys=capsys)
    assert rc == 0 and out.startswith("code,name,level,parent,finance_account\n")
    assert _same(ag.parse_agencies_csv(out), stored)
    rc, _, err = _county(
        "agencies", "import", _file(tmp_path, "again.csv", out), *db, capsys=capsys
    )
    assert (rc, err) == (0, "")
    assert _same(_stored(county_db_url), stored)


def test_bad_rows_each_reported_and_nothing_imported(
    county_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database", county_db_url)
    assert (
        _county("agencies", "import", _file(tmp_path, "a.csv", AGENCIES), *db, capsys=capsys)[0]
        == 0
    )
    before = _stored(county_db_url)
    bad = _file(tmp_path, "bad.csv", BAD_AGENCIES)
    rc, out, err = _county("agencies", "import", bad, *db, capsys=capsys)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert lines[-1] == "canteen-county: nothing was imported"
    problems = lines[:-1]
    assert len(problems) == len(BAD_LINES), err
    for line, word in BAD_LINES.items():
        [found] = [p for p in problems if f"bad.csv line {line}:" in p]
        assert word in found and found.startswith("canteen-county: error: ")
    assert _same(_stored(county_db_url), before)

    # A file with only its header would empty the directory: refused too.
    header = _file(tmp_path, "empty.csv", "code,name,level,parent,finance_account\n")
    rc, out, err = _county("agencies", "import", header, *db, capsys=capsys)
    assert rc == 2 and "no agencies" in err and len(err.splitlines()) == 1
    wrong = _file(tmp_path, "wrong.csv", "code,name,level\nZJ,浙江省,province\n")
    rc, out, err = _county("agencies", "import", wrong, *db, capsys=capsys)
    assert rc == 2 and "line 1: the header must be code,name,level,parent,finance_account" in err
    rc, out, err = _county("agencies", "import", str(tmp_path / "none.csv"), *db, capsys=capsys)
    assert rc == 2 and "none.csv: cannot read" in err and len(err.splitlines()) == 1
    assert _same(_stored(county_db_url), before)


def test_canteens_and_the_agencies_they_need(
    county_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database", county_db_url)
    canteens = _file(tmp_path, "c.csv", CANTEENS)
    # No agencies yet: no operator to name.
    rc, _, err = _county("canteens", "import", canteens, *db, capsys=capsys)
    assert rc == 2 and "holds no agencies" in err
    assert (
        _county("agencies", "import", _file(tmp_path, "a.csv", AGENCIES), *db, capsys=capsys)[0]
        == 0
    )

    rc, out, err = _county("canteens", "import", canteens, *db, capsys=capsys)
    assert (rc, err) == (0, "") and ", 3 canteens;" in out
    stored = _stored(county_db_url)
    assert stored.operator_of("yh-2") == "YH" and stored.operator_of("nowhere") is None

    unknown = _file(
        tmp_path,
        "unknown.csv",
        "canteen,name,operator\nyh-1,余杭区机关食堂,YH\nsz-1,深圳食堂,SZ\nbj-1,北京食堂,BJ\n",
    )
    rc, out, err = _county("canteens", "import", unknown, *db, capsys=capsys)
    assert rc == 2 and out == ""
    assert err.splitlines() == [
        f"canteen-county: error: {unknown} line 3: operator 'SZ' is not an agency in the directory",
        f"canteen-county: error: {unknown} line 4: operator 'BJ' is not an agency in the directory",
        "canteen-county: nothing was imported",
    ]
    assert _same(_stored(county_db_url), stored)

    # An agency two canteens run cannot go: one line per canteen, nothing changed.
    without_yh = "".join(line + "\n" for line in AGENCIES.splitlines() if not line.startswith("YH"))
    rc, out, err = _county(
        "agencies", "import", _file(tmp_path, "no-yh.csv", without_yh), *db, capsys=capsys
    )
    assert rc == 2
    refused = err.splitlines()
    assert len(refused) == 3 and refused[-1] == "canteen-county: nothing was imported"
    assert "canteen yh-1 (余杭区机关食堂) is run by agency 'YH'" in refused[0]
    assert "canteen yh-2 " in refused[1]
    assert _same(_stored(county_db_url), stored)

    rc, out, _ = _county("canteens", "list", *db, capsys=capsys)
    assert [line.split()[0] for line in out.splitlines()] == ["canteen", "hz-1", "yh-1", "yh-2"]
    assert "YH 余杭区机关事务管理局" in out.splitlines()[2]
    rc, out, _ = _county("canteens", "list", "--format", "json", *db, capsys=capsys)
    assert json.loads(out)[0] == {
        "canteen": "hz-1",
        "name": "杭州市级机关食堂",
        "operator": "HZ",
        "operator_name": "杭州市机关事务管理局",
        "operator_level": "city",
    }
    rc, out, _ = _county("canteens", "list", "--format", "csv", *db, capsys=capsys)
    assert sorted(out.splitlines()[1:]) == sorted(CANTEENS.splitlines()[1:])
    rc, _, err = _county("canteens", "import", _file(tmp_path, "c2.csv", out), *db, capsys=capsys)
    assert (rc, err) == (0, "")
    assert _same(_stored(county_db_url), stored)


def test_load_directory_gives_the_tiers(
    county_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What settlement reads: the stored directory, its operators and the tier rule."""
    db = ("--database", county_db_url)
    assert (
        _county("agencies", "import", _file(tmp_path, "a.csv", AGENCIES), *db, capsys=capsys)[0]
        == 0
    )
    assert (
        _county("canteens", "import", _file(tmp_path, "c.csv", CANTEENS), *db, capsys=capsys)[0]
        == 0
    )
    database = Database(county_db_url)
    try:
        with database.read() as conn:
            directory = load_directory(conn)
            assert operator_of(conn, "yh-1") == "YH"
            assert operator_of(conn, "not-listed") is None
    finally:
        database.close()
    yh = directory.operator_of("yh-1")
    assert directory.tier("YH", yh) == ag.OWN
    assert directory.tier("XH", yh) == ag.OTHER_REGION  # another district of the city
    assert directory.tier("HZ", yh) == ag.HIGHER_LEVEL
    assert directory.tier("ZJ", yh) == ag.HIGHER_LEVEL
    assert directory.tier("YH-LP", yh) == ag.LOWER_LEVEL
    assert directory.tier("YH", directory.operator_of("hz-1")) == ag.LOWER_LEVEL
    assert directory.tier("SZ", yh) == ag.UNLISTED


def _waiting(db: Database) -> int:
    """Sessions of ``db``'s PostgreSQL database waiting for an advisory lock."""
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND "
                    "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).scalar_one()
        )


def test_imports_wait_for_each_other(
    county_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An agencies import that removes YH, not yet committed, and a canteens import naming
    YH at the same time: the canteens import waits for it and is then refused, so no
    canteen is left run by an agency that is gone. On PostgreSQL the wait is seen as the
    second session's ungranted advisory lock."""
    db = ("--database", county_db_url)
    assert (
        _county("agencies", "import", _file(tmp_path, "a.csv", AGENCIES), *db, capsys=capsys)[0]
        == 0
    )
    without_yh = ag.parse_agencies_csv(
        "".join(line + "\n" for line in AGENCIES.splitlines() if not line.startswith("YH"))
    )
    first, second = Database(county_db_url), Database(county_db_url)
    outcome: list[BaseException | ag.Directory] = []

    def canteens() -> None:
        try:
            with second.write() as conn:
                outcome.append(
                    replace_canteens(conn, [ag.Canteen("yh-1", "余杭区机关食堂", "YH")], 2)
                )
        except BaseException as exc:
            outcome.append(exc)

    try:
        with first.write() as conn:
            replace_agencies(conn, without_yh, 1)
            other = threading.Thread(target=canteens)
            other.start()
            if not first.is_sqlite:
                wait_for(lambda: _waiting(first), what="the canteens import waiting for its lock")
        other.join(timeout=60)
        assert not other.is_alive()
    finally:
        first.close()
        second.close()
    [refused] = outcome
    assert isinstance(refused, DirectoryRefused)
    assert refused.lines == ["canteen yh-1: operator 'YH' is not an agency in the stored directory"]
    stored = _stored(county_db_url)
    assert "YH" not in stored.agencies and not stored.canteens


# ---- publishing to the terminals ----

_TEMPLATE: dict[str, Path] = {}


def _with_updates(county: County) -> None:
    """Give ``county`` an update repository: one is made per test process (4,096 shard
    files take seconds) and copied."""
    if "dir" not in _TEMPLATE:
        base = Path(tempfile.mkdtemp(prefix="county-agencies-"))
        cu.init_repository(base / "county", base / "root-keys", int(time.time()))
        atexit.register(shutil.rmtree, base, True)
        _TEMPLATE["dir"] = base
    copy_county(_TEMPLATE["dir"] / "county" / cu.UPDATES_DIR, county.data / cu.UPDATES_DIR)


def _published(data: Path) -> tuple[int, ag.Directory]:
    """The directory target in force: its signed version, and its bytes parsed as the
    terminal parses them, after checking they are the bytes the metadata signed."""
    with cu.CountyRepository(data) as repo:
        info = repo.target_info(DIRECTORY_TARGET)
        assert info is not None
        digest = info.hashes["sha256"]
        directory, _, base = DIRECTORY_TARGET.rpartition("/")
        body = (repo.paths.targets / directory / f"{digest}.{base}").read_bytes()
    assert hashlib.sha256(body).hexdigest() == digest and len(body) == info.length
    parsed = ag.parse_directory(json.loads(body), "published directory")
    assert parsed.version == info.custom["version"]
    return int(info.custom["version"]), parsed


@ON_EACH_BACKEND
def test_import_publishes_the_directory(
    county: County, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--data", str(county.data)]
    if county.database_url:
        where += ["--database", county.database_url]
    rc, _, err = _county("agencies", "publish", *where, capsys=capsys)
    assert rc == 2 and "holds no agencies" in err
    _with_updates(county)

    rc, out, err = _county(
        "agencies", "import", _file(tmp_path, "a.csv", AGENCIES), *where, capsys=capsys
    )
    assert (rc, err) == (0, "")
    assert out.strip().endswith("; published as directory version 1")
    version, published = _published(county.data)
    assert version == 1 and _same(published, ag.parse_agencies_csv(AGENCIES))

    # The directory document carries the canteens: importing them publishes it again.
    rc, out, err = _county(
        "canteens", "import", _file(tmp_path, "c.csv", CANTEENS), *where, capsys=capsys
    )
    assert (rc, err) == (0, "") and out.strip().endswith("published as directory version 2")
    version, published = _published(county.data)
    assert version == 2 and published.operator_of("yh-2") == "YH"
    assert _same(
        published, _stored(county.database_url or f"sqlite:///{county.data / 'county.sqlite'}")
    )

    # A refused import publishes nothing.
    rc, _, _ = _county(
        "agencies", "import", _file(tmp_path, "bad.csv", BAD_AGENCIES), *where, capsys=capsys
    )
    assert rc == 2 and _published(county.data)[0] == 2

    # County IT re-sends what is stored.
    rc, out, err = _county("agencies", "publish", *where, capsys=capsys)
    assert (rc, err) == (0, "") and out.strip().endswith("published as directory version 3")
    assert _same(_published(county.data)[1], published)


def test_encodings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Excel's plain 'CSV' on Chinese Windows is gb18030: read with --encoding, and
    refused in one line that names the option without it."""
    db = ("--database", f"sqlite:///{tmp_path / 'county.sqlite'}")
    gbk = _file(tmp_path, "gbk.csv", AGENCIES, encoding="gb18030")
    rc, out, err = _county("agencies", "import", gbk, *db, capsys=capsys)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and "--encoding gb18030" in err
    rc, out, err = _county("agencies", "import", gbk, "--encoding", "gb18030", *db, capsys=capsys)
    assert (rc, err) == (0, "") and out.startswith("5 agencies")
    rc, out, err = _county("agencies", "import", gbk, "--encoding", "klingon", *db, capsys=capsys)
    assert rc == 2 and "no such text encoding" in err


@pytest.mark.slow
def test_the_command_as_county_it_runs_it(tmp_path: Path) -> None:
    """The module in its own processes, as county IT runs it: a refused file is exit 2
    with one stderr line per bad row; a good one is stored and listed."""
    data = tmp_path / "county"
    data.mkdir()
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}")
    env.pop("CANTEEN_COUNTY_DATABASE", None)

    def county(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "county.cli", *args, "--data", str(data)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    done = county("agencies", "import", _file(tmp_path, "bad.csv", BAD_AGENCIES))
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == len(BAD_LINES) + 1
    done = county("agencies", "import", _file(tmp_path, "a.csv", AGENCIES))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("5 agencies") and "not published" in done.stdout
    assert _same(_stored(f"sqlite:///{data / 'county.sqlite'}"), ag.parse_agencies_csv(AGENCIES))
