"""HTTP: GET /v1/outbound (deliveries to the outbound webhook), POST .../{id}/retry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.core.deps import SessionDep
from app.core.limits import MAX_ID, MAX_OFFSET
from app.outbound import service as outbound_service
from app.outbound.models import OutboundStatus
from app.outbound.schemas import OutboundDeliveriesPublic, OutboundDeliveryPublic

router = APIRouter(prefix="/v1", tags=["outbound"])


@router.get("/outbound", response_model=OutboundDeliveriesPublic)
def list_outbound(
    session: SessionDep,
    status: OutboundStatus | None = None,
    ticket_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> OutboundDeliveriesPublic:
    """Deliveries to OUTBOUND_WEBHOOK_URL, newest first (status=failed: what never arrived)."""
    return outbound_service.list_deliveries(
        session, status=status, ticket_id=ticket_id, limit=limit, offset=offset
    )


@router.post(
    "/outbound/{delivery_id}/retry",
    response_model=OutboundDeliveryPublic,
    responses={404: {"description": "No such delivery"}, 422: {"description": "Not failed"}},
)
def retry_outbound(
    delivery_id: Annotated[int, Path(ge=1, le=MAX_ID)], session: SessionDep
) -> OutboundDeliveryPublic:
    """Send a failed delivery again, from attempt zero."""
    return outbound_service.retry(session, delivery_id=delivery_id)
