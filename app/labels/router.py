"""HTTP: correct a ticket's UX/CX label, and list the labels and their teams."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from app.core.body import json_body_openapi, parse_json, read_body, validate
from app.core.deps import RoutingDep, SessionDep, SettingsDep
from app.core.limits import MAX_ID
from app.labels import service as label_service
from app.labels.schemas import LabelsCatalog, LabelUpdate, LabelUpdateAdapter
from app.nlp.base import SUBCATEGORIES
from app.tickets import service as ticket_service
from app.tickets.schemas import TicketPublic

router = APIRouter(prefix="/v1", tags=["labels"])


@router.put(
    "/tickets/{ticket_id}/label",
    response_model=TicketPublic,
    openapi_extra=json_body_openapi(LabelUpdateAdapter, description="The corrected label."),
    responses={
        400: {"description": "Body is not UTF-8 JSON."},
        404: {"description": "No such ticket."},
        422: {"description": "Unknown label or sub-category, missing author."},
    },
)
async def put_ticket_label(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    routing: RoutingDep,
    ticket_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> TicketPublic:
    """Correct a ticket's label; it wins over the model until removed."""
    raw = await read_body(request, max_bytes=settings.max_request_bytes)
    update: LabelUpdate = validate(LabelUpdateAdapter, parse_json(raw))
    label_service.set_ticket_label(session, ticket_id=ticket_id, update=update)
    return ticket_service.get_ticket(session, ticket_id=ticket_id, routing=routing)


@router.delete(
    "/tickets/{ticket_id}/label",
    status_code=204,
    responses={404: {"description": "No such ticket."}},
)
def delete_ticket_label(
    session: SessionDep, ticket_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> Response:
    """Remove a correction: the model's label counts again."""
    label_service.clear_ticket_label(session, ticket_id=ticket_id)
    return Response(status_code=204)


@router.get("/labels", response_model=LabelsCatalog)
def list_labels(routing: RoutingDep) -> LabelsCatalog:
    """Labels, their sub-categories, and the team each routes to with the current table."""
    return LabelsCatalog(
        labels={label: list(subs) for label, subs in SUBCATEGORIES.items()},
        teams={
            label: {sub: routing.team_for(label, sub) for sub in subs}
            for label, subs in SUBCATEGORIES.items()
        },
        default_team=routing.default_team,
    )
