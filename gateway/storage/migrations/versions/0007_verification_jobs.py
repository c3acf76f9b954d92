"""Bulk verification jobs, their chunks and each administration's daily bulk usage."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verification_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("administration", sa.Text, nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("declared_records", sa.BigInteger),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.BigInteger),
        sa.Column("input_sha256", sa.String(64)),
        sa.Column("input_file", sa.Text),
        sa.Column("jobs_dir", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("queued_at", sa.Float),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("expires_at", sa.Float),
        sa.UniqueConstraint("administration", "idempotency_key", name="uq_verification_jobs_key"),
    )
    op.create_index("ix_verification_jobs_status", "verification_jobs", ["status"])
    op.create_table(
        "verification_chunks",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("first_line", sa.BigInteger, nullable=False),
        sa.Column("byte_start", sa.BigInteger, nullable=False),
        sa.Column("byte_end", sa.BigInteger, nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_until", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("log_positions", sa.Text),
        sa.Column("errors", sa.Integer),
        sa.Column("done_at", sa.Float),
    )
    op.create_index("ix_verification_chunks_state", "verification_chunks", ["state", "lease_until"])
    op.create_table(
        "bulk_usage",
        sa.Column("administration", sa.Text, primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("records", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bulk_usage")
    op.drop_index("ix_verification_chunks_state", "verification_chunks")
    op.drop_table("verification_chunks")
    op.drop_index("ix_verification_jobs_status", "verification_jobs")
    op.drop_table("verification_jobs")
