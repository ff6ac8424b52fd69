"""UX/CX evidence and sub-category probability; ticket_label for human corrections.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ticket_analysis", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uxcx_subcategory_probability", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "uxcx_evidence",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
    op.create_table(
        "ticket_label",
        sa.Column("ticket_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("label", sa.String(length=8), nullable=False),
        sa.Column("subcategory", sa.String(length=64), nullable=True),
        sa.Column("author", sa.String(length=255), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["ticket.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("ticket_id"),
    )
    with op.batch_alter_table("ticket_label", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ticket_label_label"), ["label"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ticket_label", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ticket_label_label"))
    op.drop_table("ticket_label")
    with op.batch_alter_table("ticket_analysis", schema=None) as batch_op:
        batch_op.drop_column("uxcx_evidence")
        batch_op.drop_column("uxcx_subcategory_probability")
