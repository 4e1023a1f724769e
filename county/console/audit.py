"""The audit log: who did what, when, through the console or a county command.

``record`` writes one row of ``audit_log`` (migration 0004) in the caller's transaction,
so a change and its record are committed together or not at all. Actions are short
dotted words (``login``, ``login.failed``, ``logout``, ``password.change``,
``user.add``, ``conflict.withdraw``, ...); ``target`` names what was acted on, ``detail``
says the rest in a line. The admin reads the log at /console/audit; scripts read it with
``canteen-county audit --from --to`` (JSON lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, func, insert, select

from county.db.schema import audit_log

# What one row may hold: longer text is cut (a hostile form field must not fill the disk).
MAX_USER = 64
MAX_ACTION = 64
MAX_TARGET = 200
MAX_DETAIL = 2000


def _cut(text: str, most: int) -> str:
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= most else text[: most - 1] + "…"


def record(
    conn: Connection,
    *,
    user: str,
    action: str,
    target: str = "",
    detail: str = "",
    at_ms: int,
) -> None:
    """Write one audit row in ``conn``'s transaction."""
    conn.execute(
        insert(audit_log).values(
            at_ms=at_ms,
            user_name=_cut(user, MAX_USER),
            action=_cut(action, MAX_ACTION),
            target=_cut(target, MAX_TARGET),
            detail=_cut(detail, MAX_DETAIL),
        )
    )


@dataclass(frozen=True)
class AuditFilter:
    user: str | None = None
    action: str | None = None  # an exact action, or a prefix ending in "." (``user.``)
    start_ms: int | None = None  # included
    end_ms: int | None = None  # excluded


def _where(query: Select[Any], f: AuditFilter) -> Select[Any]:
    if f.user:
        query = query.where(audit_log.c.user_name == f.user)
    if f.action:
        if f.action.endswith("."):
            query = query.where(audit_log.c.action.startswith(f.action, autoescape=True))
        else:
            query = query.where(audit_log.c.action == f.action)
    if f.start_ms is not None:
        query = query.where(audit_log.c.at_ms >= f.start_ms)
    if f.end_ms is not None:
        query = query.where(audit_log.c.at_ms < f.end_ms)
    return query


_COLUMNS = (
    audit_log.c.id,
    audit_log.c.at_ms,
    audit_log.c.user_name,
    audit_log.c.action,
    audit_log.c.target,
    audit_log.c.detail,
)


def _doc(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "at_ms": r.at_ms,
        "user": r.user_name,
        "action": r.action,
        "target": r.target,
        "detail": r.detail,
    }


def page(conn: Connection, f: AuditFilter, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """Rows matching ``f``, newest first."""
    query = _where(select(*_COLUMNS), f).order_by(audit_log.c.at_ms.desc(), audit_log.c.id.desc())
    return [_doc(r) for r in conn.execute(query.limit(limit).offset(offset))]


def count(conn: Connection, f: AuditFilter) -> int:
    return int(conn.execute(_where(select(func.count()).select_from(audit_log), f)).scalar_one())


def iter_rows(conn: Connection, f: AuditFilter) -> Iterator[dict[str, Any]]:
    """Rows matching ``f``, oldest first (the CLI's JSON lines)."""
    query = _where(select(*_COLUMNS), f).order_by(audit_log.c.at_ms, audit_log.c.id)
    for r in conn.execute(query.execution_options(yield_per=1000)):
        yield _doc(r)


def actions(conn: Connection) -> list[str]:
    """The distinct actions in the log (the filter's choices)."""
    return [
        r[0]
        for r in conn.execute(select(audit_log.c.action).distinct().order_by(audit_log.c.action))
    ]


def failures_since(conn: Connection, user: str, since_ms: int) -> list[int]:
    """Times of ``user``'s failed logins since ``since_ms`` that no successful login
    followed, newest first (the login throttle, auth.py)."""
    last_ok = conn.execute(
        select(func.max(audit_log.c.at_ms)).where(
            audit_log.c.at_ms >= since_ms,
            audit_log.c.user_name == user,
            audit_log.c.action == "login",
        )
    ).scalar_one()
    start = max(since_ms, (last_ok + 1) if last_ok is not None else since_ms)
    rows = conn.execute(
        select(audit_log.c.at_ms)
        .where(
            audit_log.c.at_ms >= start,
            audit_log.c.user_name == user,
            audit_log.c.action == "login.failed",
        )
        .order_by(audit_log.c.at_ms.desc())
    )
    return [r[0] for r in rows]
