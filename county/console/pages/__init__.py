"""The console's pages: one module per group, each with ``router`` (a FastAPI APIRouter).

app.py includes the router of every module named in PAGES, in this order. To add a
page group, add ONE line to PAGES (its module name under county/console/pages/).

A module may also define ``NAV``, a list of ``NavItem``: the entries it adds to the
navigation bar and the home page's cards (only those whose ``roles`` include the user's
role are shown), sorted by ``order``, then by the module's place in PAGES. ``label``
and ``about`` are i18n keys the module registers (county/console/i18n.py).

Rules a page module follows (docs/console.md):
- GET handlers depend on ``auth.require_user`` or ``auth.require_role(...)``;
- every POST handler also depends on ``auth.check_csrf`` (app.py refuses to start
  otherwise): the admin's alone, anyone else 403; ``auth.check_csrf_roles("admin",
  "finance")`` for a change finance may make too; an inspector's POST is always 403;
- every change writes one audit row (``audit.record``) in the same transaction;
- queries live in a data module of the county (county/fleet.py, ...), called with a
  Connection from ``request.app.state.engine`` (reads) or ``request.app.state.db.write()``
  (writes: on SQLite it takes the write lock first);
- pages render with ``render.render(request, "x.html", user=user, ...)``; templates extend
  base.html and call ``t("prefix.key")`` for every visible string;
- no inline script: the Content-Security-Policy (app.py) allows scripts only from the
  console's own files (county/console/static/); inline styles and data: images are fine.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL_ROLES = ("admin", "finance", "inspector")


@dataclass(frozen=True)
class NavItem:
    path: str  # e.g. "/console/fleet"
    label: str  # i18n key of the link's text
    about: str = ""  # i18n key of a line for the home page's card ("" for none)
    roles: tuple[str, ...] = ALL_ROLES
    order: int = 50  # place in the navigation: home is 0, the audit log 90, pages between


PAGES: list[str] = [
    "account",
    "home",
    "audit",
    "users",
    "replacement",
    "fleet",
    "inspection",
    "alarms",
    "meals",
]
