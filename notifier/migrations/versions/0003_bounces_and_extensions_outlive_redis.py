"""Bounces and extensions outlive Redis: the delivery key of each e-mail's Message-ID, indexed,
so a bounce finds its delivery by an exact lookup instead of a scan; soft bounces counted in
the record; the ``closes`` each occurrence told (and an extension's ``previous_closes``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "soft_bounces",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("message_key", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("email", "message_key", name=op.f("pk_soft_bounces")),
    )
    with op.batch_alter_table("occurrences", schema=None) as batch_op:
        batch_op.add_column(sa.Column("closes", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("previous_closes", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_key", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_deliveries_message_key"), ["message_key"], unique=False)
    # Rows archived before: their Message-ID is <key@domain>, the key 32 hex digits.
    op.execute(
        "UPDATE deliveries SET message_key = substr(message_id, 2, 32) "
        "WHERE message_id LIKE '<%@%' AND substr(message_id, 34, 1) = '@'"
    )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_message_key"))
        batch_op.drop_column("message_key")
    with op.batch_alter_table("occurrences", schema=None) as batch_op:
        batch_op.drop_column("previous_closes")
        batch_op.drop_column("closes")
    op.drop_table("soft_bounces")
