"""Table definitions shared by the stores and their migrations (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()


def _event_columns(*, indexed: bool) -> list[Column[object]]:
    """An access event's fields as columns (new objects for each table). `indexed`: the SQL log's own
    single-column indexes and unique id; the segment logs' index declares composite indexes instead."""
    return [
        Column("id", Text, nullable=False, unique=indexed),
        Column("time", String(32), nullable=False, index=indexed),
        Column("administration", Text, index=indexed),
        Column("client_id", Text),
        Column("operation", Text),
        Column("purpose", Text),
        Column("legal_basis", Text),
        Column("consent_id", Text),
        Column("subject_hash", String(64), index=indexed),
        Column("attributes_requested", Text, nullable=False),
        Column("attributes_released", Text, nullable=False),
        Column("decision", String(8), nullable=False),
        Column("reason", Text),
        Column("status", Integer, nullable=False),
        Column("latency_ms", Float, nullable=False),
        Column("trace_id", Text),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
        Column("claimed_client_id", Text),
        Column("evidence", Text),
        Column("job_id", Text),
        Column("count", Integer),
        Column("source", Text),
    ]


# One row per access event, in chain order. `time` is RFC 3339 text of fixed width, so text order is time
# order on both engines and the hashed form round-trips byte for byte.
access_events = Table(
    "access_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    *_event_columns(indexed=True),
)

# The query index of the segment logs (one per gateway process, named by its origin): a follower of the
# segments, rebuildable from them. Indexes for the officers' questions: an administration's events over
# time, one person's events, everything over time.
# `position` numbers rows in the order they became searchable, never reused (AUTOINCREMENT on SQLite):
# pages follow it, so an event indexed after a page was read comes on a later page, never behind it.
audit_index = Table(
    "audit_index",
    metadata,
    Column("position", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("origin", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    *_event_columns(indexed=False),
    UniqueConstraint("origin", "seq", name="uq_audit_index_origin_seq"),
    Index("ix_audit_index_administration_time", "administration", "time"),
    Index("ix_audit_index_subject", "subject_hash", "time"),
    Index("ix_audit_index_time", "time"),
    Index("ix_audit_index_decision_time", "decision", "time"),
    Index("ix_audit_index_id", "id"),
    sqlite_autoincrement=True,
)

# Each origin the index follows: how far it is (`next_seq`, moved in the transaction that adds its rows),
# where its numbering starts (0; 1 for a 1.0 log) and the head of the log it continues, if any.
audit_index_watermarks = Table(
    "audit_index_watermarks",
    metadata,
    Column("origin", Text, primary_key=True),
    Column("next_seq", BigInteger, nullable=False),
    Column("first_seq", BigInteger, nullable=False, server_default="0"),
    Column("link_origin", Text),
    Column("link_seq", BigInteger),
    Column("link_hash", String(64)),
    # What the origin's follower last said of its lag (seconds, and when: epoch seconds), so that every
    # process's audit reads can refuse while any follower is too far behind.
    Column("lag_s", Float, nullable=False, server_default="0"),
    Column("reported_at", Float, nullable=False, server_default="0"),
    # For a migrated 1.0 log: the one new log that continues it (claimed once, so replicas never fork it).
    Column("continued_by", Text),
)

# The signed checkpoints of every origin, copied from the logs with the entries they cover.
audit_index_checkpoints = Table(
    "audit_index_checkpoints",
    metadata,
    Column("origin", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("head_hash", String(64), nullable=False),
    Column("time", String(32), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("note", Text),  # the C2SP checkpoint over the tree at seq + 1 (none on a 1.0 log's checkpoints)
)

# The chain's head, one row: every writer (any process) locks it, so the chain has one order.
access_log_head = Table(
    "access_log_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("checkpoint_seq", BigInteger, nullable=False),
    Column("checkpoint_at", Float, nullable=False),
)

access_checkpoints = Table(
    "access_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("head_hash", String(64), nullable=False),
    Column("time", String(32), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

consents = Table(
    "consents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("subject_hash", String(64), nullable=False),
    Column("grantee", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("attributes", Text, nullable=False),
    Column("operations", Text, nullable=False),
    Column("issued_by", Text, nullable=False),
    Column("issued_by_client", Text, nullable=False),
    Column("evidence_method", Text, nullable=False),
    Column("evidence_reference", Text),
    Column("created_at", String(32), nullable=False),
    Column("expires_at", String(32), nullable=False),
    Column("revoked_at", String(32)),
    Column("max_uses", Integer),
    Column("uses", Integer, nullable=False, server_default="0"),
    Index("ix_consents_subject_grantee", "subject_hash", "grantee"),
)

# Bulk verification jobs: one row per job. The spec (purpose, claims, predicates, the fixed evaluation date)
# is frozen at creation; `request_hash` answers a replayed Idempotency-Key. Times are epoch seconds.
verification_jobs = Table(
    "verification_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("administration", Text, nullable=False),
    Column("client_id", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("spec", Text, nullable=False),
    Column("format", String(8), nullable=False),
    Column("declared_records", BigInteger),
    Column("status", String(16), nullable=False),
    Column("total", BigInteger),
    Column("input_sha256", String(64)),
    Column("input_file", Text),
    Column("jobs_dir", String(32)),  # the id of the jobs directory holding the input
    Column("reason", Text),
    Column("created_at", Float, nullable=False),
    Column("queued_at", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("expires_at", Float),
    UniqueConstraint("administration", "idempotency_key", name="uq_verification_jobs_key"),
    Index("ix_verification_jobs_status", "status"),
)

# A job's input cut into chunks of consecutive lines: the unit a worker leases, runs and commits. A lease
# that runs out lets another worker take the chunk over; `log_positions` say where each attempt's
# events went, so the one taking over appends only those missing.
verification_chunks = Table(
    "verification_chunks",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("first_line", BigInteger, nullable=False),
    Column("byte_start", BigInteger, nullable=False),
    Column("byte_end", BigInteger, nullable=False),
    Column("records", Integer, nullable=False),
    Column("state", String(8), nullable=False),  # pending, leased, done
    Column("lease_owner", Text),
    Column("lease_until", Float),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("failures", Integer, nullable=False, server_default="0"),  # attempts that failed (not taken over)
    Column("log_positions", Text),  # JSON [[origin, seq], ...]: each attempt's log and where it began
    Column("errors", Integer),
    Column("done_at", Float),
    Index("ix_verification_chunks_state", "state", "lease_until"),
)

# What each administration's bulk records used of its daily allowance (UTC day).
bulk_usage = Table(
    "bulk_usage",
    metadata,
    Column("administration", Text, primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("records", BigInteger, nullable=False),
)

# Hourly counts of the index's events, kept by the index follower in the transaction that adds the events
# (and dropped with their origin), so the console's overview reads hundreds of rows, not millions. `hour`
# is the first 13 characters of the event's time (`YYYY-MM-DDTHH`); absent values are ''.
audit_rollup = Table(
    "audit_rollup",
    metadata,
    Column("origin", Text, primary_key=True),
    Column("hour", String(13), primary_key=True),
    Column("administration", Text, primary_key=True),
    Column("operation", Text, primary_key=True),
    Column("decision", String(8), primary_key=True),
    Column("reason", Text, primary_key=True),
    Column("count", BigInteger, nullable=False),
    Index("ix_audit_rollup_hour", "hour"),
)

# The console's local accounts (when no OpenID Connect provider is configured). The password is an
# argon2id hash; the TOTP secret is sealed with the data dir's console key; `last_totp_step` refuses a code
# used twice. Times are epoch seconds.
console_officers = Table(
    "console_officers",
    metadata,
    Column("login", String(64), primary_key=True),
    Column("role", String(8), nullable=False),
    Column("administration", Text),
    Column("password_hash", Text, nullable=False),
    Column("totp_sealed", Text, nullable=False),
    Column("last_totp_step", BigInteger, nullable=False, server_default="0"),
    Column("disabled", Integer, nullable=False, server_default="0"),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("first_failure_at", Float),
    Column("locked_until", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Signed-in officers. Only the SHA-256 of the cookie's value is kept, so a copy of the table signs no one in.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("login", String(200), nullable=False),
    Column("role", String(8), nullable=False),
    Column("administration", Text),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("search", Text),  # the last person search (JSON): the results page is asked by a handle, not a NIN
    Index("ix_console_sessions_last_seen", "last_seen"),
)

# Alerts raised over the access log: one open alert per (rule, key) at a time; figures and events as JSON.
console_alerts = Table(
    "console_alerts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("rule", String(32), nullable=False),
    Column("key", Text, nullable=False),
    Column("administration", Text),
    Column("status", String(12), nullable=False),  # open, acknowledged, closed
    Column("figures", Text, nullable=False),
    Column("events", Text, nullable=False),
    Column("first_seen", String(32), nullable=False),
    Column("last_seen", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_console_alerts_status", "status", "created_at"),
    Index("ix_console_alerts_rule_key", "rule", "key", "status"),
)

# Who acknowledged or closed an alert, when and why.
console_alert_notes = Table(
    "console_alert_notes",
    metadata,
    Column("alert_id", String(36), primary_key=True),
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("login", String(200), nullable=False),
    Column("action", String(12), nullable=False),
    Column("note", Text, nullable=False),
    Column("at", Float, nullable=False),
)

# The alert watcher's place in the index and its lease (one watcher evaluates at a time).
console_watcher = Table(
    "console_watcher",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
    Column("owner", Text),
    Column("lease_until", Float, nullable=False, server_default="0"),
    Column("state", Text),  # what the rules must not forget across a take-over (clients' hourly baselines)
)

# Changes to the console's accounts made with `jamu officers` (which may run with no gateway up): each is
# turned into a `console.account` access-log event by a running gateway, once (`logged` claims it).
console_account_changes = Table(
    "console_account_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("login", String(64), nullable=False),
    Column("action", String(12), nullable=False),
    Column("role", String(8)),
    Column("administration", Text),
    Column("actor", Text, nullable=False),
    Column("logged", Integer, nullable=False, server_default="0"),  # 0 waiting, > 0 claimed at (epoch s), -1 done
    Index("ix_console_account_changes_logged", "logged", "id"),
    sqlite_autoincrement=True,
)
