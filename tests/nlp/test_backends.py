"""Encoder backends: each stays within tolerance of PyTorch fp32, and a missing or corrupt ONNX
artifact falls back to PyTorch (default setting) or fails start-up (named explicitly)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.config import DEFAULT_ANALYSIS_ARTIFACT, DEFAULT_ONNX_ARTIFACT, Settings
from app.main import create_app
from app.nlp.analysis import AnalysisBranch
from app.nlp.analysis import weights_sha256 as analysis_weights_sha256
from app.nlp.analyzer import Analyzer
from app.nlp.embedder import TransformerEmbedder
from app.nlp.loader import load_analyzer
from app.nlp.runtime import BatchPlan, RuntimeArtifactError
from app.nlp.sentiment import BranchSentiment
from pipelines.__main__ import main as pipelines_main
from tests.helpers import AUTH

TEXTS = [
    "The app crashes every time I open the settings page",
    "my parcel never arrived and nobody answers my emails",
    "ok",
    "Thanks so much, the new update is lovely!",
    "I was charged twice for my subscription this month and support keeps ignoring me. "
    "The checkout page also shows an error when I try to update my card. " * 5,
    "Login fails with 'invalid token' since this morning 🙁 @support",
]


@pytest.fixture(scope="session")
def fp32_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fp32 ONNX graphs, exported by the real pipeline into a temporary folder."""
    out = tmp_path_factory.mktemp("onnx") / "v1"
    assert pipelines_main(["export-onnx", "--out", str(out), "--precision", "fp32"]) == 0
    return out


@pytest.fixture(scope="session")
def analyzers(fp32_artifact: Path, analyzer: Analyzer) -> dict[str, Analyzer]:
    """One analyser per backend (onnx-int8 is the default, so the shared one)."""
    return {
        "torch": load_analyzer(Settings(_env_file=None, encoder_backend="torch")),
        "onnx": load_analyzer(
            Settings(_env_file=None, encoder_backend="onnx", onnx_artifact=fp32_artifact)
        ),
        "onnx-int8": analyzer,
    }


# (mean, worst) cosine to the PyTorch embeddings each backend must keep on TEXTS.
TOLERANCE = {"onnx": (0.99999, 0.9999), "onnx-int8": (0.99, 0.97)}


@pytest.mark.parametrize("encoder", ["onnx", "onnx-int8"])
def test_backend_embeddings_within_tolerance_of_torch(
    analyzers: dict[str, Analyzer], encoder: str
) -> None:
    backend = encoder
    expected = analyzers["torch"].embedder.encode(TEXTS, pool_layers=(3, 4))
    got = analyzers[backend].embedder.encode(TEXTS, pool_layers=(3, 4))
    assert analyzers[backend].embedder.backend.startswith(backend + ":")
    mean, worst = TOLERANCE[backend]
    for layer in (6, 4, 3):
        cos = (expected.pooled[layer] * got.pooled[layer]).sum(1)
        assert cos.mean() >= mean and cos.min() >= worst, (layer, cos)
    assert np.allclose(np.linalg.norm(got.embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("encoder", ["onnx", "onnx-int8"])
def test_backend_answers_match_torch(analyzers: dict[str, Analyzer], encoder: str) -> None:
    backend = encoder
    want = analyzers["torch"].analyze(TEXTS)
    have = analyzers[backend].analyze(TEXTS)
    limit = 1e-3 if backend == "onnx" else 0.25
    for a, b in zip(want, have, strict=True):
        assert a.sentiment is not None and b.sentiment is not None
        assert a.uxcx is not None and b.uxcx is not None
        assert (a.sentiment.label, a.uxcx.label) == (b.sentiment.label, b.uxcx.label)
        assert abs(a.sentiment.score - b.sentiment.score) <= limit
        assert a.uxcx.subcategory == b.uxcx.subcategory


def test_int8_answer_does_not_depend_on_the_batch(analyzer: Analyzer) -> None:
    # Activations are quantised per token: a text gets the same answer whoever shares its call.
    lengths = sorted(len(analyzer.embedder.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert len(analyzer.embedder.runtime.plan.split(lengths)) < len(TEXTS)  # calls are shared
    together = analyzer.analyze(TEXTS)
    for text, joint in zip(TEXTS, together, strict=True):
        alone = analyzer.analyze([text])[0]
        assert np.allclose(alone.embedding, joint.embedding, atol=1e-6)
        assert alone.sentiment == joint.sentiment
        assert alone.uxcx == joint.uxcx


def test_default_is_int8_and_records_its_check() -> None:
    settings = Settings(_env_file=None)
    assert settings.encoder_backend == "onnx-int8" and not settings.encoder_backend_explicit
    assert Settings(_env_file=None, encoder_backend="onnx-int8").encoder_backend_explicit
    config = json.loads((DEFAULT_ONNX_ARTIFACT / "config.json").read_text())
    check = config["check"]["onnx-int8"]
    assert check["passed"] and check["cosine_mean"] >= 0.99 and check["cosine_worst"] >= 0.97
    # The analysis branch's int8 graph, checked against its fp32 self at export: the same
    # labels on the held-out fixtures, and made from the committed artifact.
    assert check["analysis_uxcx_label_agreement"] >= 0.99
    assert check["analysis_sentiment_label_agreement"] >= 0.99
    assert check["analysis_problem_probability_max_diff"] <= 0.05
    assert config["analysis"]["branch_sha256"] == analysis_weights_sha256(DEFAULT_ANALYSIS_ARTIFACT)


def test_env_var_counts_as_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_BACKEND", "onnx")
    monkeypatch.setenv("TORCH_THREADS", "1")
    settings = Settings(_env_file=None)
    assert settings.encoder_backend == "onnx" and settings.encoder_backend_explicit
    assert settings.encoder_threads == 1


def test_batch_plan() -> None:
    assert BatchPlan(max_texts=1, max_tokens=0).split([3, 4, 5]) == [[0], [1], [2]]
    assert BatchPlan(max_texts=2, max_tokens=0).split([3, 4, 5]) == [[0, 1], [2]]
    # Rows x longest row within 10: 2 x 3 fits, 3 x 4 would not; a long row goes alone.
    assert BatchPlan(max_texts=8, max_tokens=10).split([2, 3, 4, 4, 12]) == [
        [0, 1],
        [2, 3],
        [4],
    ]


def _copy_artifact(tmp_path: Path) -> Path:
    folder = tmp_path / "onnx" / "v1"
    shutil.copytree(DEFAULT_ONNX_ARTIFACT, folder, ignore=shutil.ignore_patterns("*.fp32.onnx"))
    return folder


def _corrupt(folder: Path) -> None:
    path = folder / "encoder.int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))


def _truncate(folder: Path) -> None:
    path = folder / "analysis-branch.int8.onnx"
    path.write_bytes(path.read_bytes()[:1000])


def _unreadable_config(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def _missing(folder: Path) -> None:
    shutil.rmtree(folder)


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (_missing, "no ONNX artifact at .*config.json missing"),
    "corrupt": (_corrupt, "encoder.int8.onnx is corrupt"),
    "truncated": (_truncate, "analysis-branch.int8.onnx is corrupt"),
    "unreadable": (_unreadable_config, "config.json is unreadable"),
}


@pytest.mark.parametrize("broken", sorted(BREAKS))
def test_broken_artifact_falls_back_to_torch_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    folder = _copy_artifact(tmp_path)
    damage, reason = BREAKS[broken]
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="app.nlp"):
        analyzer = load_analyzer(Settings(_env_file=None, onnx_artifact=folder))
    assert analyzer.embedder.backend == "torch"
    assert analyzer.versions["embedder"] == "all-MiniLM-L6-v2:torch"
    lines = [r.getMessage() for r in caplog.records if "falling back to torch" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("encoder backend onnx-int8 unavailable, falling back to torch: ")
    assert re.search(reason, lines[0]), lines[0]
    # It still analyses, on PyTorch.
    result = analyzer.analyze(["the app keeps crashing"])[0]
    assert result.uxcx is not None and result.uxcx.label == "UX"


@pytest.mark.parametrize("broken", sorted(BREAKS))
def test_broken_artifact_named_explicitly_fails_start_up(
    make_settings: Callable[..., Settings], tmp_path: Path, broken: str
) -> None:
    folder = _copy_artifact(tmp_path)
    damage, reason = BREAKS[broken]
    damage(folder)
    settings = make_settings(encoder_backend="onnx-int8", onnx_artifact=folder)
    with pytest.raises(RuntimeArtifactError, match="ENCODER_BACKEND=onnx-int8 cannot start: "):
        with TestClient(create_app(settings)):
            pass
    with pytest.raises(RuntimeArtifactError, match=reason):
        load_analyzer(settings)


def test_fp32_backend_without_its_graphs_fails_clearly(tmp_path: Path) -> None:
    folder = _copy_artifact(tmp_path)  # the committed folder holds no fp32 graphs
    with pytest.raises(RuntimeArtifactError, match="encoder.fp32.onnx missing.*--precision fp32"):
        load_analyzer(Settings(_env_file=None, encoder_backend="onnx", onnx_artifact=folder))


@pytest.mark.parametrize(
    ("role", "sentiment_backend"), [("sentiment", "branch"), ("analysis", "analysis")]
)
def test_artifact_of_another_branch_is_refused(
    tmp_path: Path, role: str, sentiment_backend: str
) -> None:
    folder = _copy_artifact(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[role]["branch_sha256"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(config))
    settings = Settings(
        _env_file=None, encoder_backend="onnx-int8", onnx_artifact=folder,
        sentiment_backend=sentiment_backend,
    )  # fmt: skip
    with pytest.raises(RuntimeArtifactError, match=f"another {role} artifact"):
        load_analyzer(settings)


def test_artifact_without_the_analysis_branch_is_refused(tmp_path: Path) -> None:
    folder = _copy_artifact(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["files"]["analysis-branch.int8.onnx"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "analysis-branch.int8.onnx").unlink()
    with pytest.raises(RuntimeArtifactError, match="has no analysis branch for onnx-int8"):
        load_analyzer(Settings(_env_file=None, encoder_backend="onnx-int8", onnx_artifact=folder))


def test_unchecked_artifact_is_not_used(tmp_path: Path) -> None:
    folder = _copy_artifact(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["check"]["onnx-int8"]["passed"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeArtifactError, match="has not passed its quality check"):
        load_analyzer(Settings(_env_file=None, encoder_backend="onnx-int8", onnx_artifact=folder))


def test_triage_on_each_backend(
    make_settings: Callable[..., Settings], fp32_artifact: Path, analyzers: dict[str, Analyzer]
) -> None:
    for backend, analyzer in analyzers.items():
        app = create_app(make_settings(), analyzer=analyzer)
        with TestClient(app, headers=AUTH) as client:
            r = client.post("/v1/triage", json={"text": "The app crashes when I log in"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["analysers"]["embedder"].startswith(f"all-MiniLM-L6-v2:{backend}")
        assert body["uxcx"]["label"] == "UX"
        assert body["sentiment"]["label"] == "negative"


def test_torch_embedder_is_the_reference(torch_embedder: TransformerEmbedder) -> None:
    assert torch_embedder.backend == "torch"
    assert torch_embedder.embed(TEXTS[:2]).shape == (2, 384)


@pytest.mark.parametrize("role", ["analysis", "sentiment"])
def test_branch_run_beside_the_encoder_equals_a_separate_pass(
    analyzer: Analyzer, role: str
) -> None:
    # The analyzer runs each trained branch on the encoder's thread (`tap_states`); scoring
    # an encoding without those states runs the branch afterwards: same answers. Both the
    # analysis branch and the v1 sentiment branch run on the int8 graphs of one artifact.
    if role == "analysis":
        scorer = analyzer.sentiment
        assert isinstance(scorer, AnalysisBranch)
    else:
        v1 = load_analyzer(Settings(_env_file=None, sentiment_backend="branch"))
        assert v1.embedder.backend.startswith("onnx-int8:")
        scorer = v1.sentiment
        assert isinstance(scorer, BranchSentiment)
    tap = scorer.tap_layer
    fns = {scorer.state_key: scorer.tap_states}
    beside = analyzer.embedder.encode(TEXTS, tap_layer=tap, tap_states=fns)
    after = analyzer.embedder.encode(TEXTS, tap_layer=tap)
    assert all(scorer.state_key in t.states for t in beside.taps)
    assert all(not t.states for t in after.taps)
    assert scorer.score(TEXTS, beside) == scorer.score(TEXTS, after)
