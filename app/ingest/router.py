"""HTTP: POST /v1/tickets (one item or a batch)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.core.body import json_body_openapi, parse_json, read_body, validate
from app.core.deps import ServicesDep
from app.ingest import service as ingest_service
from app.ingest.schemas import IngestItemResult, IngestResponse, TicketBatchAdapter, TicketCreate

router = APIRouter(prefix="/v1", tags=["ingest"])


@router.post(
    "/tickets",
    status_code=202,
    response_model=IngestResponse,
    openapi_extra=json_body_openapi(
        TicketBatchAdapter, description="One ticket/post object, or a JSON array of up to 1,000."
    ),
    responses={
        200: {"description": "Every item was a repeat: nothing new stored or queued."},
        202: {"description": "Stored; new or changed texts are queued for analysis."},
        400: {"description": "Body is not UTF-8 JSON."},
        413: {"description": "Request, batch or a text is over its limit."},
        415: {"description": "Content-Type is not JSON."},
        422: {"description": "A field is missing, of the wrong type, or an unknown source."},
    },
)
async def create_tickets(
    request: Request, response: Response, services: ServicesDep
) -> IngestResponse:
    """Store tickets/posts idempotently on (source, external_id) and queue them for analysis."""
    settings = services.settings
    raw = await read_body(request, max_bytes=settings.max_request_bytes)
    parsed = validate(TicketBatchAdapter, parse_json(raw))
    items: list[TicketCreate] = parsed if isinstance(parsed, list) else [parsed]
    prepared = ingest_service.prepare(
        items, settings=settings, sources=services.sources, salt=services.author_salt
    )

    def _store() -> list[IngestItemResult]:
        with Session(services.engine, expire_on_commit=False) as session:
            return ingest_service.store(session, prepared=prepared, raw=raw, kind="api")

    results = await run_in_threadpool(_store)
    queued = sum(r.queued for r in results)
    if queued:
        services.signal.notify()
    else:
        response.status_code = 200
    return IngestResponse(
        data=results,
        count=len(results),
        created=sum(r.result == "created" for r in results),
        updated=sum(r.result == "updated" for r in results),
        unchanged=sum(r.result == "unchanged" for r in results),
    )
