"""The access log: events in a hash chain, its head, signed checkpoints."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "access_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("time", sa.String(32), nullable=False),
        sa.Column("administration", sa.Text),
        sa.Column("client_id", sa.Text),
        sa.Column("operation", sa.Text),
        sa.Column("purpose", sa.Text),
        sa.Column("legal_basis", sa.Text),
        sa.Column("consent_id", sa.Text),
        sa.Column("subject_hash", sa.String(64)),
        sa.Column("attributes_requested", sa.Text, nullable=False),
        sa.Column("attributes_released", sa.Text, nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("trace_id", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_access_events_time", "access_events", ["time"])
    op.create_index("ix_access_events_administration", "access_events", ["administration"])
    op.create_index("ix_access_events_subject_hash", "access_events", ["subject_hash"])
    head = op.create_table(
        "access_log_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("checkpoint_seq", sa.BigInteger, nullable=False),
        sa.Column("checkpoint_at", sa.Float, nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS, "checkpoint_seq": 0, "checkpoint_at": 0.0}])
    op.create_table(
        "access_checkpoints",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("time", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("access_checkpoints")
    op.drop_table("access_log_head")
    op.drop_table("access_events")
