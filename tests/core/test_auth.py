"""API keys: every /v1 endpoint but the webhooks refuses a request without a valid key, and a
client that keeps sending wrong keys is refused (429) for a while without its key being checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine

from app.core.config import Settings
from app.core.guard import MAX_CLIENTS, FailureLimiter, TooManyFailures
from app.main import create_app
from app.nlp.analyzer import Analyzer
from tests.helpers import API_KEY, AUTH, count_rows

BAD = {"Authorization": "Bearer not-the-key"}


def _example_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_v1_endpoint_but_webhooks_needs_a_key(
    make_settings: Callable[..., Settings], analyzer: Analyzer, engine: Engine
) -> None:
    # Every endpoint is tried with a wrong key: far more than the failure limit allows.
    app = create_app(make_settings(api_key_failure_limit=1000), analyzer=analyzer)
    with TestClient(app) as c:
        schema = c.get("/openapi.json").json()
        checked = 0
        for path, ops in schema["paths"].items():
            if not path.startswith("/v1/"):
                continue
            for method in ops:
                if path.startswith("/v1/webhooks/"):
                    assert "401" in ops[method]["responses"]
                    continue
                url = _example_path(path)
                for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": API_KEY}):
                    r = c.request(method.upper(), url, headers=headers, json={})
                    assert r.status_code == 401, (method, path, headers, r.text)
                    assert r.headers["www-authenticate"] == "Bearer"
                    assert r.json()["code"] in ("missing_api_key", "invalid_api_key")
                assert ops[method]["security"] == [{"HTTPBearer": []}]
                checked += 1
        assert checked >= 15
        # Nothing was stored by the refused writes.
        assert count_rows(engine, "ticket") == 0
        ok = c.get("/v1/tickets", headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200 and ok.json()["count"] == 0
        # Health checks stay open for load balancers.
        assert c.get("/healthz").status_code == 200


def test_several_keys_each_work(make_settings: Callable[..., Settings], analyzer: Analyzer) -> None:
    app = create_app(make_settings(api_keys=" key-one , key-two "), analyzer=analyzer)
    with TestClient(app) as c:
        for key in ("key-one", "key-two"):
            r = c.post(
                "/v1/triage",
                json={"text": "The app crashes"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 200 and r.json()["uxcx"]["label"] == "UX"
        r = c.post(
            "/v1/triage", json={"text": "x"}, headers={"Authorization": "Bearer key-one,key-two"}
        )
        assert r.status_code == 401


def test_development_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "var")  # type: ignore[call-arg]
    (key,) = settings.resolved_api_keys()
    assert key.startswith("il_dev_") and len(key) > 30
    stored = tmp_path / "var" / "api_key"
    assert stored.read_text() == key and oct(stored.stat().st_mode & 0o777) == "0o600"
    again = Settings(_env_file=None, data_dir=tmp_path / "var")  # type: ignore[call-arg]
    assert again.resolved_api_keys() == (key,)
    explicit = Settings(_env_file=None, data_dir=tmp_path / "var", api_keys="a,b")  # type: ignore[call-arg]
    assert explicit.resolved_api_keys() == ("a", "b")


def test_production_needs_api_keys() -> None:
    with pytest.raises(ValidationError, match="API_KEYS must be set"):
        Settings(_env_file=None, env="production", author_hash_salt="s")  # type: ignore[call-arg]


def test_make_run_prints_the_development_key(tmp_path: Path) -> None:
    code = "import uvicorn, app.__main__ as m; m.serve = lambda *a, **k: None; m.main([])"
    env = {"DATA_DIR": str(tmp_path / "var"), "API_KEYS": "", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    key = (tmp_path / "var" / "api_key").read_text()
    assert f"Development API key (kept in {tmp_path / 'var' / 'api_key'}): {key}" in out.stdout


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_keys_block_the_client_then_the_block_ends() -> None:
    clock = FakeClock()
    guard = FailureLimiter(limit=3, window_s=60, clock=clock)
    for _ in range(2):
        guard.record_failure("10.0.0.1")
        clock.now += 10
    assert guard.blocked_for("10.0.0.1") == 0.0
    guard.record_failure("10.0.0.1")  # the third within 60 s: blocked for 60 s from now
    assert guard.blocked_for("10.0.0.1") == 60.0
    assert guard.blocked_for("10.0.0.2") == 0.0  # other clients are not affected
    clock.now += 59.5
    with pytest.raises(TooManyFailures) as refused:
        guard.check("10.0.0.1")
    assert refused.value.status_code == 429 and refused.value.headers == {"Retry-After": "1"}
    assert "Try again in 1 seconds" in refused.value.message
    clock.now += 0.5
    guard.check("10.0.0.1")  # the block is over and the entry is forgotten
    assert guard.blocked_for("10.0.0.1") == 0.0 and len(guard) == 0
    # Failures further apart than the window never add up to a block.
    for _ in range(10):
        guard.record_failure("10.0.0.3")
        clock.now += 31
    assert guard.blocked_for("10.0.0.3") == 0.0


def test_the_failure_table_stays_capped() -> None:
    guard = FailureLimiter(limit=2, window_s=300, max_clients=100)
    guard.record_failure("first")
    guard.record_failure("first")
    assert guard.blocked_for("first") > 0
    for i in range(5_000):
        guard.record_failure(f"10.1.{i // 256}.{i % 256}")
        assert len(guard) <= 100
    assert len(guard) == 100
    # The least recently seen went first; the newest are all still counted.
    assert guard.blocked_for("first") == 0.0
    guard.record_failure("10.1.19.135")  # i = 4999, its second failure
    assert guard.blocked_for("10.1.19.135") > 0
    assert MAX_CLIENTS == 10_000


def test_the_failure_table_counts_every_failure_from_many_threads() -> None:
    guard = FailureLimiter(limit=8_000, window_s=300)

    def fail() -> None:
        for _ in range(1_000):
            guard.record_failure("10.0.0.9")

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Exactly 8,000 failures reach the limit of 8,000: none was lost to a race.
    assert guard.blocked_for("10.0.0.9") > 299


def test_eleventh_wrong_key_gets_429_and_other_clients_still_work(
    make_settings: Callable[..., Settings], analyzer: Analyzer
) -> None:
    app = create_app(make_settings(), analyzer=analyzer)  # defaults: 10 within 300 s
    with TestClient(app) as c:
        # A second address on the same running app (its lifespan is the first client's).
        other = TestClient(app, client=("198.51.100.7", 4000))
        # A missing key is no guess: not counted.
        for _ in range(12):
            assert c.get("/v1/tickets").json()["code"] == "missing_api_key"
        for i in range(10):
            r = c.get("/v1/tickets", headers=BAD)
            assert r.status_code == 401 and r.json()["code"] == "invalid_api_key", i
        eleventh = c.get("/v1/tickets", headers=BAD)
        assert eleventh.status_code == 429
        assert eleventh.json()["code"] == "too_many_failed_keys"
        wait = int(eleventh.headers["retry-after"])
        assert 290 <= wait <= 300
        assert f"Try again in {wait} seconds" in eleventh.json()["message"]
        # During the block even the right key is refused: it is not looked at.
        good = c.get("/v1/tickets", headers=AUTH)
        assert good.status_code == 429 and good.headers["retry-after"]
        assert c.get("/v1/tickets").status_code == 429
        # Another address is unaffected, and the open endpoints stay open.
        assert other.get("/v1/tickets", headers=AUTH).status_code == 200
        assert other.get("/v1/tickets", headers=BAD).status_code == 401
        assert c.get("/healthz").status_code == 200
    # Each app has its own table: a new app starts clean.
    with TestClient(create_app(make_settings(), analyzer=analyzer)) as fresh:
        assert fresh.get("/v1/tickets", headers=AUTH).status_code == 200


def test_bad_webhook_signatures_are_not_counted(
    make_settings: Callable[..., Settings], analyzer: Analyzer, engine: Engine
) -> None:
    app = create_app(
        make_settings(api_key_failure_limit=3, generic_webhook_secret="s3cret"),
        analyzer=analyzer,
    )
    with TestClient(app) as c:
        for _ in range(10):
            r = c.post(
                "/v1/webhooks/generic",
                content=b'{"external_id": "1", "body": "x"}',
                headers={"content-type": "application/json", "X-Signature": "0" * 64},
            )
            assert r.status_code == 401 and r.json()["code"] == "invalid_signature"
        assert c.get("/v1/tickets", headers=AUTH).status_code == 200
    assert count_rows(engine, "ticket") == 0


def test_failure_settings_are_checked() -> None:
    for name, value in (
        ("api_key_failure_limit", 0),
        ("api_key_failure_window_s", 0),
        ("web_session_ttl_s", 10),
    ):
        with pytest.raises(ValidationError, match=name):
            Settings(_env_file=None, **{name: value})  # type: ignore[call-arg]
