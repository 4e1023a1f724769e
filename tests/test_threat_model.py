"""docs/threat-model.md stays true: every test it names exists, and every attacker in it has
at least one test named for what they cannot do."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "threat-model.md"

# `tests/test_x.py::test_name`, or `::test_name` for the file named last.
_REF = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def _references(
    section: str, last_file: str | None
) -> tuple[list[tuple[str, str | None]], str | None]:
    refs: list[tuple[str, str | None]] = []
    for match in _REF.finditer(section):
        file, name = match.group(1), match.group(2)
        if file is None and name is None:
            continue
        file = file or last_file
        assert file is not None, f"::{name} names no file before it"
        refs.append((file, name))
        last_file = file
    return refs, last_file


def test_every_named_test_exists_and_every_attacker_has_one() -> None:
    text = DOC.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    attackers = [s for s in sections if re.match(r"\d+\. ", s)]
    assert len(attackers) >= 5
    last_file: str | None = None
    for section in attackers:
        refs, last_file = _references(section, last_file)
        title = section.splitlines()[0]
        assert refs, f"attacker '{title}' names no test"
        for file, name in refs:
            path = ROOT / file
            assert path.is_file(), f"{title}: {file} does not exist"
            if name is not None:
                assert name in _tests_in(path), f"{title}: {file}::{name} does not exist"
