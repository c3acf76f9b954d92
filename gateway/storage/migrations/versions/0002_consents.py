"""Consents: one person (as a keyed hash), one grantee, one purpose, attributes, operations, expiry, uses."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("subject_hash", sa.String(64), nullable=False),
        sa.Column("grantee", sa.Text, nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Column("operations", sa.Text, nullable=False),
        sa.Column("issued_by", sa.Text, nullable=False),
        sa.Column("issued_by_client", sa.Text, nullable=False),
        sa.Column("evidence_method", sa.Text, nullable=False),
        sa.Column("evidence_reference", sa.Text),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.String(32), nullable=False),
        sa.Column("revoked_at", sa.String(32)),
        sa.Column("max_uses", sa.Integer),
        sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_consents_subject_grantee", "consents", ["subject_hash", "grantee"])


def downgrade() -> None:
    op.drop_table("consents")
