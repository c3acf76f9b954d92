"""The officers' console: hourly counts of the index, local accounts, sessions, alerts and the alert
watcher's place. The counts of events indexed before this revision are computed here."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_rollup",
        sa.Column("origin", sa.Text, primary_key=True),
        sa.Column("hour", sa.String(13), primary_key=True),
        sa.Column("administration", sa.Text, primary_key=True),
        sa.Column("operation", sa.Text, primary_key=True),
        sa.Column("decision", sa.String(8), primary_key=True),
        sa.Column("reason", sa.Text, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_audit_rollup_hour", "audit_rollup", ["hour"])
    op.execute(
        "INSERT INTO audit_rollup (origin, hour, administration, operation, decision, reason, count) "
        "SELECT origin, substr(time, 1, 13), coalesce(administration, ''), coalesce(operation, ''), decision, "
        "coalesce(reason, ''), count(*) FROM audit_index "
        "GROUP BY origin, substr(time, 1, 13), coalesce(administration, ''), coalesce(operation, ''), decision, "
        "coalesce(reason, '')"
    )
    op.create_table(
        "console_officers",
        sa.Column("login", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("administration", sa.Text),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("totp_sealed", sa.Text, nullable=False),
        sa.Column("last_totp_step", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("disabled", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_failure_at", sa.Float),
        sa.Column("locked_until", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(200), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("administration", sa.Text),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("search", sa.Text),
    )
    op.create_index("ix_console_sessions_last_seen", "console_sessions", ["last_seen"])
    op.create_table(
        "console_alerts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("administration", sa.Text),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("figures", sa.Text, nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("first_seen", sa.String(32), nullable=False),
        sa.Column("last_seen", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_console_alerts_status", "console_alerts", ["status", "created_at"])
    op.create_index("ix_console_alerts_rule_key", "console_alerts", ["rule", "key", "status"])
    op.create_table(
        "console_alert_notes",
        sa.Column("alert_id", sa.String(36), primary_key=True),
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("login", sa.String(200), nullable=False),
        sa.Column("action", sa.String(12), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "console_watcher",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.Text),
        sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
        sa.Column("state", sa.Text),
    )
    op.create_table(
        "console_account_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("login", sa.String(64), nullable=False),
        sa.Column("action", sa.String(12), nullable=False),
        sa.Column("role", sa.String(8)),
        sa.Column("administration", sa.Text),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("logged", sa.Integer, nullable=False, server_default="0"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_console_account_changes_logged", "console_account_changes", ["logged", "id"])


def downgrade() -> None:
    for table in (
        "console_account_changes",
        "console_watcher",
        "console_alert_notes",
        "console_alerts",
        "console_sessions",
        "console_officers",
        "audit_rollup",
    ):
        op.drop_table(table)
