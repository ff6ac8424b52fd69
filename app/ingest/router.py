"""HTTP: POST /v1/tickets, POST /v1/posts (one item or a batch) and the helpdesk webhooks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter, ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.core.body import RawBody, json_body_openapi, parse_json, read_body, validate_items
from app.core.db import utcnow
from app.core.deps import Services, ServicesDep
from app.core.errors import InvalidInput, validation_details
from app.ingest import service as ingest_service
from app.ingest.providers import PROVIDERS, WebhookRequest
from app.ingest.providers.base import Normalised, Provider
from app.ingest.schemas import (
    IngestItemResult,
    IngestResponse,
    PostBatchAdapter,
    PostCreate,
    TicketBatchAdapter,
    TicketCreate,
    WebhookResult,
)
from app.tickets.models import Channel

log = logging.getLogger("app.ingest")
_T = TypeVar("_T")

router = APIRouter(prefix="/v1", tags=["ingest"])
posts_router = APIRouter(prefix="/v1", tags=["ingest"])
webhooks_router = APIRouter(prefix="/v1", tags=["webhooks"])

_ONE_TICKET: TypeAdapter[TicketCreate] = TypeAdapter(TicketCreate)
_TICKETS: TypeAdapter[list[TicketCreate]] = TypeAdapter(list[TicketCreate])
_ONE_POST: TypeAdapter[PostCreate] = TypeAdapter(PostCreate)
_POSTS: TypeAdapter[list[PostCreate]] = TypeAdapter(list[PostCreate])

_BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every item was a repeat: nothing new stored or queued."},
    202: {"description": "Stored; new or changed texts are queued for analysis."},
    400: {"description": "Body is not UTF-8 JSON."},
    413: {"description": "Request, batch or a text is over its limit."},
    415: {"description": "Content-Type is not JSON."},
    422: {"description": "A field is missing, of the wrong type, or an unknown source."},
}


async def _store(services: Services, delivery: ingest_service.Delivery) -> list[IngestItemResult]:
    """Store through the process's group-commit batcher (answers after the commit)."""
    if services.batcher is not None:
        return await services.batcher.store(delivery)

    def _write() -> list[IngestItemResult]:
        with Session(services.engine, expire_on_commit=False) as session:
            return ingest_service.store_many(session, [delivery])[0]

    return await run_in_threadpool(_write)


async def _off_loop(raw: RawBody, services: Services, work: Callable[[], _T]) -> _T:
    """Run `work` (JSON parsing, validation, HTML to text, redaction) on the event loop for an
    ordinary body,
    in a worker thread for a large one: however linear, 1 MB of text is tens of milliseconds
    that every other request would otherwise wait behind."""
    if len(raw.data) <= services.settings.inline_body_bytes:
        return work()
    return await run_in_threadpool(work)


async def _ingest(
    items: list[TicketCreate], *, raw: RawBody, kind: str, services: Services, response: Response
) -> IngestResponse:
    def work() -> list[Any]:
        return ingest_service.prepare(
            items, settings=services.settings, sources=services.sources, salt=services.author_salt
        )

    prepared = await _off_loop(raw, services, work)

    results = await _store(services, ingest_service.Delivery(prepared=prepared, raw=raw, kind=kind))
    if any(r.queued for r in results):
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


@router.post(
    "/tickets",
    status_code=202,
    response_model=IngestResponse,
    openapi_extra=json_body_openapi(
        TicketBatchAdapter, description="One ticket/post object, or a JSON array of up to 1,000."
    ),
    responses=_BATCH_RESPONSES,
)
async def create_tickets(
    request: Request, response: Response, services: ServicesDep
) -> IngestResponse:
    """Store tickets/posts idempotently on (source, external_id) and queue them for analysis."""
    raw = await read_body(request, max_bytes=services.settings.max_request_bytes)
    items: list[TicketCreate] = await _off_loop(
        raw, services, lambda: validate_items(_ONE_TICKET, _TICKETS, parse_json(raw))
    )
    return await _ingest(items, raw=raw, kind="api", services=services, response=response)


@posts_router.post(
    "/posts",
    status_code=202,
    response_model=IngestResponse,
    openapi_extra=json_body_openapi(
        PostBatchAdapter,
        description="One social post (tweet/X, Reddit, app-store review, forum post), or an "
        "array of up to 1,000.",
    ),
    responses=_BATCH_RESPONSES,
)
async def create_posts(
    request: Request, response: Response, services: ServicesDep
) -> IngestResponse:
    """Store social posts idempotently on (platform, id) and queue them for analysis."""
    raw = await read_body(request, max_bytes=services.settings.max_request_bytes)
    posts: list[PostCreate] = await _off_loop(
        raw, services, lambda: validate_items(_ONE_POST, _POSTS, parse_json(raw))
    )
    social = sorted(
        name
        for name in services.sources.names
        if services.sources.channel_for(name) is Channel.social
    )
    for i, post in enumerate(posts):
        if services.sources.channel_for(post.platform) is not Channel.social:
            where = f"items[{i}]" if len(posts) > 1 else "item"
            raise InvalidInput(
                f"{where}: {post.platform!r} is not a social platform. Use one of: "
                f"{', '.join(social)} (or add 'name:social' to EXTRA_SOURCES); helpdesk tickets "
                "go to POST /v1/tickets.",
                code="unknown_platform",
            )
    items = [p.to_ticket() for p in posts]
    return await _ingest(items, raw=raw, kind="api:posts", services=services, response=response)


class WebhookProvider(StrEnum):
    """The helpdesks whose webhooks the service understands."""

    zendesk = "zendesk"
    freshdesk = "freshdesk"
    intercom = "intercom"
    helpscout = "helpscout"
    front = "front"
    generic = "generic"


def _normalise(spec: Provider, name: str, payload: Any, req: WebhookRequest) -> Normalised:
    try:
        return spec.normalise(payload, req)
    except ValidationError as exc:
        details = validation_details(exc.errors())
        raise InvalidInput(
            f"The {name} payload has an invalid field: {details[0]['field']}: "
            f"{details[0]['message']}",
            code="invalid_payload",
            details=details,
        ) from None


@webhooks_router.post(
    "/webhooks/{provider}",
    status_code=202,
    response_model=WebhookResult,
    openapi_extra=json_body_openapi(
        None, description="The provider's own webhook payload (see the README per provider)."
    ),
    responses={
        200: {
            "description": "A repeat of an event already stored, or an event with no "
            "customer text: acknowledged, nothing stored."
        },
        202: {"description": "Stored and committed; analysis is queued."},
        400: {"description": "Body is not UTF-8 JSON."},
        401: {"description": "Signature (or shared secret) missing, wrong or stale."},
        413: {"description": "Request or a text is over its limit."},
        415: {"description": "Content-Type is not JSON."},
        422: {"description": "Not a payload of this provider, or a field is invalid."},
        503: {"description": "Freshdesk's API could not confirm the ticket now: retry."},
    },
)
async def receive_webhook(
    provider: WebhookProvider, request: Request, response: Response, services: ServicesDep
) -> WebhookResult | Response:
    """Verify a helpdesk delivery, store its tickets once, answer before analysis."""
    settings = services.settings
    spec = PROVIDERS[provider.value]
    raw = await read_body(request, max_bytes=settings.max_request_bytes)
    req = WebhookRequest(
        body=raw.data,
        headers=WebhookRequest.collect(request.headers.items()),  # repeats kept: a 401
        now=utcnow(),
        secret=settings.webhook_secret(provider.value),
        max_age_s=settings.webhook_max_age_s,
    )
    spec.verify(req)  # before anything is parsed or stored
    if spec.confirm is not None:
        req = await spec.confirm(req, settings)  # Freshdesk's verified mode: ask its API

    def work() -> tuple[Normalised, list[Any]]:
        normalised = _normalise(spec, provider.value, parse_json(raw), req)
        if not normalised.items:
            return normalised, []
        prepared = ingest_service.prepare(
            normalised.items, settings=settings, sources=services.sources, salt=services.author_salt
        )
        return normalised, prepared

    normalised, prepared = await _off_loop(raw, services, work)
    result = WebhookResult(
        provider=provider.value,
        event=normalised.event,
        event_id=normalised.event_id,
        result="ignored",
        reason=normalised.ignored,
        tickets=[],
    )
    if not normalised.items:
        response.status_code = 200
        return result
    event = (provider.value, normalised.event_id, normalised.event)

    delivery = ingest_service.Delivery(
        prepared=prepared, raw=raw, kind=f"webhook:{provider.value}", event=event
    )
    tickets = await _store(services, delivery)
    result.tickets = tickets
    result.reason = None
    result.result = "stored" if any(t.result != "unchanged" for t in tickets) else "duplicate"
    queued = any(t.queued for t in tickets)
    if queued:
        services.signal.notify()
    # Serialised here, once: the model is already valid, so FastAPI's second pass is skipped.
    return Response(
        result.model_dump_json(), status_code=202 if queued else 200, media_type="application/json"
    )
