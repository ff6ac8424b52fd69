"""HTTP: GET /v1/digests/weekly (build now), POST /v1/digests (build and keep), stored digests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from sqlalchemy import func
from sqlmodel import Session, col, select

from app.core.body import json_body_openapi, parse_json, read_body, validate
from app.core.db import utcnow
from app.core.deps import RoutingDep, ServicesDep, SessionDep, SettingsDep
from app.core.errors import InvalidInput, NotFound
from app.core.limits import BODY_ERRORS, MAX_ID, NO_NUL, NOT_FOUND
from app.digests import delivery
from app.digests import service as digest_service
from app.digests.models import StoredDigest
from app.digests.render import render_html, render_markdown
from app.digests.schemas import Digest, StoredDigestPublic, StoredDigestsPublic
from app.digests.weeks import IsoWeek
from app.routing.table import RoutingTable

router = APIRouter(prefix="/v1", tags=["digests"])

Format = Literal["json", "md", "html"]
_FORMATS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The digest: JSON (the Digest schema), Markdown, or one HTML page.",
        "content": {"text/markdown": {}, "text/html": {}},
    }
}


class DigestRequest(BaseModel):
    """Which digest to build and keep."""

    model_config = ConfigDict(extra="forbid")

    week: str | None = Field(default=None, description="ISO week; default the last complete one")
    team: str | None = Field(default=None, max_length=128, pattern=NO_NUL)


DigestRequestAdapter: TypeAdapter[DigestRequest] = TypeAdapter(DigestRequest)


def resolve(
    week: str | None, team: str | None, routing: RoutingTable
) -> tuple[IsoWeek, str | None]:
    """The week (default: the last complete one) and a team the routing table knows."""
    iso = IsoWeek.parse(week) if week else IsoWeek.last_complete(utcnow())
    return iso, digest_service.check_team(team, routing)


def _as(fmt: Format, digest: Digest, markdown: str, html: str) -> Response:
    if fmt == "md":
        return Response(markdown, media_type="text/markdown; charset=utf-8")
    if fmt == "html":
        return Response(html, media_type="text/html; charset=utf-8")
    return Response(digest.model_dump_json(), media_type="application/json")


@router.get(
    "/digests/weekly",
    response_model=Digest,
    responses={**_FORMATS, 422: {"description": "Not an ISO week, or an unknown team."}},
)
def weekly_digest(
    session: SessionDep,
    routing: RoutingDep,
    settings: SettingsDep,
    week: Annotated[str | None, Query(max_length=16, description="e.g. 2026-W47")] = None,
    team: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    format: Format = "json",
) -> Response:
    """The digest of a week (default: the last complete one), built now from current data."""
    iso, team = resolve(week, team, routing)
    digest = digest_service.build_digest(session, week=iso, team=team, routing=routing)
    return _as(
        format,
        digest,
        render_markdown(digest),
        render_html(digest, link=settings.digest_link_base),
    )


def _public(row: StoredDigest) -> StoredDigestPublic:
    return StoredDigestPublic(
        id=row.id or 0,
        week=row.week,
        team=row.team,
        trigger=row.trigger,
        generated_at=row.generated_at,
        delivery=row.delivery or {},
    )


@router.post(
    "/digests",
    status_code=201,
    response_model=StoredDigestPublic,
    openapi_extra=json_body_openapi(DigestRequestAdapter, description="Week and team."),
    responses=BODY_ERRORS,
)
async def create_digest(
    request: Request, session: SessionDep, routing: RoutingDep, settings: SettingsDep
) -> StoredDigestPublic:
    """Build a digest and keep it as rendered, to reread later exactly as it was."""
    raw = await read_body(request, max_bytes=settings.max_request_bytes)
    body: DigestRequest = validate(DigestRequestAdapter, parse_json(raw))
    iso, team = resolve(body.week, body.team, routing)
    row = digest_service.store_digest(
        session, week=iso, team=team, routing=routing, trigger="api", link=settings.digest_link_base
    )
    return _public(row)


@router.get("/digests", response_model=StoredDigestsPublic)
def list_digests(
    session: SessionDep,
    week: Annotated[str | None, Query(max_length=16)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> StoredDigestsPublic:
    """Stored digests, newest first."""
    stmt = select(StoredDigest)
    count = select(func.count()).select_from(StoredDigest)
    if week:
        iso = str(IsoWeek.parse(week))
        stmt = stmt.where(col(StoredDigest.week) == iso)
        count = count.where(col(StoredDigest.week) == iso)
    rows = session.exec(
        stmt.order_by(col(StoredDigest.id).desc()).offset((page - 1) * limit).limit(limit)
    ).all()
    return StoredDigestsPublic(data=[_public(r) for r in rows], count=session.exec(count).one())


@router.post(
    "/digests/{digest_id}/deliver",
    response_model=StoredDigestPublic,
    responses={**NOT_FOUND, 422: {"description": "No delivery channel is configured."}},
)
def deliver_digest(
    services: ServicesDep, digest_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> StoredDigestPublic:
    """Send a kept digest now to Slack and e-mail (every configured channel not yet delivered)."""
    settings = services.settings
    if not delivery.configured_channels(settings):
        raise InvalidInput(
            "No delivery channel is configured: set DIGEST_SLACK_WEBHOOK_URL and/or "
            "DIGEST_EMAIL_TO.",
            code="no_channel",
        )
    delivery.deliver(services.engine, digest_id, settings)
    with Session(services.engine) as session:
        row = session.get(StoredDigest, digest_id)
        if row is None:
            raise NotFound(f"No digest with id {digest_id}.")
        return _public(row)


@router.get(
    "/digests/{digest_id}",
    response_model=Digest,
    responses={**_FORMATS, **NOT_FOUND},
)
def read_digest(
    session: SessionDep,
    digest_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    format: Format = "json",
) -> Response:
    """A stored digest exactly as it was generated."""
    row = session.get(StoredDigest, digest_id)
    if row is None:
        raise NotFound(f"No digest with id {digest_id}.")
    return _as(format, Digest.model_validate(row.payload), row.markdown, row.html)
