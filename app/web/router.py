"""HTTP: the browser pages. Sign-in by API key into a cookie, the digest, clusters, corrections.

Browsers cannot send Bearer headers, so `/login` takes an API key once and sets an HttpOnly,
SameSite=Strict cookie; every other page answers 303 to `/login` without a valid one. The
cookie holds a token derived from the key (not the key itself), so a copied cookie is no
Bearer key for the API. SameSite=Strict keeps it off cross-site requests, which is what
protects the label forms (POST) from being submitted by another site.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError
from sqlmodel import Session, col, select

from app.clusters import service as cluster_service
from app.clusters.schemas import ClusterPublic
from app.core.auth import matches_any
from app.core.body import read_body
from app.core.db import utcnow
from app.core.deps import ServicesDep, SessionDep
from app.core.errors import AppError, InvalidInput, NotFound, validation_details
from app.core.limits import MAX_ID
from app.digests import service as digest_service
from app.digests.models import StoredDigest
from app.digests.render import LABEL_COLOURS, UNLABELLED, pct, sparkline_svg
from app.digests.schemas import Digest
from app.digests.weeks import IsoWeek
from app.labels.schemas import LabelUpdateAdapter
from app.nlp.base import SUBCATEGORIES, UXCX_LABELS
from app.routing.table import RoutingTable

router = APIRouter(include_in_schema=False)

COOKIE = "issuelens_key"
MAX_FORM_BYTES = 64_000
MEMBERS_SHOWN = 50
CLUSTERS_PER_PAGE = 50
SPARK_WEEKS = 8
CHART_WEEKS = 26
CLUSTER_LABELS = ("UX", "CX", "none", "mixed")
# The pages run no scripts and load nothing: anything else is refused by the browser.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value is not None else "-"


def _sparkline(values: list[int], label: str | None = None) -> Markup:
    # sparkline_svg writes numbers and a colour of ours only: safe to insert unescaped.
    return Markup(sparkline_svg(values, _colour(label)))


def _colour(label: str | None) -> str:
    return LABEL_COLOURS.get(label or "", UNLABELLED)


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals.update(pct=pct, when=_when, sparkline=_sparkline, colour=_colour)
templates = Jinja2Templates(env=_env)


# ---- sign-in ------------------------------------------------------------------------------


def _session_token(key: str) -> str:
    """What the cookie holds for an API key: derived from it, useless as a Bearer key."""
    return hmac.new(key.encode(), b"issuelens web session v1", hashlib.sha256).hexdigest()


def _signed_in(request: Request, keys: tuple[str, ...]) -> bool:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return False
    return matches_any(cookie, tuple(_session_token(key) for key in keys))


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


def _page(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    values: dict[str, Any] = {"error": None, "notice": None, "signed_in": True}
    values.update(context)
    return templates.TemplateResponse(
        request, name, values, status_code=status_code, headers=SECURITY_HEADERS
    )


async def _form(request: Request) -> dict[str, str]:
    """An url-encoded form body (what a browser posts), NUL characters dropped."""
    raw = await read_body(request, max_bytes=MAX_FORM_BYTES)
    try:
        pairs = parse_qsl(
            raw.data.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20
        )
    except ValueError:
        raise InvalidInput("The form has too many fields.", code="invalid_form") from None
    return {k: v.replace("\x00", "") for k, v in pairs}


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, services: ServicesDep) -> Response:
    """The sign-in form."""
    return _page(request, "login.html", {"signed_in": _signed_in(request, services.api_keys)})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, services: ServicesDep) -> Response:
    """Check the API key; a valid one sets the session cookie and opens the digest."""
    try:
        key = (await _form(request)).get("key", "").strip()
    except AppError as exc:
        return _page(
            request, "login.html", {"error": exc.message, "signed_in": False}, status_code=400
        )
    if not key:
        error = "Enter an API key (one of the service's API_KEYS)."
    elif not matches_any(key, services.api_keys):
        error = "That API key is not valid."
    else:
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            _session_token(key),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response
    return _page(request, "login.html", {"error": error, "signed_in": False}, status_code=401)


@router.api_route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    """Forget the session cookie."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


# ---- the digest -----------------------------------------------------------------------------


def _resolve(week: str, team: str, routing: RoutingTable) -> tuple[IsoWeek | None, str | None]:
    iso = IsoWeek.parse(week) if week else None
    return iso, digest_service.check_team(team, routing)


def _pick_digest(
    session: Session,
    routing: RoutingTable,
    *,
    picked: bool,
    iso: IsoWeek | None,
    team: str | None,
) -> tuple[Digest, StoredDigest | None]:
    """The newest stored digest (for the week and team picked, if any), else one built now."""
    stmt = select(StoredDigest)
    if picked:
        if iso is not None:
            stmt = stmt.where(col(StoredDigest.week) == str(iso))
        team_is = col(StoredDigest.team) == team if team else col(StoredDigest.team).is_(None)
        stmt = stmt.where(team_is)
    row = session.exec(stmt.order_by(col(StoredDigest.id).desc()).limit(1)).first()
    if row is not None:
        return Digest.model_validate(row.payload), row
    week = iso or IsoWeek.last_complete(utcnow())
    return digest_service.build_digest(session, week=week, team=team, routing=routing), None


@router.get("/", response_class=HTMLResponse)
def home(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    week: str | None = None,
    team: str | None = None,
) -> Response:
    """The latest digest, or the one picked by week and team."""
    if not _signed_in(request, services.api_keys):
        return _to_login()
    context: dict[str, Any] = {
        "teams": services.routing.teams,
        "week_value": week or "",
        "team_value": team or "",
        "digest": None,
        "stored": None,
    }
    try:
        iso, team_name = _resolve((week or "").strip(), (team or "").strip(), services.routing)
    except AppError as exc:
        return _page(request, "home.html", {**context, "error": exc.message}, status_code=422)
    digest, stored = _pick_digest(
        session,
        services.routing,
        picked=week is not None or team is not None,
        iso=iso,
        team=team_name,
    )
    by_id = {c.id: c for c in [*digest.top, *digest.rising, *digest.new, *digest.quiet]}
    context.update(
        digest=digest,
        stored=stored,
        by_id=by_id,
        week_value=digest.week,
        team_value=digest.team or "",
    )
    return _page(request, "home.html", context)


@router.get("/digests/{digest_id}", response_class=HTMLResponse)
def stored_digest(
    request: Request, services: ServicesDep, session: SessionDep, digest_id: str
) -> Response:
    """A kept digest exactly as it was sent (the link in Slack and e-mail points here)."""
    if not _signed_in(request, services.api_keys):
        return _to_login()
    known = digest_id.isascii() and digest_id.isdigit() and len(digest_id) < 10
    row = session.get(StoredDigest, int(digest_id)) if known else None
    if row is None:
        message = f"No digest with id {digest_id[:20]}."
        return _page(request, "not_found.html", {"message": message}, status_code=404)
    return HTMLResponse(row.html)


# ---- clusters -------------------------------------------------------------------------------


def _int(value: str | None, *, what: str, default: int, low: int, high: int) -> int:
    text = (value or "").strip()
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise InvalidInput(f"{what} must be a whole number from {low} to {high}.")
    return int(text)


def _latest_week(clusters: list[ClusterPublic]) -> IsoWeek:
    weeks = []
    for c in clusters:
        for key in c.weekly:
            try:
                weeks.append(IsoWeek.parse(key))
            except AppError:
                continue
    return max(weeks) if weeks else IsoWeek.of(utcnow())


def _series(weekly: dict[str, int], weeks: list[IsoWeek]) -> list[int]:
    return [int(weekly.get(str(w), 0)) for w in weeks]


@router.get("/clusters", response_class=HTMLResponse)
def clusters_page(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    label: str | None = None,
    team: str | None = None,
    min_size: str | None = None,
    sort: str | None = None,
    page: str | None = None,
) -> Response:
    """The current clusters, filtered by label, team and size, sorted."""
    if not _signed_in(request, services.api_keys):
        return _to_login()
    routing = services.routing
    filters = {
        "label": (label or "").strip(),
        "team": (team or "").strip(),
        "min_size": (min_size or "").strip(),
        "sort": (sort or "").strip() or "size",
    }
    context: dict[str, Any] = {
        "filters": filters,
        "labels": CLUSTER_LABELS,
        "teams": routing.teams,
        "sorts": cluster_service.SORTS,
        "rows": [],
        "count": 0,
        "page": 1,
        "pages": 1,
        "weeks": [],
        "page_link": lambda n: "",
    }
    try:
        if filters["label"] and filters["label"] not in CLUSTER_LABELS:
            raise InvalidInput(f"label must be one of {', '.join(CLUSTER_LABELS)} (or any).")
        if filters["team"] and filters["team"] not in routing.teams:
            raise InvalidInput(
                f"team {filters['team']!r} is not in the routing table; teams: "
                f"{', '.join(routing.teams)}."
            )
        if filters["sort"] not in cluster_service.SORTS:
            raise InvalidInput(f"sort must be one of {', '.join(cluster_service.SORTS)}.")
        size = _int(filters["min_size"], what="min size", default=1, low=1, high=MAX_ID)
        number = _int(page, what="page", default=1, low=1, high=100_000)
    except AppError as exc:
        return _page(request, "clusters.html", {**context, "error": exc.message}, status_code=422)
    data, count = cluster_service.list_clusters(
        session, routing=routing, label=filters["label"] or None, team=filters["team"] or None,
        min_size=size, sort=filters["sort"], page=number, limit=CLUSTERS_PER_PAGE,
    )  # fmt: skip
    weeks = _latest_week(data).span(SPARK_WEEKS)
    query = {k: v for k, v in filters.items() if v}

    def page_link(n: int) -> str:
        return "/clusters?" + urlencode({**query, "page": n})

    context.update(
        rows=[(c, _series(c.weekly, weeks)) for c in data],
        count=count,
        page=number,
        pages=max(1, -(-count // CLUSTERS_PER_PAGE)),
        weeks=[str(w) for w in weeks],
        page_link=page_link,
    )
    return _page(request, "clusters.html", context)


def _cluster_id(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        return None
    return int(text)


def _trend(weekly: dict[str, int]) -> tuple[list[str], list[int]]:
    """Every week from the first to the last with a count (at most CHART_WEEKS), zeros kept."""
    weeks = []
    for key in weekly:
        try:
            weeks.append(IsoWeek.parse(key))
        except AppError:
            continue
    if not weeks:
        return [], []
    first, last = min(weeks), max(weeks)
    shown = last.span(min(CHART_WEEKS, (last.start - first.start).days // 7 + 1))
    return [str(w) for w in shown], _series(weekly, shown)


def _not_found(request: Request, message: str) -> HTMLResponse:
    return _page(request, "not_found.html", {"message": message}, status_code=404)


def _cluster_view(
    request: Request,
    session: Session,
    routing: RoutingTable,
    cluster_id: int,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    """The cluster page; `form` and `error` when a correction was refused."""
    try:
        cluster = cluster_service.get_cluster(session, cluster_id=cluster_id, routing=routing)
        members, total = cluster_service.list_members(
            session, cluster_id=cluster_id, limit=MEMBERS_SHOWN
        )
    except NotFound as exc:
        return _not_found(request, exc.message)
    if form is None:
        current = cluster.label if cluster.label and cluster.label.source == "override" else None
        form = {
            "label": current.label if current else (cluster.label.label if cluster.label else ""),
            "subcategory": (current.subcategory or "") if current else "",
            "author": (current.author or "") if current else "",
            "note": (current.note or "") if current else "",
        }
    weeks, counts = _trend(cluster.weekly)
    context = {
        "cluster": cluster,
        "members": members,
        "total": total,
        "trend_weeks": weeks,
        "trend_counts": counts,
        "form": form,
        "labels": UXCX_LABELS,
        "subcategories": SUBCATEGORIES,
        "error": error,
        "notice": notice,
    }
    return _page(request, "cluster.html", context, status_code=422 if error else 200)


@router.get("/clusters/{cluster_id}", response_class=HTMLResponse)
def cluster_page(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    cluster_id: str,
    saved: str | None = None,
    removed: str | None = None,
) -> Response:
    """One cluster: title, phrases, labels, trend, representatives, members, correction form."""
    if not _signed_in(request, services.api_keys):
        return _to_login()
    cid = _cluster_id(cluster_id)
    if cid is None:
        return _not_found(request, f"No cluster with id {cluster_id!r}.")
    notice = "Correction saved." if saved else "Correction removed." if removed else None
    return _cluster_view(request, session, services.routing, cid, notice=notice)


@router.post("/clusters/{cluster_id}/label", response_class=HTMLResponse)
async def set_cluster_label(
    request: Request, services: ServicesDep, session: SessionDep, cluster_id: str
) -> Response:
    """Store a person's label for the cluster (it wins over the model), then back to its page."""
    if not _signed_in(request, services.api_keys):
        return _to_login()
    cid = _cluster_id(cluster_id)
    if cid is None:
        return _not_found(request, f"No cluster with id {cluster_id!r}.")
    values: dict[str, str] = {"label": "", "subcategory": "", "author": "", "note": ""}
    try:
        form = await _form(request)
        values = {k: form.get(k, "") for k in values}
        update = LabelUpdateAdapter.validate_python(
            {
                "label": values["label"],
                "subcategory": values["subcategory"] or None,
                "author": values["author"],
                "note": values["note"] or None,
            }
        )
        cluster_service.set_label(session, cluster_id=cid, update_=update)
    except ValidationError as exc:
        problems = "; ".join(
            f"{d['field']}: {d['message']}" for d in validation_details(list(exc.errors()))
        )
        error = f"The correction was not saved. {problems}."
        return _cluster_view(request, session, services.routing, cid, form=values, error=error)
    except NotFound as exc:
        return _not_found(request, exc.message)
    except AppError as exc:
        error = f"The correction was not saved: {exc.message}"
        return _cluster_view(request, session, services.routing, cid, form=values, error=error)
    return RedirectResponse(f"/clusters/{cid}?saved=1", status_code=303)


@router.post("/clusters/{cluster_id}/label/delete", response_class=HTMLResponse)
def remove_cluster_label(
    request: Request, services: ServicesDep, session: SessionDep, cluster_id: str
) -> Response:
    """Remove the cluster's correction: the model's label counts again."""
    if not _signed_in(request, services.api_keys):
        return _to_login()
    cid = _cluster_id(cluster_id)
    if cid is None:
        return _not_found(request, f"No cluster with id {cluster_id!r}.")
    try:
        cluster_service.clear_label(session, cluster_id=cid)
    except NotFound as exc:
        return _not_found(request, exc.message)
    return RedirectResponse(f"/clusters/{cid}?removed=1", status_code=303)
