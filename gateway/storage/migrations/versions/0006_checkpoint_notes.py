"""Checkpoints carry their C2SP note (the Merkle tree's signed head); events are found by transaction id
(receipts)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_index_checkpoints") as batch:
        batch.add_column(sa.Column("note", sa.Text))
    op.create_index("ix_audit_index_id", "audit_index", ["id"])


def downgrade() -> None:
    op.drop_index("ix_audit_index_id", "audit_index")
    with op.batch_alter_table("audit_index_checkpoints") as batch:
        batch.drop_column("note")
