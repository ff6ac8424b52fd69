"""ticket: partial indexes on the pending short and long tickets (the worker's two lanes).

The worker claims the oldest pending short tickets (a body of at most 2,000 characters) and the
oldest pending long ones separately (`app/enrich/queue.py`). Without these indexes, finding the
first short ticket behind thousands of long ones reads every long body on the way (5,000 bodies
of 20,000 characters: 87 ms per claim on SQLite; with the index: 20 microseconds). The number
2,000 is `queue.SHORT_BODY_CHARS`, written out here because a migration must not change when the
code does.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHORT = "status = 'pending' AND length(body) <= 2000"
LONG = "status = 'pending' AND length(body) > 2000"


def upgrade() -> None:
    for name, where in (("ix_ticket_pending_short", SHORT), ("ix_ticket_pending_long", LONG)):
        op.create_index(
            name,
            "ticket",
            ["id"],
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )


def downgrade() -> None:
    op.drop_index("ix_ticket_pending_long", table_name="ticket")
    op.drop_index("ix_ticket_pending_short", table_name="ticket")
