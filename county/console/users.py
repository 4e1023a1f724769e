"""The console's users: names, roles, password hashes (argon2id), one-time passwords.

This module owns the ``users`` table (migration 0004). Passwords are hashed with
argon2-cffi's PasswordHasher (argon2id, its default cost); only the hash is stored. A
password county IT hands over (``canteen-county user add`` or ``user reset``) is a
one-time password: its hash is stored with the prefix ``once:``, and the console lets
its holder do nothing but choose a new password (docs/console.md, "Users and roles").
Functions take a SQLAlchemy Connection, so the CLI and the console share them; each
change is written to the audit log by the caller's transaction (audit.record).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, delete, insert, select, update

from county.db.schema import console_sessions, users

ROLES = ("admin", "finance", "inspector")
ONE_TIME = "once:"
NAME_RE = re.compile(r"^[\w.@-]{1,64}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 256
# Letters and digits that cannot be mistaken for each other when read aloud or copied
# from paper (no 0/O, 1/l/I).
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"

HASHER = PasswordHasher()
_dummy_hash: str | None = None
# Password checks running at once: each takes 64 MiB and a third of a second of CPU, so
# a flood of logins under many names queues here instead of taking every core (and the
# memory) from the pages and the terminals' server on the same machine.
_CHECKS = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))


class UserError(ValueError):
    """A user command or form that cannot be done; the message is one line."""


@dataclass(frozen=True)
class UserRow:
    name: str
    role: str
    password_hash: str
    created_ms: int
    disabled_ms: int | None

    @property
    def one_time(self) -> bool:
        """True while the user still holds a one-time password and must choose a new one."""
        return self.password_hash.startswith(ONE_TIME)

    @property
    def disabled(self) -> bool:
        return self.disabled_ms is not None


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserError(f"user name {name[:80]!r}: 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def new_one_time_password() -> str:
    """16 random characters in four groups (about 79 bits), e.g. k7m2-p9xq-4tzn-h3wd."""
    chars = "".join(secrets.choice(_ALPHABET) for _ in range(16))
    return "-".join(chars[i : i + 4] for i in range(0, 16, 4))


def hash_password(password: str, one_time: bool = False) -> str:
    return (ONE_TIME if one_time else "") + HASHER.hash(password)


def password_problem(name: str, password: str) -> str | None:
    """Why ``password`` is not acceptable as ``name``'s new password, or None. The rule
    (docs/console.md): 10 to 256 characters, not the user name, not one repeated character."""
    if len(password) < MIN_PASSWORD:
        return "too_short"
    if len(password) > MAX_PASSWORD:
        return "too_long"
    if password.strip().lower() == name.lower():
        return "is_name"
    if len(set(password)) < 3:
        return "too_simple"
    return None


def verify_password(row: UserRow | None, password: str) -> bool:
    """True when ``password`` is ``row``'s. An unknown user (None) costs the same time as
    a known one, so the answer's delay does not tell which names exist."""
    global _dummy_hash
    if row is None:
        if _dummy_hash is None:
            _dummy_hash = HASHER.hash(secrets.token_hex(16))
        stored = _dummy_hash
    else:
        stored = row.password_hash.removeprefix(ONE_TIME)
    try:
        with _CHECKS:
            HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return row is not None


def _row(r: Any) -> UserRow:
    return UserRow(r[0], r[1], r[2], r[3], r[4])


def get_user(conn: Connection, name: str) -> UserRow | None:
    r = conn.execute(
        select(
            users.c.name, users.c.role, users.c.password_hash, users.c.created_ms,
            users.c.disabled_ms,
        ).where(users.c.name == name)
    ).first()  # fmt: skip
    return None if r is None else _row(r)


def list_users(conn: Connection) -> list[UserRow]:
    rows = conn.execute(
        select(
            users.c.name, users.c.role, users.c.password_hash, users.c.created_ms,
            users.c.disabled_ms,
        ).order_by(users.c.name)
    )  # fmt: skip
    return [_row(r) for r in rows]


def add_user(conn: Connection, name: str, role: str, now_ms: int) -> str:
    """Add ``name`` with ``role``; return its one-time password."""
    check_name(name)
    check_role(role)
    if get_user(conn, name) is not None:
        raise UserError(f"user {name} exists already; 'user reset {name}' gives a new password")
    password = new_one_time_password()
    conn.execute(
        insert(users).values(
            name=name,
            role=role,
            password_hash=hash_password(password, one_time=True),
            created_ms=now_ms,
            disabled_ms=None,
        )
    )
    return password


def _existing(conn: Connection, name: str) -> UserRow:
    row = get_user(conn, name)
    if row is None:
        raise UserError(f"no user {name[:80]!r}; 'user list' shows them")
    return row


def end_sessions(conn: Connection, name: str) -> int:
    """Log ``name`` out everywhere; return how many sessions ended."""
    return conn.execute(
        delete(console_sessions).where(console_sessions.c.user_name == name)
    ).rowcount


def disable_user(conn: Connection, name: str, now_ms: int) -> bool:
    """Refuse ``name``'s logins from now on and end its sessions; False if it was already."""
    row = _existing(conn, name)
    end_sessions(conn, name)
    if row.disabled:
        return False
    conn.execute(update(users).where(users.c.name == name).values(disabled_ms=now_ms))
    return True


def enable_user(conn: Connection, name: str) -> bool:
    row = _existing(conn, name)
    if not row.disabled:
        return False
    conn.execute(update(users).where(users.c.name == name).values(disabled_ms=None))
    return True


def reset_user(conn: Connection, name: str) -> str:
    """A new one-time password for ``name`` (its sessions end); return it."""
    _existing(conn, name)
    password = new_one_time_password()
    conn.execute(
        update(users)
        .where(users.c.name == name)
        .values(password_hash=hash_password(password, one_time=True))
    )
    end_sessions(conn, name)
    return password


def set_password(conn: Connection, name: str, password: str, one_time: bool = False) -> None:
    """Store ``password`` as ``name``'s (checked by password_problem before)."""
    _existing(conn, name)
    conn.execute(
        update(users)
        .where(users.c.name == name)
        .values(password_hash=hash_password(password, one_time=one_time))
    )
