"""Access events carry, where they apply, the claimed client of a failed token request, a history
read's evidence, a bulk job's id, a counting event's count and the caller's source address."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("claimed_client_id", sa.Text),
    ("evidence", sa.Text),
    ("job_id", sa.Text),
    ("count", sa.Integer),
    ("source", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("access_events") as batch:
        for name, kind in _COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_events") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
