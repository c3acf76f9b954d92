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
