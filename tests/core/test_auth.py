"""API keys: every /v1 endpoint but the webhooks refuses a request without a valid key."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine

from app.core.config import Settings
from app.main import create_app
from app.nlp.analyzer import Analyzer
from tests.helpers import API_KEY, count_rows


def _example_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_v1_endpoint_but_webhooks_needs_a_key(
    make_settings: Callable[..., Settings], analyzer: Analyzer, engine: Engine
) -> None:
    app = create_app(make_settings(), analyzer=analyzer)
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
