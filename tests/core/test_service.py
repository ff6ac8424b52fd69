"""Health, readiness, configuration, migrations and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlmodel import SQLModel

from app.core.config import Settings
from app.core.db import make_engine
from app.main import create_app
from app.migrate import alembic_config
from app.nlp.analyzer import Analyzer
from tests.helpers import AUTH


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "analysers": "ok"}}


def test_not_ready_when_database_unreachable(
    make_settings: Callable[..., Settings], analyzer: Analyzer
) -> None:
    settings = make_settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app(settings, analyzer=analyzer), headers=AUTH) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["code"] == "not_ready"
        assert r.json()["checks"]["database"].startswith("unreachable")


def test_migrations_match_the_tables(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_migrations_go_down_and_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0011"
    engine.dispose()


def test_settings_defaults_and_production_guard(tmp_path: Path) -> None:
    s = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert s.database_url == f"sqlite:///{tmp_path.as_posix()}/app.db"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    salt = s.resolved_author_salt()
    assert len(salt) == 64 and s.resolved_author_salt() == salt  # generated once, then kept
    with pytest.raises(ValidationError, match="AUTHOR_HASH_SALT"):
        Settings(_env_file=None, env="production")  # type: ignore[call-arg]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("WORKER_BATCH_SIZE", "8")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.port, s.database_url, s.worker_batch_size) == (9123, "postgresql://u@h/db", 8)
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_openapi_documents_the_request_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/tickets"]["post"]["requestBody"]["content"]["application/json"]
    refs = {s.get("$ref") for s in body["schema"]["anyOf"]}
    assert "#/components/schemas/TicketCreate" in refs
    assert "body" in spec["components"]["schemas"]["TicketCreate"]["properties"]
    assert "/v1/triage" in spec["paths"] and "/v1/tickets/{ticket_id}" in spec["paths"]
