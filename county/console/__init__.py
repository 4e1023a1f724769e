"""The county web console (issue 16, docs/console.md): server-rendered pages at /console
for county IT (admin), finance and discipline inspection (inspector, read-only).

It runs on its own listener (``canteen-county console``), never on the terminals' mTLS
API. app.py builds the FastAPI application from a ConsoleConfig; auth.py holds logins,
sessions, roles and CSRF; users.py the console's users and their password hashes;
audit.py the audit log; i18n.py the Chinese and English texts; render.py the Jinja2
templates in templates/ and the shared layout; pages/ one module per group of pages,
each with an APIRouter, listed in pages.PAGES.
"""
