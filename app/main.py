"""The FastAPI application: create_app(), lifespan (load artifacts once), health and errors."""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.clusters.router import router as clusters_router
from app.clusters.service import ClusterIndexCache
from app.core.auth import ApiKeyDep
from app.core.body import OPENAPI_SCHEMAS
from app.core.config import Settings, get_settings
from app.core.db import make_engine
from app.core.deps import Services, ServicesDep
from app.core.errors import error_body, install_error_handlers
from app.core.logging import configure_logging
from app.digests.router import router as digests_router
from app.enrich.queue import WorkSignal
from app.enrich.worker import Worker, start_in_thread
from app.ingest.batcher import StoreBatcher
from app.ingest.router import posts_router, webhooks_router
from app.ingest.router import router as ingest_router
from app.ingest.sources import SourceRegistry
from app.labels.router import router as labels_router
from app.nlp.analyzer import Analyzer
from app.nlp.loader import load_analyzer
from app.outbound.router import router as outbound_router
from app.outbound.service import OutboundSender
from app.routing.table import RoutingTable
from app.tickets.router import router as tickets_router
from app.triage.router import router as triage_router
from app.web.router import router as web_router

log = logging.getLogger("app.main")

# What every answer may load or run: nothing but its own inline styles and data: images. The
# pages and digests run no scripts and load nothing, so a title or a quote that slips past
# escaping still cannot run or fetch anything.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Pure ASGI middleware: `X-Content-Type-Options: nosniff` on every response, and the strict
    Content-Security-Policy on every response that sets none of its own, except the paths in
    `open_paths` (the interactive docs, which load Swagger UI's scripts).

    Pure ASGI rather than BaseHTTPMiddleware, which runs each request in an extra task and
    costs latency on every call."""

    def __init__(self, app: ASGIApp, *, open_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        strict = scope["path"] not in self.open_paths

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if strict:
                    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_services(settings: Settings, analyzer: Analyzer | None = None) -> Services:
    """Open the database and load every artifact; fails fast with a clear message."""
    engine = make_engine(settings.database_url)
    return Services(
        settings=settings,
        engine=engine,
        analyzer=analyzer or load_analyzer(settings),
        routing=RoutingTable.load(settings.routing_table),
        sources=SourceRegistry(settings.extra_sources),
        signal=WorkSignal(),
        author_salt=settings.resolved_author_salt(),
        clusters=ClusterIndexCache(engine),
        api_keys=settings.resolved_api_keys(),
        batcher=StoreBatcher(engine),
    )


def create_app(settings: Settings | None = None, *, analyzer: Analyzer | None = None) -> FastAPI:
    """The service; tests pass their own settings and an already loaded analyzer."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, analyzer)
        app.state.services = services
        # The loaded artifacts are millions of long-lived objects; left to the collector, every
        # full collection walks them all (100-300 ms pauses under load). Freeze them out of it.
        gc.collect()
        gc.freeze()
        # The event loop shares the interpreter with the threads that write to the database;
        # a 1 ms switch interval (default 5 ms) keeps a write from holding up answers.
        sys.setswitchinterval(0.001)
        if services.engine.dialect.name == "postgresql":
            # Open a few pooled connections now, not while the first deliveries wait on them.
            try:
                opened = [services.engine.connect() for _ in range(4)]
            except Exception:  # noqa: BLE001 - /readyz reports the database; start anyway
                log.warning("database unreachable at start-up", extra={"stage": "startup"})
            else:
                for conn in opened:
                    conn.close()
        worker: Worker | None = None
        thread: threading.Thread | None = None
        if settings.worker_in_process:
            worker = Worker(
                engine=services.engine,
                analyzer=services.analyzer,
                routing=services.routing,
                batch_size=settings.worker_batch_size,
                batch_chars=settings.worker_batch_chars,
                poll_interval_s=settings.worker_poll_interval_s,
                max_attempts=settings.worker_max_attempts,
                signal=services.signal,
                assign_min_cosine=settings.cluster_assign_min_cosine,
                outbound=settings.outbound_config() is not None,
                digest_settings=settings,
            )
            thread = start_in_thread(worker)
        outbound = settings.outbound_config()
        sender: OutboundSender | None = None
        if settings.worker_in_process and outbound is not None:
            sender = OutboundSender(
                engine=services.engine, config=outbound, routing=services.routing
            )
            sender.start()
        app.state.worker_thread = thread
        log.info(
            "service ready",
            extra={
                "stage": "startup",
                "database": services.engine.dialect.name,
                "worker_in_process": settings.worker_in_process,
            },
        )
        try:
            yield
        finally:
            if sender is not None:
                sender.stop()
            if worker is not None and thread is not None:
                worker.stop()
                thread.join(timeout=30)
            services.engine.dispose()

    app = FastAPI(
        title="IssueLens",
        version="0.1.0",
        summary="Sentiment, UX/CX routing and recurring issues from tickets and social posts.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    docs = (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    app.add_middleware(SecurityHeaders, open_paths=frozenset(p for p in docs if p))
    keyed: dict[str, Any] = {
        "dependencies": [ApiKeyDep],
        "responses": {
            401: {"description": "No API key, or not a valid one."},
            429: {
                "description": "Too many wrong API keys from this address; wait Retry-After "
                "seconds."
            },
        },
    }
    app.include_router(ingest_router, **keyed)
    app.include_router(posts_router, **keyed)
    app.include_router(tickets_router, **keyed)
    app.include_router(labels_router, **keyed)
    app.include_router(triage_router, **keyed)
    app.include_router(clusters_router, **keyed)
    app.include_router(outbound_router, **keyed)
    app.include_router(digests_router, **keyed)
    # Helpdesks authenticate by signing each delivery, not by API key.
    app.include_router(webhooks_router)
    app.include_router(web_router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "Not ready"}})
    def readyz(services: ServicesDep) -> Any:
        """Database reachable and artifacts loaded (and the in-process worker alive)."""
        checks: dict[str, str] = {}
        try:
            with services.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["analysers"] = "ok" if services.analyzer is not None else "not loaded"
        thread = getattr(app.state, "worker_thread", None)
        if services.settings.worker_in_process:
            checks["worker"] = "ok" if thread is not None and thread.is_alive() else "stopped"
        if all(v == "ok" for v in checks.values()):
            return {"status": "ready", "checks": checks}
        return JSONResponse(
            {**error_body("not_ready", "The service is not ready."), "checks": checks},
            status_code=503,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(OPENAPI_SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _app_from_settings() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


app = _app_from_settings()
