"""Writing the county's finance tables as JSON lines, CSV or XLSX: the last display step.

This module owns how a table of rows leaves the county for a finance office or a script:
the three formats, money shown as yuan, Chinese headers, and an output file that appears
whole or not at all. It never reads the database and never decides what a row holds: the
settlement (county/settlement.py) and the bank reconciliation hand it ``Table``s whose
rows are plain dicts, possibly a lazy iterator over millions of database rows, which it
writes one at a time without keeping them.

Money is integer fen in every row. Only here does it become yuan, and only in the formats
people read:

- JSON lines (``json``): each row as one JSON object on one line (whatever line breaks
  its text holds: U+0085, U+2028 and U+2029 are escaped too), every key the row has,
  money as integer fen under its ``*_fen`` key. For scripts; the rows of several tables follow one
  another (each caller marks its rows, e.g. ``"row": "detail"``).
- CSV (``csv``): one table, UTF-8 with a byte-order mark (so Excel shows the Chinese),
  the Chinese headers, money as yuan text with two decimals and no thousands separator
  ("1234.50", "-3.00"), exact, never through floating point.
  Text that a spreadsheet would take for a formula (starting with =, +, -, @, a tab or a
  carriage return: an agency named ``=cmd|' /C calc'!A0``) gets a leading apostrophe,
  which Excel reads as "this is text" and does not show.
- XLSX (``xlsx``): one sheet per table, Chinese headers in bold, the header row frozen,
  money as numeric yuan cells (an exact Decimal) with the number format ``#,##0.00``.
  Text cells are always text, never formulas, whatever they start with; a control
  character XML cannot hold is shown as U+FFFD.
  A sheet holds at most 1,048,576 rows; a longer table continues on "TITLE (2)", and so
  on, each with its header. Written by openpyxl's write-only workbook, which keeps rows
  in a temporary file, not in memory.

An output file is written as a temp file beside it and renamed over the name only once
every row is written: a failure half-way (a database that stops answering, a full disk)
leaves no file, or the old one, never a half-written table.
"""

from __future__ import annotations

import contextlib
import csv
import decimal
import io
import json
import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FORMATS = ("json", "csv", "xlsx")
MONEY_FORMAT = "#,##0.00"
# Rows of one XLSX sheet, its header included (Excel's limit).
XLSX_MAX_ROWS = 1_048_576
_SHEET_TITLE_BAD = set("[]:*?/\\")
# What starts a formula in a spreadsheet that opens a CSV file (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportError(Exception):
    """The table cannot be written as asked (a format, an output, a sheet title); one line."""


@dataclass(frozen=True)
class Column:
    """One column of a table: the row key, its Chinese header, and whether it is money
    (integer fen in the row; yuan in CSV and XLSX). ``width``: characters in XLSX."""

    key: str
    zh: str
    money: bool = False
    width: int | None = None


@dataclass(frozen=True)
class Table:
    """Rows under columns. ``title`` names the XLSX sheet (at most 31 characters, none
    of []:*?/\\). ``rows`` may be a one-pass iterator: it is read once, as it is written."""

    title: str
    columns: Sequence[Column]
    rows: Iterable[Mapping[str, Any]]

    def __post_init__(self) -> None:
        if not self.title or len(self.title) > 31 or _SHEET_TITLE_BAD & set(self.title):
            raise ExportError(f"sheet title {self.title!r}: 1 to 31 characters, none of []:*?/\\")


def yuan_text(fen: int) -> str:
    """Integer fen as yuan with two decimals ("1234.50", "-0.05"), exactly."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{whole}.{cents:02d}"


def yuan(fen: int) -> decimal.Decimal:
    """Integer fen as an exact Decimal of yuan (what an XLSX money cell holds)."""
    return decimal.Decimal(int(fen)).scaleb(-2)


def check_output(fmt: str, out: str | Path | None) -> Path | None:
    """Refuse a format or an output that cannot work, before anything is read or written:
    an unknown format, XLSX to standard output, a folder or a missing folder as --out."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if out is None or str(out) == "-":
        if fmt == "xlsx":
            raise ExportError("an xlsx workbook needs a file: --out FILE.xlsx")
        return None
    path = Path(out)
    if path.is_dir():
        raise ExportError(f"--out {path}: is a folder, not a file")
    if not path.parent.is_dir():
        raise ExportError(f"--out {path}: no such folder {path.parent}")
    return path


def write_tables(
    tables: Sequence[Table], fmt: str, out: str | Path | None, stdout: IO[str] | None = None
) -> int:
    """Write ``tables`` as ``fmt`` to the file ``out`` (atomically), or to ``stdout`` when
    ``out`` is None or "-" (JSON lines and CSV only). CSV takes exactly one table. Returns
    the number of rows written."""
    path = check_output(fmt, out)
    if fmt == "csv" and len(tables) != 1:
        raise ExportError(f"a csv file holds one table, not {len(tables)}")
    if path is None:
        stream = stdout if stdout is not None else sys.stdout
        if fmt == "json":
            return _write_json(tables, stream)
        return _write_csv(tables[0], stream, bom=False)
    with _atomic(path) as tmp:
        if fmt == "xlsx":
            return _write_xlsx(tables, tmp)
        # newline="" lets the csv module end its lines with \r\n itself (RFC 4180).
        encoding = "utf-8-sig" if fmt == "csv" else "utf-8"
        with open(tmp, "w", encoding=encoding, newline="") as f:
            n = _write_json(tables, f) if fmt == "json" else _write_csv(tables[0], f, bom=True)
            f.flush()
            os.fsync(f.fileno())
        return n


def write_rows(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[Column],
    fmt: str,
    out: str | Path | None,
    title: str = "Sheet1",
    stdout: IO[str] | None = None,
) -> int:
    """One table: ``write_tables([Table(title, columns, rows)], fmt, out)``."""
    return write_tables([Table(title, columns, rows)], fmt, out, stdout)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temp file beside ``path``, renamed over it when the block ends, removed if it
    raises. Its mode is a new file's under the process's umask, as open() would give."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# Characters json.dumps(ensure_ascii=False) leaves raw that Python's str.splitlines()
# (and other line readers) take for a line break; inside a JSON string they are escaped.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _write_json(tables: Sequence[Table], f: IO[str]) -> int:
    n = 0
    for table in tables:
        for row in table.rows:
            line = json.dumps(dict(row), ensure_ascii=False, separators=(",", ":"))
            f.write(line.translate(_LINE_BREAKS) + "\n")
            n += 1
    return n


def _cell_text(value: Any, money: bool) -> Any:
    if value is None:
        return ""
    if money:
        return yuan_text(int(value))
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        # Names and codes come from files and terminals the county does not control.
        return "'" + value
    return value


def _write_csv(table: Table, f: IO[str], bom: bool) -> int:
    del bom  # the file's encoding (utf-8-sig) writes it; standard output gets none
    writer = csv.writer(f, lineterminator="\r\n")
    writer.writerow([c.zh for c in table.columns])
    n = 0
    for row in table.rows:
        writer.writerow([_cell_text(row.get(c.key), c.money) for c in table.columns])
        n += 1
    return n


def _write_xlsx(tables: Sequence[Table], path: Path) -> int:
    # Imported here: openpyxl comes with the county extra and only this format needs it.
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    try:
        return _fill_xlsx(wb, tables, path)
    except BaseException:
        # Rows stopped coming (a database error): close each sheet's writer and remove
        # its temporary file now, not when the process ends.
        sheets: list[Any] = list(wb.worksheets)
        for ws in sheets:
            with contextlib.suppress(Exception):
                ws.close()
            with contextlib.suppress(Exception):
                os.unlink(ws._writer.out)
        raise


def _fill_xlsx(wb: Any, tables: Sequence[Table], path: Path) -> int:
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    bold = Font(bold=True)
    n = 0

    for table in tables:
        cols = list(table.columns)

        def new_sheet(part: int, cols: list[Column] = cols, title: str = table.title) -> Any:
            name = title if part == 1 else f"{title[: 31 - len(f' ({part})')]} ({part})"
            # Typed loosely: the stubs lack the write-only sheet's column_dimensions.
            ws: Any = wb.create_sheet(name)
            for i, c in enumerate(cols, start=1):
                width = c.width or max(10, 2 * len(c.zh) + 2)
                ws.column_dimensions[get_column_letter(i)].width = width
            ws.freeze_panes = "A2"
            header = []
            for c in cols:
                cell = WriteOnlyCell(ws, value=c.zh)
                cell.font = bold
                header.append(cell)
            ws.append(header)
            return ws

        part = 1
        ws = new_sheet(part)
        in_sheet = 1
        for row in table.rows:
            if in_sheet >= XLSX_MAX_ROWS:
                part += 1
                ws = new_sheet(part)
                in_sheet = 1
            values: list[Any] = []
            for c in cols:
                value = row.get(c.key)
                if c.money and value is not None:
                    # An exact Decimal (openpyxl writes its digits); the stubs say float.
                    amount: Any = yuan(int(value))
                    cell = WriteOnlyCell(ws, value=amount)
                    cell.number_format = MONEY_FORMAT
                    values.append(cell)
                elif isinstance(value, str):
                    # openpyxl makes a formula of text starting with "="; the text of a
                    # name or a code is shown as it is, never run. A control character
                    # XML cannot hold (in a tier or unit a terminal signed, a bank's memo)
                    # is shown as U+FFFD instead of failing the whole workbook.
                    text = WriteOnlyCell(ws, value=ILLEGAL_CHARACTERS_RE.sub("\ufffd", value))
                    text.data_type = "s"
                    values.append(text)
                else:
                    values.append(value)
            ws.append(values)
            in_sheet += 1
            n += 1
    try:
        wb.save(path)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror}") from None
    return n


def csv_text(table: Table) -> str:
    """The CSV of ``table`` as text (no byte-order mark), for tests and small answers."""
    buf = io.StringIO()
    _write_csv(table, buf, bom=False)
    return buf.getvalue()


__all__ = [
    "FORMATS",
    "MONEY_FORMAT",
    "XLSX_MAX_ROWS",
    "Column",
    "ExportError",
    "Table",
    "check_output",
    "csv_text",
    "write_rows",
    "write_tables",
    "yuan",
    "yuan_text",
]
