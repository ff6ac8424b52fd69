"""Start-up with a missing or corrupt v1 sentiment artifact (SENTIMENT_BACKEND=branch) fails
with a clear error; the hf: backend serves a local classifier through the API. The analysis
branch's artifacts: tests/nlp/test_analysis.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.nlp.sentiment import ArtifactError
from tests.helpers import AUTH
from tests.nlp.test_sentiment import _tiny_classifier


def test_missing_artifact_fails_start_up(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        sentiment_backend="branch", sentiment_artifact=tmp_path / "models" / "sentiment" / "nope"
    )
    with pytest.raises(ArtifactError, match="sentiment artifact missing at .*nope"):
        with TestClient(create_app(settings)):
            pass


def test_corrupt_artifact_fails_start_up(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "branch.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match="unreadable"):
        with TestClient(
            create_app(make_settings(sentiment_backend="branch", sentiment_artifact=bad))
        ):
            pass


def test_hf_backend_through_triage(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    path = _tiny_classifier(
        tmp_path / "tiny-sentiment", {0: "negative", 1: "neutral", 2: "positive"}
    )
    settings = make_settings(sentiment_backend=f"hf:{path}")
    # Loaded from the setting at start-up, as a deployment would.
    with TestClient(create_app(settings), headers=AUTH) as c:
        body = c.post("/v1/triage", json={"text": "The parcel is late. Thanks anyway."}).json()
    assert body["analysers"]["sentiment"] == "hf:tiny-sentiment"
    s = body["sentiment"]
    assert abs(sum(s["probabilities"].values()) - 1) < 1e-3
    assert s["most_negative_sentence"]["text"] in ("The parcel is late.", "Thanks anyway.")
