"""Schemathesis against the OpenAPI schema of a running service: every endpoint, bounded.

A real uvicorn server on 127.0.0.1 (real analysers, real database of each backend) answers
generated requests, valid and invalid; every response must be documented, match its schema and
never be a 5xx."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from sqlalchemy.exc import DataError

from app.core.config import Settings
from app.main import create_app
from app.nlp.analyzer import Analyzer
from tests.helpers import API_KEY, AUTH, serve_in_thread

EXAMPLES = 25


@pytest.fixture(scope="module")
def live_server(
    backend: str,
    _migrated: dict[str, str],
    analyzer: Analyzer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The service on a free loopback port, for the length of this module."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    app_settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=_migrated[backend],
        data_dir=tmp / "var",
        author_hash_salt="fuzz",
        worker_in_process=False,
        api_keys=API_KEY,
        # Schemathesis sends many wrong keys on purpose; the limit would answer the rest 429.
        api_key_failure_limit=1_000_000,
        generic_webhook_secret="fuzz-secret",
    )
    with serve_in_thread(create_app(app_settings, analyzer=analyzer)) as url:
        yield url


def _operations() -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document, read without starting the service."""
    spec = create_app(Settings(_env_file=None, api_keys=API_KEY)).openapi()  # type: ignore[call-arg]
    return [(m.upper(), path) for path, ops in spec["paths"].items() for m in ops]


_SCHEMAS: dict[str, schemathesis.BaseSchema] = {}


@pytest.mark.parametrize(("method", "path"), _operations())
def test_every_endpoint_holds_its_schema(live_server: str, method: str, path: str) -> None:
    """No 5xx, documented status codes, bodies and content types that match the schema."""
    if live_server not in _SCHEMAS:
        _SCHEMAS[live_server] = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    operation = _SCHEMAS[live_server][path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        # Not positive_data_acceptance: some rules are not JSON Schema (a source must be one the
        # deployment knows, a text must not be blank), so schema-valid requests may get a 422.
        case.call_and_validate(
            headers=AUTH,
            timeout=30,
            excluded_checks=[schemathesis.checks.positive_data_acceptance],
        )

    run()


def test_what_the_fuzzer_found_is_a_4xx(client: TestClient) -> None:
    """Regressions: each of these was a 500 before (found by the test above)."""
    cases = [
        ("GET", "/v1/tickets?source=a%00b", None),  # NUL in a PostgreSQL text comparison
        ("GET", "/v1/clusters?team=%00", None),
        ("GET", "/v1/tickets/36893488147419103232", None),  # past a 64-bit integer
        ("GET", "/v1/outbound?offset=36893488147419103232", None),
        ("GET", "/v1/clusters?min_size=7067003228762710999040", None),
        ("POST", "/v1/clusters/1/merge", {"into": 18657657646200.0, "author": "a"}),
    ]
    for method, url, body in cases:
        r = client.request(method, url, json=body)
        assert r.status_code == 422, (url, r.status_code, r.text)
        assert r.json()["code"] == "validation_error"


def test_a_value_the_database_refuses_is_422_not_500(
    make_settings: Callable[..., Settings], analyzer: Analyzer
) -> None:
    """The safety net behind validation: a DataError from the driver is the client's data."""
    app = create_app(make_settings(), analyzer=analyzer)

    @app.get("/v1/raise-data-error")
    def _boom() -> None:
        raise DataError("SELECT 1", {}, ValueError("integer out of range"))

    with TestClient(app, headers=AUTH) as c:
        r = c.get("/v1/raise-data-error")
    assert r.status_code == 422 and r.json()["code"] == "invalid_value"
    assert "NUL" in r.json()["message"]
