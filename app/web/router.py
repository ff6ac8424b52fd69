"""HTTP: the browser pages. Sign-in by API key into a session, the digest, clusters, corrections.

Browsers cannot send Bearer headers, so `/login` takes an API key once and opens a server-side
session (app.web.service): the HttpOnly, SameSite=Strict cookie holds a random token that
expires after WEB_SESSION_TTL_S, on the server too, ends at sign-out and when its key leaves
API_KEYS, and is no Bearer key for the API. Every other page answers 303 to `/login` without a
live one. Every form POST passes app.web.security's checks (form content type, same origin,
the session's csrf_token) before anything is done; wrong keys at sign-in count towards the
client's failure limit (app.core.guard) like wrong Bearer keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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
from app.core.db import utcnow
from app.core.deps import Services, ServicesDep, SessionDep
from app.core.errors import AppError, InvalidInput, NotFound, validation_details
from app.core.guard import KeyGuardDep, client_address
from app.core.limits import MAX_ID
from app.digests import service as digest_service
from app.digests.models import StoredDigest
from app.digests.render import LABEL_COLOURS, UNLABELLED, pct, sparkline_svg
from app.digests.schemas import Digest
from app.digests.weeks import IsoWeek
from app.labels.schemas import LabelUpdateAdapter
from app.nlp.base import SUBCATEGORIES, UXCX_LABELS
from app.routing.table import RoutingTable
from app.web import security
from app.web import service as web_service
from app.web.models import WebSession
from app.web.security import LOGIN_COOKIE, PostedForm, PostedFormDep

router = APIRouter(include_in_schema=False)

COOKIE = "issuelens_session"
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


def _web_session(request: Request, session: Session, services: Services) -> WebSession | None:
    """The live sign-in behind the request's cookie, if any."""
    web = web_service.find_session(
        session, token=request.cookies.get(COOKIE), keys=services.api_keys,
        secret=services.author_salt,
    )  # fmt: skip
    # End the read here: a form's write must open its own transaction as a writer (BEGIN
    # IMMEDIATE on SQLite, see core.db.begin_write), which a read left open would prevent.
    if web is not None:
        session.expunge(web)
    session.rollback()
    return web


def _set_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int, path: str
) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=path, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def _clear_cookie(request: Request, response: Response, name: str, *, path: str) -> None:
    response.delete_cookie(
        name, path=path, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def _to_login(request: Request) -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    if COOKIE in request.cookies:  # expired, revoked or forged: the browser may forget it
        _clear_cookie(request, response, COOKIE, path="/")
    return response


def _page(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    web: WebSession | None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    values: dict[str, Any] = {
        "error": None,
        "notice": None,
        "signed_in": web is not None,
        "csrf_token": web.csrf_token if web is not None else "",
    }
    values.update(context)
    return templates.TemplateResponse(
        request, name, values, status_code=status_code,
        headers={**SECURITY_HEADERS, **(headers or {})},
    )  # fmt: skip


def _refused(request: Request, exc: AppError, web: WebSession | None) -> HTMLResponse:
    """The page for a form POST refused before anything was done (403, 413, 415, 422)."""
    return _page(
        request, "refused.html", {"message": exc.message}, web=web,
        status_code=exc.status_code, headers=exc.headers,
    )  # fmt: skip


def _form_refused(request: Request, posted: PostedForm, web: WebSession) -> HTMLResponse | None:
    """None when a signed-in form POST may go ahead, else the page that refuses it."""
    try:
        if posted.problem is not None:
            raise posted.problem
        security.check_csrf(posted, web.csrf_token)
    except AppError as exc:
        return _refused(request, exc, web)
    return None


def _login_form(
    request: Request,
    services: Services,
    *,
    web: WebSession | None,
    error: str | None = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """The sign-in form with its double-submit token (cookie and hidden field)."""
    cookie, token = security.login_token(
        request.cookies.get(LOGIN_COOKIE), secret=services.author_salt
    )
    response = _page(
        request, "login.html", {"login_token": token, "error": error}, web=web,
        status_code=status_code, headers=headers,
    )  # fmt: skip
    _set_cookie(
        request, response, LOGIN_COOKIE, cookie, max_age=security.LOGIN_FORM_TTL_S, path="/login"
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    """The sign-in form."""
    return _login_form(request, services, web=_web_session(request, session, services))


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    guard: KeyGuardDep,
    posted: PostedFormDep,
) -> Response:
    """Check the API key; a valid one opens a session (cookie) and the digest."""
    client = client_address(request)
    try:
        if posted.problem is not None:
            raise posted.problem
        security.check_login_token(
            request.cookies.get(LOGIN_COOKIE), posted, secret=services.author_salt
        )
        guard.check(client)  # a blocked client's key is not even looked at
    except AppError as exc:
        return _login_form(
            request, services, web=None, error=exc.message, status_code=exc.status_code,
            headers=exc.headers,
        )  # fmt: skip
    key = posted.get("key").strip()
    if not key:
        error = "Enter an API key (one of the service's API_KEYS)."
    elif not matches_any(key, services.api_keys):
        guard.record_failure(client)
        error = "That API key is not valid."
    else:
        # A new token on every sign-in; the browser's previous session, if any, ends.
        web_service.end_session(session, token=request.cookies.get(COOKIE))
        ttl = services.settings.web_session_ttl_s
        token, _ = web_service.create_session(
            session, key=key, secret=services.author_salt, ttl_s=ttl
        )
        response = RedirectResponse("/", status_code=303)
        _set_cookie(request, response, COOKIE, token, max_age=ttl, path="/")
        _clear_cookie(request, response, LOGIN_COOKIE, path="/login")
        return response
    return _login_form(request, services, web=None, error=error, status_code=401)


@router.get("/logout", response_class=HTMLResponse)
def logout_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    """A page with the sign-out button: signing out is a POST, never a link to follow."""
    web = _web_session(request, session, services)
    if web is None:
        return _to_login(request)
    return _page(request, "logout.html", {}, web=web)


@router.post("/logout")
def logout(
    request: Request, services: ServicesDep, session: SessionDep, posted: PostedFormDep
) -> Response:
    """End the session on the server and forget its cookie."""
    web = _web_session(request, session, services)
    if web is None:
        return _to_login(request)
    if (refused := _form_refused(request, posted, web)) is not None:
        return refused
    web_service.end_session(session, token=request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    _clear_cookie(request, response, COOKIE, path="/")
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
    web = _web_session(request, session, services)
    if web is None:
        return _to_login(request)
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
        error = {**context, "error": exc.message}
        return _page(request, "home.html", error, web=web, status_code=422)
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
    return _page(request, "home.html", context, web=web)


@router.get("/digests/{digest_id}", response_class=HTMLResponse)
def stored_digest(
    request: Request, services: ServicesDep, session: SessionDep, digest_id: str
) -> Response:
    """A kept digest exactly as it was sent (the link in Slack and e-mail points here)."""
    web = _web_session(request, session, services)
    if web is None:
        return _to_login(request)
    known = digest_id.isascii() and digest_id.isdigit() and len(digest_id) < 10
    row = session.get(StoredDigest, int(digest_id)) if known else None
    if row is None:
        message = f"No digest with id {digest_id[:20]}."
        return _not_found(request, message, web)
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
    web = _web_session(request, session, services)
    if web is None:
        return _to_login(request)
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
        error = {**context, "error": exc.message}
        return _page(request, "clusters.html", error, web=web, status_code=422)
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
    return _page(request, "clusters.html", context, web=web)


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


def _not_found(request: Request, message: str, web: WebSession) -> HTMLResponse:
    return _page(request, "not_found.html", {"message": message}, web=web, status_code=404)


def _cluster_view(
    request: Request,
    session: Session,
    routing: RoutingTable,
    cluster_id: int,
    *,
    web: WebSession,
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
        return _not_found(request, exc.message, web)
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
    return _page(request, "cluster.html", context, web=web, status_code=422 if error else 200)


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
    web = _web_session(request, session, services)
    if web is None:
        return _to_login(request)
    cid = _cluster_id(cluster_id)
    if cid is None:
        return _not_found(request, f"No cluster with id {cluster_id!r}.", web)
    notice = "Correction saved." if saved else "Correction removed." if removed else None
    return _cluster_view(request, session, services.routing, cid, web=web, notice=notice)


@router.post("/clusters/{cluster_id}/label", response_class=HTMLResponse)
def set_cluster_label(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    posted: PostedFormDep,
    cluster_id: str,
) -> Response:
    """Store a person's label for the cluster (it wins over the model), then back to its page."""
    web = _web_session(request, session, services)
    if web is None:
        return _to_login(request)
    if (refused := _form_refused(request, posted, web)) is not None:
        return refused
    cid = _cluster_id(cluster_id)
    if cid is None:
        return _not_found(request, f"No cluster with id {cluster_id!r}.", web)
    values = {k: posted.get(k) for k in ("label", "subcategory", "author", "note")}
    try:
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
        return _cluster_view(
            request, session, services.routing, cid, web=web, form=values, error=error
        )
    except NotFound as exc:
        return _not_found(request, exc.message, web)
    except AppError as exc:
        error = f"The correction was not saved: {exc.message}"
        return _cluster_view(
            request, session, services.routing, cid, web=web, form=values, error=error
        )
    return RedirectResponse(f"/clusters/{cid}?saved=1", status_code=303)


@router.post("/clusters/{cluster_id}/label/delete", response_class=HTMLResponse)
def remove_cluster_label(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    posted: PostedFormDep,
    cluster_id: str,
) -> Response:
    """Remove the cluster's correction: the model's label counts again."""
    web = _web_session(request, session, services)
    if web is None:
        return _to_login(request)
    if (refused := _form_refused(request, posted, web)) is not None:
        return refused
    cid = _cluster_id(cluster_id)
    if cid is None:
        return _not_found(request, f"No cluster with id {cluster_id!r}.", web)
    try:
        cluster_service.clear_label(session, cluster_id=cid)
    except NotFound as exc:
        return _not_found(request, exc.message, web)
    return RedirectResponse(f"/clusters/{cid}?removed=1", status_code=303)
