"""Each origin's numbering, link and reported lag, the origins' checkpoints, and an index for denials over
time."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
    with op.batch_alter_table("audit_index_watermarks") as table:
        table.drop_column("continued_by")
        table.drop_column("reported_at")
        table.drop_column("lag_s")
        table.drop_column("link_hash")
        table.drop_column("link_seq")
        table.drop_column("link_origin")
        table.drop_column("first_seq")
