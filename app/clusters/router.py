"""HTTP: recurring issues (clusters), their members, merges, label corrections and runs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from app.clusters import run as cluster_run
from app.clusters import service as cluster_service
from app.clusters.models import ClusterRun
from app.clusters.schemas import (
    ClusterPublic,
    ClustersPublic,
    MembersPublic,
    MergeRequest,
    MergeRequestAdapter,
    RunPublic,
    RunRequest,
    RunRequestAdapter,
)
from app.core.body import json_body_openapi, parse_json, read_body, validate
from app.core.deps import RoutingDep, ServicesDep, SessionDep, SettingsDep
from app.core.errors import NotFound
from app.core.limits import BODY_ERRORS, MAX_ID, NO_NUL, NOT_FOUND
from app.labels.schemas import LabelUpdate, LabelUpdateAdapter

router = APIRouter(prefix="/v1", tags=["clusters"])

ClusterId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post(
    "/clusters/runs",
    status_code=202,
    response_model=RunPublic,
    openapi_extra=json_body_openapi(RunRequestAdapter, description="Optional: window_days."),
)
async def request_run(request: Request, services: ServicesDep, session: SessionDep) -> RunPublic:
    """Queue a clustering run; the worker carries it out (never this request)."""
    raw = await read_body(request, max_bytes=services.settings.max_request_bytes)
    payload: RunRequest = validate(RunRequestAdapter, parse_json(raw) if raw.data.strip() else {})
    run_id = cluster_run.request_run(
        services.engine,
        window_days=payload.window_days or services.settings.cluster_window_days,
        requested_by=payload.requested_by,
    )
    services.signal.notify()
    run = session.get(ClusterRun, run_id)
    assert run is not None
    return cluster_service.run_public(run)


@router.get("/clusters/runs/{run_id}", response_model=RunPublic, responses=NOT_FOUND)
def read_run(session: SessionDep, run_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> RunPublic:
    """One clustering run: status, window, counts, timings, error."""
    run = session.get(ClusterRun, run_id)
    if run is None:
        raise NotFound(f"No cluster run with id {run_id}.")
    return cluster_service.run_public(run)


@router.get("/clusters", response_model=ClustersPublic)
def list_clusters(
    session: SessionDep,
    routing: RoutingDep,
    label: Annotated[
        Literal["UX", "CX", "none", "mixed"] | None,
        Query(description="the label that counts (a correction wins)"),
    ] = None,
    team: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    min_size: Annotated[int, Query(ge=1, le=MAX_ID)] = 1,
    sort: Annotated[Literal["size", "growth", "negativity"], Query()] = "size",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ClustersPublic:
    """The current clusters, filtered and sorted (largest, fastest-growing or most negative)."""
    data, count = cluster_service.list_clusters(
        session, routing=routing, label=label, team=team, min_size=min_size, sort=sort,
        page=page, limit=limit,
    )  # fmt: skip
    return ClustersPublic(data=data, count=count)


@router.get("/clusters/{cluster_id}", response_model=ClusterPublic, responses=NOT_FOUND)
def read_cluster(session: SessionDep, routing: RoutingDep, cluster_id: ClusterId) -> ClusterPublic:
    """One cluster with its weekly counts, representatives and labels."""
    return cluster_service.get_cluster(session, cluster_id=cluster_id, routing=routing)


@router.get("/clusters/{cluster_id}/members", response_model=MembersPublic, responses=NOT_FOUND)
def list_members(
    session: SessionDep,
    cluster_id: ClusterId,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> MembersPublic:
    """The cluster's tickets, most typical first."""
    data, count = cluster_service.list_members(
        session, cluster_id=cluster_id, page=page, limit=limit
    )
    return MembersPublic(data=data, count=count)


@router.post(
    "/clusters/{cluster_id}/merge",
    response_model=ClusterPublic,
    openapi_extra=json_body_openapi(MergeRequestAdapter, description="The cluster to merge into."),
    responses=BODY_ERRORS,
)
async def merge_cluster(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    routing: RoutingDep,
    cluster_id: ClusterId,
) -> ClusterPublic:
    """Merge this cluster into `into`; later runs keep them together. Answers the merged one."""
    raw = await read_body(request, max_bytes=settings.max_request_bytes)
    payload: MergeRequest = validate(MergeRequestAdapter, parse_json(raw))
    cluster_service.merge(session, cluster_id=cluster_id, into=payload.into)
    return cluster_service.get_cluster(session, cluster_id=payload.into, routing=routing)


@router.put(
    "/clusters/{cluster_id}/label",
    response_model=ClusterPublic,
    openapi_extra=json_body_openapi(LabelUpdateAdapter, description="The corrected label."),
    responses=BODY_ERRORS,
)
async def put_cluster_label(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    routing: RoutingDep,
    cluster_id: ClusterId,
) -> ClusterPublic:
    """Correct a cluster's label; it wins over the model and is kept by later runs."""
    raw = await read_body(request, max_bytes=settings.max_request_bytes)
    update: LabelUpdate = validate(LabelUpdateAdapter, parse_json(raw))
    cluster_service.set_label(session, cluster_id=cluster_id, update_=update)
    return cluster_service.get_cluster(session, cluster_id=cluster_id, routing=routing)


@router.delete("/clusters/{cluster_id}/label", status_code=204, responses=NOT_FOUND)
def delete_cluster_label(session: SessionDep, cluster_id: ClusterId) -> Response:
    """Remove a cluster's correction."""
    cluster_service.clear_label(session, cluster_id=cluster_id)
    return Response(status_code=204)
