"""Shared fixtures: the real analysers (loaded once), real databases, the real app.

Every test that takes `db_url` runs on SQLite and, when TEST_DATABASE_URL is set, on
PostgreSQL too: the backends are generated as parameters, never skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.core.config import Settings
from app.core.db import make_engine
from app.enrich.worker import Worker
from app.main import create_app
from app.migrate import alembic_config
from app.nlp.analyzer import Analyzer
from app.nlp.embedder import TransformerEmbedder
from app.nlp.loader import load_analyzer
from app.routing.table import RoutingTable
from tests.helpers import API_KEY, AUTH

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PG_URL = os.environ.get("TEST_DATABASE_URL", "").strip()
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
TABLES = (
    "web_session",
    "digest",
    "outbound_delivery",
    "webhook_event",
    "cluster_member",
    "cluster_label",
    "cluster",
    "cluster_run",
    "ticket_label",
    "ticket_analysis",
    "ticket",
    "raw_delivery",
)


# Modules named test_postgres_*.py exercise what only PostgreSQL has (SKIP LOCKED); without
# TEST_DATABASE_URL they are not collected at all. Their tests run on PostgreSQL alone.
collect_ignore_glob = [] if PG_URL else ["*/test_postgres_*.py"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run database tests once per backend (PostgreSQL only for test_postgres_* modules)."""
    if "backend" in metafunc.fixturenames:
        backends = BACKENDS
        if metafunc.module.__name__.rsplit(".", 1)[-1].startswith("test_postgres_"):
            backends = ["postgresql"]
        metafunc.parametrize("backend", backends, scope="session")


@pytest.fixture(scope="session")
def analyzer() -> Analyzer:
    """The real analysers with the default settings (the int8 ONNX encoder and branch, the
    trained sentiment and UX/CX artifacts, py3langid), loaded once."""
    return load_analyzer(Settings(_env_file=None))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def torch_embedder() -> TransformerEmbedder:
    """The encoder on PyTorch fp32: the reference every other backend is measured against."""
    return TransformerEmbedder()


@pytest.fixture(scope="session")
def _migrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each backend migrated once per session: down to nothing, then up to head."""
    from alembic import command

    urls = {"sqlite": f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"}
    if PG_URL:
        urls["postgresql"] = PG_URL
    for url in urls.values():
        cfg = alembic_config(url)
        command.downgrade(cfg, "base")
        command.upgrade(cfg, "head")
    return urls


@pytest.fixture
def db_url(backend: str, _migrated: dict[str, str]) -> Iterator[str]:
    """A migrated, empty database of the current backend."""
    url = _migrated[backend]
    engine = make_engine(url)
    _truncate(engine)
    engine.dispose()
    yield url


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the test database."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def make_settings(db_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test app on the test database; keyword arguments override."""

    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_url,
            "data_dir": tmp_path / "var",
            "author_hash_salt": "test-salt",
            "worker_in_process": False,
            "api_keys": API_KEY,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return _make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Default test settings (no in-process worker: tests drive the worker themselves)."""
    return make_settings()


@pytest.fixture
def client(settings: Settings, analyzer: Analyzer) -> Iterator[TestClient]:
    """The real app (real analysers, real database) behind a test client."""
    app = create_app(settings, analyzer=analyzer)
    with TestClient(app, headers=AUTH) as c:
        yield c


@pytest.fixture
def worker(engine: Engine, analyzer: Analyzer, settings: Settings) -> Worker:
    """A worker on the test database, driven by the test."""
    return Worker(
        engine=engine,
        analyzer=analyzer,
        routing=RoutingTable.load(settings.routing_table),
        batch_size=16,
        max_attempts=settings.worker_max_attempts,
    )


@pytest.fixture(scope="session")
def sample_items() -> list[dict[str, Any]]:
    """Tickets and posts written for this project (fixtures/tickets/sample.jsonl)."""
    path = FIXTURES / "tickets" / "sample.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
