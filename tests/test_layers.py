"""Imports follow the layers (docs/architecture.md), checked on the source of every module.

Each .py file of protocol/, terminal/, county/ and hw-sim/hwsim/ is parsed and its whole
syntax tree walked, so an import inside a function counts as much as one at the top
(``importlib.import_module`` and ``__import__`` with a literal name count too). A failure
prints one line per violation: ``file:line module (rule)``.

- protocol/ and terminal/core/ import no device, network, database, process or thread
  library, and protocol/ nothing from terminal, county or hwsim; terminal/core/ from
  terminal only terminal.core.
- Nothing in terminal/ or protocol/ imports county, hwsim, or a library only the county
  or the simulator installs (setup.cfg extras: a Pi installs neither).
- county/ imports from terminal only terminal.core and terminal.config (pure loaders).
- protocol/ and terminal/core/ keep no module-level mutable state: no module-level dict,
  list or set (literal, comprehension or constructor call), no cache decorator, no
  ``global`` statement. Frozen constants (tuple, frozenset, MappingProxyType) are fine.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {  # top-level package -> its folder
    "protocol": ROOT / "protocol",
    "terminal": ROOT / "terminal",
    "county": ROOT / "county",
    "hwsim": ROOT / "hw-sim" / "hwsim",
}

# Libraries that talk to a device, the network, a database, another process or thread, or
# the clock: protocol/ and terminal/core/ take what they need as arguments instead.
IO_LIBRARIES = frozenset(
    {
        "apscheduler",
        "asyncio",
        "concurrent",
        "cv2",
        "fastapi",
        "fcntl",
        "http",
        "multiprocessing",
        "os",
        "pathlib",
        "pyzbar",
        "requests",
        "securesystemslib",
        "select",
        "selectors",
        "serial",
        "shutil",
        "signal",
        "socket",
        "socketserver",
        "sqlite3",
        "sqlite_utils",
        "ssl",
        "starlette",
        "subprocess",
        "tempfile",
        "threading",
        "time",
        "tuf",
        "urllib",
        "urllib3",
        "uvicorn",
        "zxingcpp",
    }
)
# Installed only with the [county] or [hwsim] extra (setup.cfg), never on a Pi.
EXTRA_LIBRARIES = frozenset({"fastapi", "h11", "pydantic", "segno", "starlette", "uvicorn"})
# What the decision core may take from the terminal package: itself, and the typed
# settings (terminal/config.py reads a TOML file; it opens no device, socket or database).
CORE_MAY_USE = ("terminal.core", "terminal.config")
# What the county may take from the terminal package.
COUNTY_MAY_USE = ("terminal.core", "terminal.config")

MUTABLE_CALLS = frozenset(
    {"dict", "list", "set", "bytearray", "OrderedDict", "defaultdict", "deque", "Counter"}
)
CACHE_DECORATORS = frozenset({"lru_cache", "cache", "cached_property"})

# Known exceptions, (file, module or name): none now. A stale entry fails below.
ALLOWED: frozenset[tuple[str, str]] = frozenset({})


@dataclass(frozen=True)
class Found:
    file: str  # relative to the project's top
    line: int
    name: str  # an imported module, or a module-level name holding mutable state
    importer: str  # the module that does it

    def line_text(self, rule: str) -> str:
        return f"{self.file}:{self.line} {self.name} ({rule})"


def _modules() -> Iterator[tuple[str, Path]]:
    for top, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join([top, *parts]), path


MODULES = dict(_modules())
KNOWN = frozenset(MODULES)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module of ``from X import ...``, relative imports included."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import anywhere in the tree; ``from p import m`` of a
    project submodule ``m`` is an import of ``p.m``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            seen = []  # one line per module, however many names come from it
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found = sub if sub in KNOWN else base
                if found not in seen:
                    seen.append(found)
                    yield node.lineno, found
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                yield node.lineno, first.value


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@functools.cache
def _all_imports() -> list[Found]:
    """Every import of the project; parsed on first use, not when the module is collected
    (every test worker collects this file, and only one runs its tests)."""
    return [
        Found(_rel(path), line, name, module)
        for module, path in MODULES.items()
        for line, name in _imports(module, _parse(path))
    ]


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _top(module: str) -> str:
    return module.split(".")[0]


def _from_terminal(module: str) -> bool:
    """A module of the terminal package (its empty __init__ alone does not count)."""
    return module.startswith("terminal.")


def _report(found: list[Found], rule: str) -> list[str]:
    return [f.line_text(rule) for f in found if (f.file, f.name) not in ALLOWED]


def _layer_violations(imports: list[Found] | None = None) -> list[tuple[Found, str]]:
    out: list[tuple[Found, str]] = []
    for f in _all_imports() if imports is None else imports:
        who, what = f.importer, f.name
        in_protocol = _under(who, "protocol")
        in_core = _under(who, "terminal.core")
        if (in_protocol or in_core) and _top(what) in IO_LIBRARIES:
            out.append((f, "no device, network, database, process or clock library here"))
        if in_protocol and _top(what) in ("terminal", "county", "hwsim"):
            out.append((f, "protocol imports only protocol"))
        if in_core and _from_terminal(what) and not _under(what, *CORE_MAY_USE):
            out.append((f, "terminal.core imports from terminal only core and config"))
        if (in_protocol or _under(who, "terminal")) and _top(what) in ("county", "hwsim"):
            out.append((f, "terminal and protocol never import county or hwsim"))
        if (in_protocol or _under(who, "terminal")) and _top(what) in EXTRA_LIBRARIES:
            out.append((f, "a library of the [county] or [hwsim] extra, not installed on a Pi"))
        if _under(who, "county") and _from_terminal(what) and not _under(what, *COUNTY_MAY_USE):
            out.append((f, "county imports from terminal only terminal.core, terminal.config"))
    return out


def test_imports_follow_the_layers() -> None:
    lines = [
        f.line_text(rule) for f, rule in _layer_violations() if (f.file, f.name) not in ALLOWED
    ]
    assert not lines, "imports across the layers:\n" + "\n".join(lines)


def _mutable_value(node: ast.expr | None) -> bool:
    if isinstance(node, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in MUTABLE_CALLS or name in CACHE_DECORATORS
    return False


def _names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _names(element)
    elif isinstance(target, ast.Attribute):
        yield ast.unparse(target)


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import: the body, and what module-level if/try/with hold."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.If, ast.Try, ast.With)):
            yield from _module_level(stmt.body)
            yield from _module_level(getattr(stmt, "orelse", []))
            yield from _module_level(getattr(stmt, "finalbody", []))
            for handler in getattr(stmt, "handlers", []):
                yield from _module_level(handler.body)


def _mutable_state(module: str, file: str, tree: ast.Module) -> Iterator[Found]:
    for stmt in _module_level(tree.body):
        if isinstance(stmt, ast.Assign) and _mutable_value(stmt.value):
            for target in stmt.targets:
                for name in _names(target):
                    if name != "__all__":
                        yield Found(file, stmt.lineno, name, module)
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) and _mutable_value(stmt.value):
            for name in _names(stmt.target):
                yield Found(file, stmt.lineno, name, module)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for decorator in stmt.decorator_list:
                if _decorator_name(decorator) in CACHE_DECORATORS:
                    yield Found(file, stmt.lineno, stmt.name, module)
        if isinstance(stmt, ast.ClassDef):
            # A class attribute is module-level too: every instance shares it.
            for inner in stmt.body:
                if isinstance(inner, (ast.Assign, ast.AnnAssign)) and _mutable_value(inner.value):
                    targets = inner.targets if isinstance(inner, ast.Assign) else [inner.target]
                    for target in targets:
                        for name in _names(target):
                            yield Found(file, inner.lineno, f"{stmt.name}.{name}", module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            for name in node.names:
                yield Found(file, node.lineno, name, module)


def _state() -> list[Found]:
    return [
        f
        for module, path in MODULES.items()
        if _under(module, "protocol", "terminal.core")
        for f in _mutable_state(module, _rel(path), _parse(path))
    ]


def test_protocol_and_core_keep_no_module_level_mutable_state() -> None:
    lines = _report(
        _state(), "module-level mutable state: use a tuple, frozenset or MappingProxyType"
    )
    assert not lines, "mutable state in protocol or terminal.core:\n" + "\n".join(lines)


def test_allow_list_has_no_stale_entries() -> None:
    found = {(f.file, f.name) for f, _ in _layer_violations()}
    found |= {(f.file, f.name) for f in _state()}
    stale = sorted(ALLOWED - found)
    assert not stale, "allowed cases that are gone (remove them from ALLOWED):\n" + "\n".join(
        f"{file} {name}" for file, name in stale
    )


# ---- the checker itself: each rule catches what it should ----


def _check(module: str, source: str) -> list[str]:
    return [name for _, name in _imports(module, ast.parse(source))]


def test_imports_inside_functions_and_relative_ones_are_seen() -> None:
    source = (
        "from . import tokens\n"
        "from .. import trust\n"
        "def f():\n"
        "    import sqlite3\n"
        "    from terminal import sync\n"
        "    importlib.import_module('hwsim.cli')\n"
    )
    seen = _check("terminal.core.policy", source)
    assert seen == ["terminal.core", "terminal.trust", "sqlite3", "terminal.sync", "hwsim.cli"]
    assert _check("protocol.lists", "from .tokens import IssuerKey\n") == ["protocol.tokens"]


def test_mutable_state_finder_sees_each_kind() -> None:
    source = (
        "A = {}\nB: list[int] = []\nC = dict()\nD = (1, 2)\nE = frozenset()\n"
        "__all__ = ['x']\n"
        "@functools.lru_cache(maxsize=8)\ndef f(): pass\n"
        "class K:\n    memo = {}\n"
        "def g():\n    global A\n"
    )
    names = sorted(f.name for f in _mutable_state("probe", "probe.py", ast.parse(source)))
    assert names == ["A", "A", "B", "C", "K.memo", "f"]


def test_each_layer_rule_catches_its_case() -> None:
    cases = {
        ("protocol.lists", "sqlite3"): "no device",
        ("terminal.core.policy", "threading"): "no device",
        ("protocol.wire", "terminal.config"): "protocol imports only protocol",
        ("terminal.core.checkout", "terminal.ledger"): "terminal.core imports from terminal",
        ("terminal.commands.demo", "hwsim.wallet"): "never import county or hwsim",
        ("terminal.sync", "county.app"): "never import county or hwsim",
        ("terminal.display.server", "segno"): "extra",
        ("county.app", "terminal.sync"): "county imports from terminal only",
    }
    for (importer, name), rule in cases.items():
        found = _layer_violations([Found("x.py", 1, name, importer)])
        assert [r for _, r in found if rule in r], (importer, name)
    fine = [
        ("county.published", "terminal.config"),
        ("county.published", "terminal.core.policy"),
        ("terminal.core.checkout", "terminal.core.clock"),
        ("terminal.core.policy", "terminal.config"),
        ("terminal.sync", "requests"),
        ("protocol.tokens", "cbor2"),
        ("hwsim.county", "county.app"),
    ]
    for importer, name in fine:
        assert not _layer_violations([Found("x.py", 1, name, importer)]), (importer, name)


def test_every_package_is_in_the_distribution() -> None:
    # A package folder that setup.cfg does not list is left out of a plain (non-editable)
    # install, which the editable install of the tests would never show.
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = set()
    for top, folder in (
        ("protocol", "protocol"),
        ("terminal", "terminal"),
        ("county", "county"),
        ("hwsim", "hw-sim/hwsim"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join((top, *rel.parts)))
    assert found - listed == set(), f"not in setup.cfg [options] packages: {sorted(found - listed)}"
