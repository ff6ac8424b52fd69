"""API shapes of outbound deliveries."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class OutboundDeliveryPublic(BaseModel):
    """One analysed ticket revision sent (or being sent) to the outbound webhook."""

    id: int
    ticket_id: int
    revision: int
    event: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class OutboundDeliveriesPublic(BaseModel):
    """A page of deliveries and the total that match."""

    data: list[OutboundDeliveryPublic]
    count: int
