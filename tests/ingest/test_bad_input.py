"""Every kind of bad input gets a clear 4xx with a stable code, and nothing is stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.core.config import Settings
from app.main import create_app
from app.nlp.analyzer import Analyzer
from tests.helpers import AUTH, count_rows

GOOD = {"source": "zendesk", "external_id": "1", "body": "The app crashes on login"}


def assert_rejected(r: Any, status: int, code: str, engine: Engine, mentions: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    if mentions:
        assert mentions in body["message"]
    assert count_rows(engine, "ticket") == 0
    assert count_rows(engine, "raw_delivery") == 0


@pytest.mark.parametrize(
    ("payload", "status", "code", "mentions"),
    [
        ({**GOOD, "body": ""}, 422, "empty_text", "body is empty"),
        ({**GOOD, "body": " \n\t "}, 422, "empty_text", "body is empty"),
        ({k: v for k, v in GOOD.items() if k != "body"}, 422, "validation_error", "body"),
        ({k: v for k, v in GOOD.items() if k != "source"}, 422, "validation_error", "source"),
        ({**GOOD, "body": 123}, 422, "validation_error", "body"),
        ({**GOOD, "body": ["a", "b"]}, 422, "validation_error", "body"),
        ({**GOOD, "channel": "fax"}, 422, "validation_error", "channel"),
        ({**GOOD, "created_at": "last tuesday"}, 422, "validation_error", "created_at"),
        ({**GOOD, "metadata": "not an object"}, 422, "validation_error", "metadata"),
        ({**GOOD, "source": "myspace"}, 422, "unknown_source", "myspace"),
        ({**GOOD, "source": ""}, 422, "validation_error", "source"),
        ({**GOOD, "external_id": ""}, 422, "validation_error", "external_id"),
        ({**GOOD, "colour": "blue"}, 422, "validation_error", "colour"),
        ([], 422, "empty_batch", "empty"),
        ("just a string", 422, "validation_error", ""),
    ],
)
def test_invalid_items(
    client: TestClient, engine: Engine, payload: Any, status: int, code: str, mentions: str
) -> None:
    r = client.post("/v1/tickets", json=payload)
    assert_rejected(r, status, code, engine, mentions)


def test_one_bad_item_rejects_the_whole_batch(client: TestClient, engine: Engine) -> None:
    batch = [
        {**GOOD, "external_id": "a"},
        {**GOOD, "external_id": "b", "body": "   "},
        {**GOOD, "external_id": "c"},
    ]
    r = client.post("/v1/tickets", json=batch)
    assert_rejected(r, 422, "empty_text", engine, "items[1]")


def test_wrong_type_in_batch_names_the_item(client: TestClient, engine: Engine) -> None:
    r = client.post("/v1/tickets", json=[GOOD, {**GOOD, "external_id": "2", "subject": 5}])
    assert_rejected(r, 422, "validation_error", engine)
    assert any(d["field"] == "1.subject" for d in r.json()["details"])


@pytest.mark.parametrize(
    ("raw", "headers", "status", "code"),
    [
        (b'{"source": "zendesk", "external_id": "1", "body": "caf\xe9"}', {}, 400, "invalid_utf8"),
        (b'{"source": "zendesk", "external_id": "1", "body": ', {}, 400, "invalid_json"),
        (b"{'source': 'zendesk'}", {}, 400, "invalid_json"),
        (b'{"source": "zendesk", "external_id": "1", "body": NaN}', {}, 400, "invalid_json"),
        (b"", {}, 400, "empty_body"),
        (b"null", {}, 422, "validation_error"),
        (
            b"source=zendesk",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
    ],
)
def test_malformed_bodies(
    client: TestClient, engine: Engine, raw: bytes, headers: dict, status: int, code: str
) -> None:
    headers = {"content-type": "application/json", **headers}
    r = client.post("/v1/tickets", content=raw, headers=headers)
    assert_rejected(r, status, code, engine)


@pytest.fixture
def small_client(make_settings: Callable[..., Settings], analyzer: Analyzer) -> Any:
    settings = make_settings(
        max_request_bytes=2_000, max_body_chars=200, max_batch_items=3, max_metadata_bytes=100
    )
    with TestClient(create_app(settings, analyzer=analyzer), headers=AUTH) as c:
        yield c


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (
            [{**GOOD, "external_id": str(i), "body": "x" * 150} for i in range(12)],
            "payload_too_large",
        ),
        ({**GOOD, "body": "word " * 60}, "text_too_large"),
        ([{**GOOD, "external_id": str(i)} for i in range(4)], "batch_too_large"),
        ({**GOOD, "metadata": {"k": "v" * 200}}, "metadata_too_large"),
    ],
)
def test_size_limits_are_413(
    small_client: TestClient, engine: Engine, payload: Any, code: str
) -> None:
    r = small_client.post("/v1/tickets", json=payload)
    assert_rejected(r, 413, code, engine)


def test_subject_over_its_own_limit(client: TestClient, engine: Engine) -> None:
    r = client.post("/v1/tickets", json={**GOOD, "subject": "s" * 1001})
    assert_rejected(r, 413, "text_too_large", engine, "subject")


def test_declared_length_over_limit_is_refused_before_reading(
    small_client: TestClient, engine: Engine
) -> None:
    r = small_client.post(
        "/v1/tickets",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "999999"},
    )
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_unknown_route_and_method_are_json_errors(client: TestClient) -> None:
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = client.delete("/v1/tickets")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


def test_service_still_works_after_bad_input(client: TestClient, engine: Engine) -> None:
    client.post("/v1/tickets", content=b"\xff\xfe", headers={"content-type": "application/json"})
    r = client.post("/v1/tickets", json=GOOD)
    assert r.status_code == 202
    assert count_rows(engine, "ticket") == 1
