"""The query index of the segment logs, keyed by (origin, seq), and each origin's watermark."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_index",
        sa.Column("origin", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
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
    )
    op.create_index("ix_audit_index_administration_time", "audit_index", ["administration", "time"])
    op.create_index("ix_audit_index_subject", "audit_index", ["subject_hash", "time"])
    op.create_index("ix_audit_index_time", "audit_index", ["time"])
    op.create_table(
        "audit_index_watermarks",
        sa.Column("origin", sa.Text, primary_key=True),
        sa.Column("next_seq", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_index_watermarks")
    op.drop_table("audit_index")
