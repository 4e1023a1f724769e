"""The agency directory: agencies at four levels, the canteens they operate, and price tiers.

This module owns what terminal and county agree on about who eats where: the CSV files
county IT imports (agencies and canteens), the signed directory document the terminals
install, and the one rule that turns (the diner's agency, the canteen's operator) into a
price tier (docs/settlement.md "Tiers"). It works on text and JSON already read: it
never opens a file, a database or the network, and never reads a clock.

A bad file is refused whole: ``DirectoryError`` carries one line per bad row, each
naming the file's line and what is wrong, so county IT fixes them all in one pass.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# Levels, highest first; a smaller rank is a higher level.
PROVINCE = "province"
CITY = "city"
COUNTY = "county"
TOWNSHIP = "township"
LEVELS = (PROVINCE, CITY, COUNTY, TOWNSHIP)
RANK = MappingProxyType({level: rank for rank, level in enumerate(LEVELS, start=1)})
LEVEL_NAMES_ZH = MappingProxyType(
    {PROVINCE: "省级", CITY: "市级", COUNTY: "县级", TOWNSHIP: "乡镇"}
)

# Price tiers: the diner's relationship to the canteen's operator agency.
OWN = "own"
SAME_LEVEL = "same_level"
HIGHER_LEVEL = "higher_level"  # a visitor from a higher level (a city cadre at a county canteen)
LOWER_LEVEL = "lower_level"  # a visitor from a lower level (a township cadre at a county canteen)
OTHER_REGION = "other_region"  # from another county or city
UNLISTED = "unlisted"  # a unit the installed directory does not know: the visitor price
VISITOR = "visitor"  # no directory installed: every unit not the canteen's own
TIERS = (OWN, SAME_LEVEL, HIGHER_LEVEL, LOWER_LEVEL, OTHER_REGION, UNLISTED, VISITOR)
TIER_NAMES_ZH = MappingProxyType(
    {
        OWN: "本单位",
        SAME_LEVEL: "同级单位",
        HIGHER_LEVEL: "上级来客",
        LOWER_LEVEL: "下级来客",
        OTHER_REGION: "外地来客",
        UNLISTED: "未登记单位",
        VISITOR: "来客",
    }
)

AGENCY_COLUMNS = ("code", "name", "level", "parent", "finance_account")
CANTEEN_COLUMNS = ("canteen", "name", "operator")
# Codes as they appear in tokens (the unit claim), rosters and canteen ids.
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_NAME = 64
MAX_ROWS = 100_000


class DirectoryError(Exception):
    """A directory file or document is unusable; ``lines`` holds one line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class Agency:
    code: str
    name: str
    level: str
    parent: str | None
    finance_account: str

    @property
    def rank(self) -> int:
        return RANK[self.level]

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "level": self.level,
            "parent": self.parent,
            "finance_account": self.finance_account,
        }


@dataclass(frozen=True)
class Canteen:
    canteen: str
    name: str
    operator: str  # the agency that runs it

    def as_json(self) -> dict[str, Any]:
        return {"canteen": self.canteen, "name": self.name, "operator": self.operator}


class Directory:
    """Agencies by code and canteens by id, checked whole: known parents, no cycles."""

    def __init__(
        self,
        agencies: Iterable[Agency],
        canteens: Iterable[Canteen] = (),
        version: int = 0,
        issued_at: int | None = None,
    ) -> None:
        self.agencies: Mapping[str, Agency] = MappingProxyType({a.code: a for a in agencies})
        self.canteens: Mapping[str, Canteen] = MappingProxyType({c.canteen: c for c in canteens})
        self.version = version
        self.issued_at = issued_at
        self._areas: dict[str, str] = {}

    def agency(self, code: str | None) -> Agency | None:
        return None if code is None else self.agencies.get(code)

    def name_of(self, code: str | None) -> str | None:
        agency = self.agency(code)
        return None if agency is None else agency.name

    def operator_of(self, canteen: str) -> str | None:
        found = self.canteens.get(canteen)
        return None if found is None else found.operator

    def ancestors(self, code: str) -> list[str]:
        """``code`` and its parents up to the top, nearest first (the directory has no cycles)."""
        chain: list[str] = []
        current: str | None = code
        while current is not None and current in self.agencies and len(chain) <= len(self.agencies):
            chain.append(current)
            current = self.agencies[current].parent
        return chain

    def area(self, code: str) -> str:
        """The jurisdiction an agency belongs to: for a county or township agency its topmost
        county-level ancestor, for a city agency its topmost city-level ancestor, for a
        province agency the topmost province-level one."""
        found = self._areas.get(code)
        if found is not None:
            return found
        agency = self.agencies[code]
        bound = min(agency.rank, RANK[COUNTY])
        area = code
        for ancestor in self.ancestors(code)[1:]:
            if self.agencies[ancestor].rank < bound:
                break
            area = ancestor
        self._areas[code] = area
        return area

    def tier(self, diner_unit: str, operator: str | None, own_units: Iterable[str] = ()) -> str:
        """The price tier of a diner of ``diner_unit`` at a canteen run by ``operator``.

        Own: the operator itself, or a unit the canteen's settings list as its own.
        A unit not in the directory: UNLISTED. Otherwise by the two agencies' areas:
        the same area gives same/higher/lower level by rank; the diner's area containing
        the canteen's gives HIGHER_LEVEL, contained in it LOWER_LEVEL; else OTHER_REGION.
        A canteen whose operator the directory does not know treats every listed visitor
        as OTHER_REGION."""
        if diner_unit == operator or diner_unit in own_units:
            return OWN
        diner = self.agencies.get(diner_unit)
        if diner is None:
            return UNLISTED
        if operator is None or operator not in self.agencies:
            return OTHER_REGION
        host = self.agencies[operator]
        mine, theirs = self.area(diner.code), self.area(host.code)
        if mine == theirs:
            if diner.rank == host.rank:
                return SAME_LEVEL
            return HIGHER_LEVEL if diner.rank < host.rank else LOWER_LEVEL
        if mine in self.ancestors(theirs):
            return HIGHER_LEVEL
        if theirs in self.ancestors(mine):
            return LOWER_LEVEL
        return OTHER_REGION

    def as_json(self) -> dict[str, Any]:
        """The signed directory document (the ``directory.json`` target)."""
        return {
            "version": self.version,
            "issued_at": self.issued_at,
            "agencies": [a.as_json() for a in self.agencies.values()],
            "canteens": [c.as_json() for c in self.canteens.values()],
        }


def no_directory_tier(diner_unit: str, operator: str | None, own_units: Iterable[str]) -> str:
    """The tier when no directory is installed: own, or a visitor at the visitor price."""
    return OWN if diner_unit == operator or diner_unit in own_units else VISITOR


# ---- reading ----


def _rows(text: str, columns: tuple[str, ...], source: str) -> list[tuple[int, dict[str, str]]]:
    if text.startswith("\ufeff"):  # Excel writes a byte-order mark before UTF-8 CSV
        text = text[1:]
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = tuple(name.strip() for name in (reader.fieldnames or ()))
        if header != columns:
            raise DirectoryError([f"{source} line 1: the header must be {','.join(columns)}"])
        rows: list[tuple[int, dict[str, str]]] = []
        for row in reader:
            if len(rows) >= MAX_ROWS:
                raise DirectoryError([f"{source}: more than {MAX_ROWS} rows"])
            if None in row or any(v is None for v in row.values()):
                rows.append((reader.line_num, {"__bad__": "wrong number of fields"}))
                continue
            rows.append((reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()}))
    except csv.Error as exc:
        # A cell past the csv module's field limit (a file that is not a directory, or
        # an attack): the reader cannot go on, so this one line is the whole answer.
        # line_num counts the lines before the one it failed on.
        where = f"{source} line {reader.line_num + 1}"
        raise DirectoryError([f"{where}: {_csv_problem(exc)}"]) from None
    return rows


def _csv_problem(exc: csv.Error) -> str:
    if "field limit" in str(exc):
        return f"a cell is longer than {csv.field_size_limit()} characters; nothing read"
    return f"not a CSV file the csv module can read ({exc}); nothing read"


def _code(value: str, what: str) -> str | None:
    """None if ``value`` is a usable code, else what is wrong with it."""
    if not _CODE.match(value):
        return f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-'"
    return None


def _name(value: str) -> str | None:
    if not value:
        return "name is empty"
    if len(value) > MAX_NAME or any(ord(c) < 32 for c in value):
        return f"name must be 1-{MAX_NAME} printable characters"
    return None


def _account(value: str) -> str | None:
    # Printable: a NUL cannot be stored in PostgreSQL text, and a line break would break
    # the settlement's CSV and the bank's files.
    if len(value) > 64 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "finance_account must be at most 64 printable characters"
    return None


def parse_agencies_csv(text: str, source: str = "agencies CSV") -> Directory:
    """Agencies from a CSV with the header code,name,level,parent,finance_account.

    Every row is checked and every problem reported, each as one line naming the file's
    line; nothing is returned unless every row is good."""
    problems: list[str] = []
    agencies: list[Agency] = []
    lines: dict[str, int] = {}
    refused: set[str] = set()  # codes of the rows refused above
    for line, row in _rows(text, AGENCY_COLUMNS, source):
        where = f"{source} line {line}"
        if "__bad__" in row:
            problems.append(f"{where}: {row['__bad__']}")
            continue
        wrong = [
            _code(row["code"], "code"),
            _name(row["name"]),
            None
            if row["level"] in LEVELS
            else f"level {row['level']!r} is not one of {', '.join(LEVELS)}",
            _code(row["parent"], "parent") if row["parent"] else None,
            _account(row["finance_account"]),
        ]
        found = [w for w in wrong if w]
        if not found and row["code"] in lines:
            found.append(f"code {row['code']!r} is already on line {lines[row['code']]}")
        if not found and row["parent"] == row["code"]:
            found.append(f"agency {row['code']!r} is its own parent")
        if found:
            problems.append(f"{where}: {'; '.join(found)}")
            refused.add(row["code"])
            continue
        lines[row["code"]] = line
        agencies.append(
            Agency(
                code=row["code"],
                name=row["name"],
                level=row["level"],
                parent=row["parent"] or None,
                finance_account=row["finance_account"],
            )
        )
    # The good rows' links are checked even when other rows are bad, so that one pass
    # reports every problem; a parent on a bad row is not reported again.
    problems += _check_links(agencies, lambda code: f"{source} line {lines[code]}", refused)
    if problems:
        raise DirectoryError(problems)
    return Directory(agencies)


def _check_links(
    agencies: list[Agency], where: Any, refused: Collection[str] = frozenset()
) -> list[str]:
    """Unknown parents, a parent at a lower level than its child, and cycles. A parent in
    ``refused`` (a row already reported as bad) is neither unknown nor followed."""
    by_code = {a.code: a for a in agencies}
    problems = []
    for agency in agencies:
        if agency.parent is None:
            continue
        parent = by_code.get(agency.parent)
        if parent is None and agency.parent in refused:
            continue
        if parent is None:
            problems.append(f"{where(agency.code)}: parent {agency.parent!r} is not an agency")
        elif parent.rank > agency.rank:
            problems.append(
                f"{where(agency.code)}: parent {parent.code!r} is at level {parent.level}, "
                f"below this agency's level {agency.level}"
            )
    done: set[str] = set()
    for agency in agencies:
        seen: list[str] = []
        current: str | None = agency.code
        while current is not None and current in by_code and current not in done:
            if current in seen:
                cycle = [*seen[seen.index(current) :], current]
                problems.append(
                    f"{where(current)}: the parent links go round in a cycle: {' -> '.join(cycle)}"
                )
                break
            seen.append(current)
            current = by_code[current].parent
        done.update(seen)
    return problems


def parse_canteens_csv(
    text: str, directory: Directory, source: str = "canteens CSV"
) -> list[Canteen]:
    """Canteens from a CSV with the header canteen,name,operator; each operator must be an
    agency of ``directory``. Every problem is reported, one line per row."""
    problems: list[str] = []
    canteens: list[Canteen] = []
    lines: dict[str, int] = {}
    for line, row in _rows(text, CANTEEN_COLUMNS, source):
        where = f"{source} line {line}"
        if "__bad__" in row:
            problems.append(f"{where}: {row['__bad__']}")
            continue
        wrong = [
            _code(row["canteen"], "canteen"),
            _name(row["name"]),
            _code(row["operator"], "operator"),
        ]
        found = [w for w in wrong if w]
        if not found and row["operator"] not in directory.agencies:
            found.append(f"operator {row['operator']!r} is not an agency in the directory")
        if not found and row["canteen"] in lines:
            found.append(f"canteen {row['canteen']!r} is already on line {lines[row['canteen']]}")
        if found:
            problems.append(f"{where}: {'; '.join(found)}")
            continue
        lines[row["canteen"]] = line
        canteens.append(Canteen(row["canteen"], row["name"], row["operator"]))
    if problems:
        raise DirectoryError(problems)
    return canteens


def parse_directory(doc: Any, source: str = "directory") -> Directory:
    """The signed directory document, checked as the CSV files are."""
    if not isinstance(doc, dict) or not isinstance(doc.get("agencies"), list):
        raise DirectoryError([f"{source}: must be an object with 'agencies' and 'canteens'"])
    version = doc.get("version", 0)
    issued = doc.get("issued_at")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise DirectoryError([f"{source}: version must be a whole number"])
    if issued is not None and (isinstance(issued, bool) or not isinstance(issued, int)):
        raise DirectoryError([f"{source}: issued_at must be whole Unix seconds"])
    agencies = _from_json(doc["agencies"], AGENCY_COLUMNS, f"{source}: agencies")
    canteens = _from_json(doc.get("canteens") or [], CANTEEN_COLUMNS, f"{source}: canteens")
    parsed = parse_agencies_csv(_to_csv(agencies, AGENCY_COLUMNS), f"{source}: agencies")
    listed = parse_canteens_csv(_to_csv(canteens, CANTEEN_COLUMNS), parsed, f"{source}: canteens")
    return Directory(parsed.agencies.values(), listed, version, issued)


def _from_json(items: Any, columns: tuple[str, ...], where: str) -> list[dict[str, str]]:
    if not isinstance(items, list) or len(items) > MAX_ROWS:
        raise DirectoryError([f"{where}: must be a list of at most {MAX_ROWS} objects"])
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DirectoryError([f"{where} #{i}: must be an object"])
        row = {}
        for column in columns:
            value = item.get(column)
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise DirectoryError([f"{where} #{i}: {column} must be text"])
            row[column] = value
        out.append(row)
    return out


def _to_csv(rows: list[dict[str, str]], columns: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def agencies_csv(directory: Directory) -> str:
    """The directory's agencies as the CSV county IT imports (round trip)."""
    return _to_csv(
        [{k: v or "" for k, v in a.as_json().items()} for a in directory.agencies.values()],
        AGENCY_COLUMNS,
    )
