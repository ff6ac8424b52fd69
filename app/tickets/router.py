"""HTTP: read tickets and their analysis."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.core.clock import RANGE_TEXT, UtcTime
from app.core.deps import RoutingDep, SessionDep
from app.core.limits import MAX_ID, NO_NUL, NOT_FOUND
from app.nlp.base import UxCxLabel
from app.tickets import service as ticket_service
from app.tickets.models import AnalysisStatus, Channel
from app.tickets.schemas import TicketPublic, TicketsPublic

router = APIRouter(prefix="/v1", tags=["tickets"])


@router.get("/tickets/{ticket_id}", response_model=TicketPublic, responses=NOT_FOUND)
def read_ticket(
    session: SessionDep, routing: RoutingDep, ticket_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> TicketPublic:
    """One ticket with its analysis and the label that counts (a correction wins)."""
    return ticket_service.get_ticket(session, ticket_id=ticket_id, routing=routing)


@router.get("/tickets", response_model=TicketsPublic)
def list_tickets(
    session: SessionDep,
    routing: RoutingDep,
    source: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    channel: Channel | None = None,
    status: AnalysisStatus | None = None,
    label: Annotated[
        UxCxLabel | None, Query(description="UX, CX or none (a correction wins over the model)")
    ] = None,
    clustered: Annotated[
        bool | None,
        Query(description="true: part of a current cluster; false: unclustered (outliers)"),
    ] = None,
    received_from: Annotated[
        UtcTime | None, Query(description=f"inclusive, ISO 8601 ({RANGE_TEXT})")
    ] = None,
    received_to: Annotated[
        UtcTime | None, Query(description=f"exclusive, ISO 8601 ({RANGE_TEXT})")
    ] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> TicketsPublic:
    """Tickets newest first, filtered and paginated."""
    data, count = ticket_service.list_tickets(
        session,
        routing=routing,
        source=source,
        channel=channel.value if channel else None,
        status=status.value if status else None,
        label=label.value if label else None,
        clustered=clustered,
        received_from=received_from,
        received_to=received_to,
        page=page,
        limit=limit,
    )
    return TicketsPublic(data=list(data), count=count)
