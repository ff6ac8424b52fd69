"""ticket_analysis.sentiment_most_negative: the most negative sentence of a message.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ticket_analysis", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "sentiment_most_negative",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("ticket_analysis", schema=None) as batch_op:
        batch_op.drop_column("sentiment_most_negative")
