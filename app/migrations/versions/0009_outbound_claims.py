"""outbound_delivery.claims: a counter bumped by every claim, so only the claimant records.

The sender claims a batch with a lease (next_attempt_at pushed out) in a short transaction,
sends outside any transaction, then records each outcome only where `claims` still holds the
value its claim set: a sender whose lease ran out cannot overwrite a newer claimant's outcome.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbound_delivery", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("claims", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("outbound_delivery", schema=None) as batch_op:
        batch_op.drop_column("claims")
