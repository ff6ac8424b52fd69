"""HTTP: POST /v1/triage."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.core.body import json_body_openapi, parse_json, read_body, validate
from app.core.deps import ServicesDep
from app.triage import service as triage_service
from app.triage.schemas import TriagePublic, TriageRequest, TriageRequestAdapter

router = APIRouter(prefix="/v1", tags=["triage"])


@router.post(
    "/triage",
    response_model=TriagePublic,
    openapi_extra=json_body_openapi(TriageRequestAdapter, description="One message to analyse."),
    responses={
        400: {"description": "Body is not UTF-8 JSON."},
        413: {"description": "Text over the limit."},
        422: {"description": "Missing or empty text, wrong types."},
    },
)
async def triage(request: Request, services: ServicesDep) -> TriagePublic:
    """Sentiment, UX/CX label, team and known issue for one text; nothing is stored."""
    settings = services.settings
    raw = await read_body(request, max_bytes=settings.max_request_bytes)
    payload: TriageRequest = validate(TriageRequestAdapter, parse_json(raw))
    text = triage_service.check(payload, settings=settings)

    def run() -> TriagePublic:
        # One trip to the thread pool for the clusters and the analysis (each trip costs
        # a context switch, which is a real share of a few milliseconds).
        return triage_service.triage(
            text,
            analyzer=services.analyzer,
            routing=services.routing,
            clusters=services.clusters.get(),
            min_cosine=settings.cluster_assign_min_cosine,
        )

    return await run_in_threadpool(run)
