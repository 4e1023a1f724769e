"""The county database's tables, as one SQLAlchemy model for SQLite and PostgreSQL.

This module owns the shape of every county table: columns, keys, and the indexes the
intake checks and the reports answer from. Queries in the county build on these Table
objects. It never connects to a database and never changes one: the Alembic
migrations in county/db/migrations/ do that, each with its own frozen copy of what
it creates, so that this model may move on without rewriting history.

Types: times are integer milliseconds since the epoch (BIGINT on PostgreSQL), hashes
and keys are bytes (BLOB, bytea), money is integer fen. SQLite tables are STRICT
(a column holds only its declared type), which admits INTEGER but not BIGINT: the
``Int`` type renders INTEGER there (SQLite's integers are 64-bit anyway).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

Int = BigInteger().with_variant(Integer(), "sqlite")
# An id the database assigns: SQLite's INTEGER PRIMARY KEY (the rowid), an identity
# column on PostgreSQL.
Serial = BigInteger().with_variant(Integer(), "sqlite")
Bytes = LargeBinary()

metadata = MetaData()

terminals = Table(
    "terminals",
    metadata,
    Column("terminal_id", Text, primary_key=True),
    Column("canteen", Text, nullable=False),
    Column("code_hash", Bytes, unique=True),
    Column("code_expires_ms", Int),
    Column("cert_sha256", Text, unique=True),
    Column("ledger_key", Bytes),
    Column("registered_ms", Int, nullable=False),
    Column("provisioned_ms", Int),
    Column("last_seen_ms", Int),
    Column("acked_seq", Int, nullable=False, server_default=text("0")),
    Column("last_hash", Bytes, nullable=False),
    # A retired id (migration 0004): its certificate revoked, no longer reported as silent;
    # replaced_by names the terminal id that took its canteen's place, if any.
    Column("retired_ms", Int),
    Column("retired_reason", Text),
    Column("replaced_by", Text),
    sqlite_strict=True,
)

# Every acknowledged ledger entry of every terminal, as the terminal hashed it.
entries = Table(
    "entries",
    metadata,
    Column("terminal", Text, nullable=False),
    Column("canteen", Text, nullable=False),
    Column("seq", Int, nullable=False),
    Column("entry_id", Text, nullable=False),
    Column("at_ms", Int, nullable=False),
    Column("kind", Text, nullable=False),
    Column("verdict", Text),
    Column("reason", Text),
    Column("method", Text),
    Column("cadre", Text),
    Column("credential", Text),
    Column("ctr", Int),
    Column("unit", Text),
    Column("day", Text),
    Column("meal", Text),
    Column("amount_fen", Int, nullable=False),
    Column("ref_seq", Int),
    Column("detail", Text, nullable=False),
    Column("prev_hash", Bytes, nullable=False),
    Column("hash", Bytes, nullable=False),
    Column("received_ms", Int, nullable=False),
    PrimaryKeyConstraint("terminal", "seq"),
    sqlite_strict=True,
    sqlite_with_rowid=False,
)
_ACCEPTED_SALE = text("kind = 'sale' AND verdict = 'accept'")
Index(
    "entries_presentation",
    entries.c.credential,
    entries.c.ctr,
    sqlite_where=_ACCEPTED_SALE,
    postgresql_where=_ACCEPTED_SALE,
)
Index(
    "entries_served",
    entries.c.cadre,
    entries.c.day,
    entries.c.meal,
    sqlite_where=_ACCEPTED_SALE,
    postgresql_where=_ACCEPTED_SALE,
)
_REVERSAL = text("kind = 'reversal'")
Index(
    "entries_reversals",
    entries.c.terminal,
    entries.c.ref_seq,
    sqlite_where=_REVERSAL,
    postgresql_where=_REVERSAL,
)
# The report indexes (migration 0002): reports and `entries` by date range, canteen,
# agency (the diner's unit) and terminal answer from these, not from a scan of the table.
Index("entries_canteen_day", entries.c.canteen, entries.c.day)
Index("entries_day", entries.c.day)
Index("entries_unit_day", entries.c.unit, entries.c.day)
Index("entries_terminal_at", entries.c.terminal, entries.c.at_ms)
# BRIN on PostgreSQL: tiny, and entries arrive roughly in time order.
Index("entries_at_ms", entries.c.at_ms, postgresql_using="brin")

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("terminal", Text, nullable=False),
    Column("seq", Int, nullable=False),
    Column("hash", Bytes, nullable=False),
    Column("at_ms", Int, nullable=False),
    Column("signature", Bytes, nullable=False),
    PrimaryKeyConstraint("terminal", "seq"),
    sqlite_strict=True,
    sqlite_with_rowid=False,
)

# Batches that arrived ahead of a gap, kept until the gap fills (or they expire).
held_batches = Table(
    "held_batches",
    metadata,
    Column("terminal", Text, nullable=False),
    Column("first_seq", Int, nullable=False),
    Column("last_seq", Int, nullable=False),
    Column("body", Text, nullable=False),
    Column("received_ms", Int, nullable=False),
    PrimaryKeyConstraint("terminal", "first_seq", "last_seq"),
    sqlite_strict=True,
)

alarms = Table(
    "alarms",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("terminal", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("seq", Int, nullable=False),
    Column("theirs", Bytes),
    Column("ours", Bytes),
    Column("problem", Text, nullable=False),
    Column("first_ms", Int, nullable=False),
    Column("last_ms", Int, nullable=False),
    Column("times", Int, nullable=False, server_default=text("1")),
    # The review (migration 0006, county/review.py): confirmed or withdrawn, by whom,
    # when and why; NULL until someone decides.
    Column("confirmed_ms", Int),
    Column("confirmed_by", Text),
    Column("confirmed_reason", Text),
    Column("withdrawn_ms", Int),
    Column("withdrawn_by", Text),
    Column("withdrawn_reason", Text),
    UniqueConstraint("terminal", "kind", "seq", "theirs"),
    sqlite_strict=True,
)

conflicts = Table(
    "conflicts",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("credential", Text),
    Column("cadre", Text),
    Column("unit", Text),
    Column("day", Text),
    Column("meal", Text),
    Column("first_terminal", Text, nullable=False),
    Column("first_seq", Int, nullable=False),
    Column("second_terminal", Text, nullable=False),
    Column("second_seq", Int, nullable=False),
    Column("found_ms", Int, nullable=False),
    Column("first_canteen", Text),
    Column("second_canteen", Text),
    Column("first_method", Text),
    Column("second_method", Text),
    Column("first_hash", Bytes),
    Column("second_hash", Bytes),
    Column("first_at_ms", Int),
    Column("second_at_ms", Int),
    Column("name", Text),
    Column("reason", Text),
    Column("withdrawn_ms", Int),
    Column("withdrawn_reason", Text),
    # The review (migration 0006, county/review.py): who withdrew it (a console user,
    # cli:<login>, or reversal:<terminal> for a staff reversal), or who confirmed it.
    Column("withdrawn_by", Text),
    Column("confirmed_ms", Int),
    Column("confirmed_by", Text),
    Column("confirmed_reason", Text),
    # Found once: the second entry of a pair names the conflict.
    UniqueConstraint("kind", "second_terminal", "second_seq"),
    sqlite_strict=True,
)

# Issuer keys the county verifies phone codes with: every key it ever published or
# imported, with its own window, so a key retired since still proves older sales.
issuer_keys = Table(
    "issuer_keys",
    metadata,
    Column("public_key", Bytes, nullable=False),
    Column("iss", Text, nullable=False),
    Column("kid", Bytes, nullable=False),
    Column("not_before", Int),
    Column("not_after", Int),
    Column("added_ms", Int, nullable=False),
    PrimaryKeyConstraint("public_key", "iss", "kid"),
    sqlite_strict=True,
)
Index("issuer_keys_kid", issuer_keys.c.kid)

# The accepted sales the county verified itself (county/evidence.py): the only rows the
# cross-terminal checks read. A sale that proves nothing is stored but never here.
evidence = Table(
    "evidence",
    metadata,
    Column("terminal", Text, nullable=False),
    Column("seq", Int, nullable=False),
    Column("canteen", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("cadre", Text, nullable=False),
    Column("name", Text),
    Column("credential", Text, nullable=False),
    Column("ctr", Int),
    Column("day", Text),
    Column("meal", Text),
    Column("t", Int, nullable=False),
    Column("at_ms", Int, nullable=False),
    Column("hash", Bytes, nullable=False),
    Column("received_ms", Int, nullable=False),
    PrimaryKeyConstraint("terminal", "seq"),
    sqlite_strict=True,
    sqlite_with_rowid=False,
)
_HAS_CTR = text("ctr IS NOT NULL")
Index(
    "evidence_presentation",
    evidence.c.credential,
    evidence.c.ctr,
    sqlite_where=_HAS_CTR,
    postgresql_where=_HAS_CTR,
)
Index("evidence_served", evidence.c.cadre, evidence.c.day, evidence.c.meal)

# What each conflict revokes. A credential stays revoked while one conflict that names
# it stands; withdrawing the last one lifts it.
conflict_revocations = Table(
    "conflict_revocations",
    metadata,
    Column("conflict_id", Int, nullable=False),
    Column("credential", Text, nullable=False),
    Column("entry", Text, nullable=False),
    Column("created_ms", Int, nullable=False),
    PrimaryKeyConstraint("conflict_id", "credential"),
    sqlite_strict=True,
)

counters = Table(
    "counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Int, nullable=False),
    sqlite_strict=True,
)

# Each terminal's newest clock offset, read from its time_signal entries at intake.
# scanned_seq: how far its entries were read; ahead_ms: its wall clock minus the
# county's time, from the entry at seq (NULL until one arrives).
clock_offsets = Table(
    "clock_offsets",
    metadata,
    Column("terminal", Text, primary_key=True),
    Column("scanned_seq", Int, nullable=False),
    Column("seq", Int),
    Column("ahead_ms", Int),
    Column("server_ms", Int),
    Column("noted_ms", Int, nullable=False),
    sqlite_strict=True,
)

# The agency directory (protocol/agencies.py): agencies at four levels and the canteens
# they operate, imported by county IT and published to the terminals (migration 0003).
agencies = Table(
    "agencies",
    metadata,
    Column("code", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("level", Text, nullable=False),
    Column("parent", Text),
    Column("finance_account", Text, nullable=False, server_default=text("''")),
    Column("imported_ms", Int, nullable=False),
    sqlite_strict=True,
)

canteens = Table(
    "canteens",
    metadata,
    Column("canteen", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("operator", Text, nullable=False),
    Column("imported_ms", Int, nullable=False),
    sqlite_strict=True,
)

# Cadres as the roster names them (cadre = "iss/sub"), with the bank account their meals
# are debited from and their monthly meal allowance, for reconciliation and allowances.
cadres = Table(
    "cadres",
    metadata,
    Column("cadre", Text, primary_key=True),
    Column("unit", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("account", Text),
    Column("monthly_allowance_fen", Int),
    Column("imported_ms", Int, nullable=False),
    sqlite_strict=True,
)
Index("cadres_account", cadres.c.account)

# A month's settlement reads accepted sales by time with the columns it sums, from the
# index alone (migration 0003; docs/county-scale.md "Month report").
Index(
    "entries_sales_at",
    entries.c.at_ms,
    entries.c.canteen,
    entries.c.unit,
    entries.c.meal,
    entries.c.amount_fen,
    sqlite_where=_ACCEPTED_SALE,
    postgresql_where=_ACCEPTED_SALE,
)
# The inspection's multi-canteen days read each accepted sale's cadre and canteen by
# time from the index alone (migration 0006; docs/inspection.md "Speed").
Index(
    "entries_sales_cadre",
    entries.c.at_ms,
    entries.c.cadre,
    entries.c.canteen,
    sqlite_where=_ACCEPTED_SALE,
    postgresql_where=_ACCEPTED_SALE,
)

# The web console (migration 0004, docs/console.md): who may log in and with which role,
# their logins (kept only as a hash of the cookie), and the audit log of every change.
users = Table(
    "users",
    metadata,
    Column("name", Text, primary_key=True),
    Column("role", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_ms", Int, nullable=False),
    Column("disabled_ms", Int),
    sqlite_strict=True,
)

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", Bytes, primary_key=True),
    Column("user_name", Text, nullable=False),
    Column("created_ms", Int, nullable=False),
    Column("expires_ms", Int, nullable=False),
    Column("csrf", Text, nullable=False),
    sqlite_strict=True,
)
Index("console_sessions_user", console_sessions.c.user_name)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("at_ms", Int, nullable=False),
    Column("user_name", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text, nullable=False, server_default=text("''")),
    Column("detail", Text, nullable=False, server_default=text("''")),
    sqlite_strict=True,
)
Index("audit_log_at", audit_log.c.at_ms)

# The fleet (migration 0005, docs/fleet.md): what each terminal last said about itself in
# the optional ``status`` of an upload, and its recent uploads (at most 500 per terminal).
terminal_status = Table(
    "terminal_status",
    metadata,
    Column("terminal", Text, primary_key=True),
    Column("reported_ms", Int, nullable=False),
    Column("software", Text),
    Column("last_seq", Int),
    Column("update_set", Int),
    Column("lists", Text, nullable=False, server_default=text("'{}'")),
    Column("status", Text, nullable=False, server_default=text("'{}'")),
    sqlite_strict=True,
)

sync_log = Table(
    "sync_log",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("terminal", Text, nullable=False),
    Column("at_ms", Int, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("accepted", Int, nullable=False, server_default=text("0")),
    Column("duplicates", Int, nullable=False, server_default=text("0")),
    Column("acked_seq", Int),
    Column("last_seq", Int),
    Column("alarm", Text),
    sqlite_strict=True,
)
Index("sync_log_terminal", sync_log.c.terminal, sync_log.c.id)

# The summaries the intake keeps beside the entries (migration 0007, county/rollups.py;
# docs/console.md "Speed"): what the console's inspection and meals pages read instead of
# every sale of a year. Each can be rebuilt from the entries (`canteen-county db rollups`).
#
# Visiting sales: accepted sales of a cadre whose agency is not the canteen's operator
# (reversed or not), the only sales a reception batch can hold.
visits = Table(
    "visits",
    metadata,
    Column("terminal", Text, nullable=False),
    Column("seq", Int, nullable=False),
    Column("canteen", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("cadre", Text, nullable=False),
    Column("at_ms", Int, nullable=False),
    Column("amount_fen", Int, nullable=False),
    # How far (ms) the nearest other visit of the same canteen and agency is, NULL for
    # none: a visit with none closer than the batch window is in no batch.
    Column("near_ms", Int),
    PrimaryKeyConstraint("terminal", "seq"),
    sqlite_strict=True,
    sqlite_with_rowid=False,
)
Index("visits_at", visits.c.at_ms)
Index("visits_run", visits.c.canteen, visits.c.unit, visits.c.at_ms)
# Meals and fen of the accepted sales not reversed, per quarter hour (UTC ms // 900,000:
# every zone's offset is whole quarters, so a local day or a meal window on quarters is a
# range of slots) and canteen.
sales_slots = Table(
    "sales_slots",
    metadata,
    Column("slot", Int, nullable=False),
    Column("canteen", Text, nullable=False),
    Column("meals", Int, nullable=False),
    Column("fen", Int, nullable=False),
    PrimaryKeyConstraint("slot", "canteen"),
    sqlite_strict=True,
    sqlite_with_rowid=False,
)
# The same per local day (of the zone in rollups_meta), canteen and the diner's agency
# ('' for none): what spending per agency and month sums.
sales_days = Table(
    "sales_days",
    metadata,
    Column("day_no", Int, nullable=False),  # days since 1970-01-01, local
    Column("canteen", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("meals", Int, nullable=False),
    Column("fen", Int, nullable=False),
    PrimaryKeyConstraint("day_no", "canteen", "unit"),
    sqlite_strict=True,
    sqlite_with_rowid=False,
)
# Cadres with accepted sales at two canteens or more on one local day of the zone in
# rollups_meta (kept when one of them arrives; never removed when a sale is reversed):
# the multi-canteen finder looks only at these cadres and days.
multi_days = Table(
    "multi_days",
    metadata,
    Column("cadre", Text, nullable=False),
    Column("day_no", Int, nullable=False),  # days since 1970-01-01, local
    PrimaryKeyConstraint("day_no", "cadre"),
    sqlite_strict=True,
    sqlite_with_rowid=False,
)
# What the summaries were built for: ``zone`` (the IANA zone of sales_days and
# multi_days), ``unsummed``, ``fill`` (county/rollups.py).
rollups_meta = Table(
    "rollups_meta",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
    sqlite_strict=True,
)
