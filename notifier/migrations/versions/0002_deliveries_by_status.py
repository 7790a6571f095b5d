"""The console's deliveries table: an index on deliveries by (occurrence, status, channel,
recipient), so a page filtered by status reads in order instead of sorting 100,000 rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 00:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deliveries_occurrence_status_channel_recipient"),
            ["occurrence", "status", "channel", "recipient"],
            unique=False,
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_occurrence_status_channel_recipient"))
