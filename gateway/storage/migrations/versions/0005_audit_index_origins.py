"""Each origin's numbering, link and reported lag, the origins' checkpoints, and an index for denials over
time."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _event_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.Text, nullable=False),
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
        sa.Column("claimed_client_id", sa.Text),
        sa.Column("evidence", sa.Text),
        sa.Column("job_id", sa.Text),
        sa.Column("count", sa.Integer),
        sa.Column("source", sa.Text),
    ]


def upgrade() -> None:
    # The index is a follower, rebuilt from the logs: made again with the position pages follow.
    op.drop_table("audit_index")
    op.execute("DELETE FROM audit_index_watermarks")
    op.create_table(
        "audit_index",
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        *_event_columns(),
        sa.UniqueConstraint("origin", "seq", name="uq_audit_index_origin_seq"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_index_administration_time", "audit_index", ["administration", "time"])
    op.create_index("ix_audit_index_subject", "audit_index", ["subject_hash", "time"])
    op.create_index("ix_audit_index_time", "audit_index", ["time"])
    with op.batch_alter_table("audit_index_watermarks") as table:
        table.add_column(sa.Column("first_seq", sa.BigInteger, nullable=False, server_default="0"))
        table.add_column(sa.Column("link_origin", sa.Text))
        table.add_column(sa.Column("link_seq", sa.BigInteger))
        table.add_column(sa.Column("link_hash", sa.String(64)))
        table.add_column(sa.Column("lag_s", sa.Float, nullable=False, server_default="0"))
        table.add_column(sa.Column("reported_at", sa.Float, nullable=False, server_default="0"))
        table.add_column(sa.Column("continued_by", sa.Text))
    op.create_table(
        "audit_index_checkpoints",
        sa.Column("origin", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("time", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_index("ix_audit_index_decision_time", "audit_index", ["decision", "time"])


def downgrade() -> None:
    op.drop_index("ix_audit_index_decision_time", "audit_index")
    op.drop_table("audit_index_checkpoints")
    op.execute("DELETE FROM audit_index_watermarks")
    op.drop_table("audit_index")
    op.create_table(
        "audit_index",
        sa.Column("origin", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        *_event_columns(),
    )
    op.create_index("ix_audit_index_administration_time", "audit_index", ["administration", "time"])
    op.create_index("ix_audit_index_subject", "audit_index", ["subject_hash", "time"])
    op.create_index("ix_audit_index_time", "audit_index", ["time"])
    with op.batch_alter_table("audit_index_watermarks") as table:
        table.drop_column("continued_by")
        table.drop_column("reported_at")
        table.drop_column("lag_s")
        table.drop_column("link_hash")
        table.drop_column("link_seq")
        table.drop_column("link_origin")
        table.drop_column("first_seq")
