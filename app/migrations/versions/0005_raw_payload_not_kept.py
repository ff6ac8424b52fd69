"""raw_delivery.payload may be null: request bodies are no longer kept (personal data).

Existing bodies are cleared too, so no stored copy keeps what the tickets have redacted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("raw_delivery", schema=None) as batch_op:
        batch_op.alter_column("payload", existing_type=sa.LargeBinary(), nullable=True)
    op.execute("UPDATE raw_delivery SET payload = NULL")


def downgrade() -> None:
    op.execute("UPDATE raw_delivery SET payload = ''")
    with op.batch_alter_table("raw_delivery", schema=None) as batch_op:
        batch_op.alter_column("payload", existing_type=sa.LargeBinary(), nullable=False)
