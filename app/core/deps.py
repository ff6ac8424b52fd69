"""FastAPI dependencies: the only way routes reach the database and the loaded artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlmodel import Session

from app.clusters.service import ClusterIndexCache
from app.core.config import Settings
from app.enrich.queue import WorkSignal
from app.ingest.batcher import StoreBatcher
from app.ingest.sources import SourceRegistry
from app.nlp.analyzer import Analyzer
from app.routing.table import RoutingTable


@dataclass
class Services:
    """What `lifespan` loads once and every request shares."""

    settings: Settings
    engine: Engine
    analyzer: Analyzer
    routing: RoutingTable
    sources: SourceRegistry
    signal: WorkSignal
    author_salt: str
    clusters: ClusterIndexCache  # the current clusters, for triage
    api_keys: tuple[str, ...] = ()
    batcher: StoreBatcher | None = None


async def get_services(request: Request) -> Services:
    """The process's loaded services (async: FastAPI runs it inline, not in a thread)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings_dep(services: ServicesDep) -> Settings:
    """The settings the app was created with."""
    return services.settings


def get_session(services: ServicesDep) -> Iterator[Session]:
    """A database session for one request."""
    with Session(services.engine, expire_on_commit=False) as session:
        yield session


async def get_analyzer(services: ServicesDep) -> Analyzer:
    """The loaded analysers."""
    return services.analyzer


async def get_routing(services: ServicesDep) -> RoutingTable:
    """The routing table."""
    return services.routing


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
AnalyzerDep = Annotated[Analyzer, Depends(get_analyzer)]
RoutingDep = Annotated[RoutingTable, Depends(get_routing)]
