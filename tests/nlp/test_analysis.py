"""The analysis branch as the service runs it: one run of the branch feeds sentiment and UX/CX,
probabilities follow the documented rule, evidence points into the text, and broken artifacts
fail with a message that says what is wrong."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.config import DEFAULT_ANALYSIS_ARTIFACT, Settings
from app.main import create_app
from app.nlp.analysis import AnalysisBranch, read_artifact
from app.nlp.analyzer import Analyzer
from app.nlp.loader import load_analyzer
from app.nlp.sentiment import ArtifactError, BranchSentiment

TEXTS = [
    "The app crashes every time I open my playlists since the last update.",
    "Thanks so much for sorting it out, you are the best!",
    "I was charged twice for my order and nobody replies to my emails.",
    "ok",
]


def _branch(analyzer: Analyzer) -> AnalysisBranch:
    assert isinstance(analyzer.uxcx, AnalysisBranch)
    return analyzer.uxcx


def test_default_analysers_are_one_analysis_branch(analyzer: Analyzer) -> None:
    branch = _branch(analyzer)
    assert analyzer.sentiment is branch  # one branch, one run per batch
    assert analyzer.versions["sentiment"] == analyzer.versions["uxcx"] == "analysis:v1"
    assert analyzer.tap_layer == branch.tap_layer == 3
    assert branch.pool_layers == () and branch.needs_tokens is False


def test_branch_runs_once_beside_the_encoder(analyzer: Analyzer) -> None:
    branch = _branch(analyzer)
    calls = []
    real = branch.runtime.states

    def counting(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(hidden.shape[0])
        return real(hidden, mask)

    branch.runtime.states = counting  # type: ignore[method-assign]
    try:
        results = analyzer.analyze(TEXTS)
    finally:
        del branch.runtime.states
    assert sum(calls) == len(TEXTS)  # every text through the branch exactly once
    assert all(r.sentiment is not None and r.uxcx is not None for r in results)
    # Scoring an encoding without the states runs the branch afterwards: same answers.
    after = analyzer.embedder.encode(TEXTS, tap_layer=branch.tap_layer)
    assert all(not t.states for t in after.taps)
    assert branch.classify(TEXTS, after) == [r.uxcx for r in results]
    assert branch.score(TEXTS, after) == [r.sentiment for r in results]


def test_probabilities_follow_the_threshold_rule(analyzer: Analyzer) -> None:
    branch = _branch(analyzer)
    for result in analyzer.analyze(TEXTS):
        u = result.uxcx
        assert u is not None and u.problem_probability is not None
        p = u.probabilities
        assert abs(p["UX"] + p["CX"] + p["none"] - 1) < 2e-4
        assert abs(p["none"] - (1 - u.problem_probability)) < 2e-4
        if u.problem_probability >= branch.threshold:
            assert u.label == ("UX" if p["UX"] >= p["CX"] else "CX")
        else:
            assert u.label == "none"
        assert u.probability == p[u.label]


def test_evidence_spans_are_words_of_the_text(analyzer: Analyzer) -> None:
    text = "Since the update the app keeps crashing when I open the camera."
    u = analyzer.analyze([text])[0].uxcx
    assert u is not None and u.label == "UX" and u.evidence
    for e in u.evidence:
        assert text[e.start : e.end] == e.text and 0 < e.weight <= 1
    assert any("crash" in e.text for e in u.evidence)


def test_sentences_are_scored_from_the_same_states(analyzer: Analyzer) -> None:
    text = "Thank you for the quick reply yesterday. But the app still crashes when I log in."
    s = analyzer.analyze([text])[0].sentiment
    assert s is not None and s.most_negative is not None
    assert text[s.most_negative.start : s.most_negative.end].startswith("But the app")
    assert s.most_negative.label == "negative" and s.label == "negative"


def test_long_text_is_analysed_over_all_chunks(analyzer: Analyzer) -> None:
    filler = "I ordered a new phone case last month and it was fine. " * 40
    text = filler + "But now the app crashes every single time I open it."
    result = analyzer.analyze([text])[0]
    assert len(analyzer.embedder.split([text])) > 1
    assert result.uxcx is not None and result.sentiment is not None
    ends = [e.end for e in result.uxcx.evidence]
    assert all(end <= len(text) for end in ends)


def test_other_backends_still_combine(tmp_path: Path) -> None:
    # Sentiment from the v1 branch and UX/CX from the analysis branch: both branches run.
    analyzer = load_analyzer(
        Settings(_env_file=None, encoder_backend="torch", sentiment_backend="branch")
    )
    assert isinstance(analyzer.sentiment, BranchSentiment)
    assert isinstance(analyzer.uxcx, AnalysisBranch)
    result = analyzer.analyze(["the app crashes on start"])[0]
    assert result.sentiment is not None and result.sentiment.label == "negative"
    assert result.uxcx is not None and result.uxcx.label == "UX"
    v1 = load_analyzer(Settings(_env_file=None, encoder_backend="torch", uxcx_backend="linear"))
    assert v1.versions["uxcx"] == "linear:v1" and v1.versions["sentiment"] == "analysis:v1"
    u = v1.analyze(["the app crashes on start"])[0].uxcx
    assert u is not None and u.problem_probability is None


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "analysis"
    shutil.copytree(DEFAULT_ANALYSIS_ARTIFACT, folder)
    return folder


def _edit(folder: Path, change: Callable[[dict], None]) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda f: shutil.rmtree(f), "analysis artifact missing at .*train-analysis"),
    "unreadable config": (
        lambda f: (f / "config.json").write_text("{nope"),
        "is unreadable",
    ),
    "another kind": (
        lambda f: _edit(f, lambda c: c.update(kind="minilm-branch")),
        "kind 'minilm-branch' is not 'minilm-analysis-branch'",
    ),
    "other sub-categories": (
        lambda f: _edit(f, lambda c: c.update(classes=c["classes"][:-1])),
        "sub-categories .* are not this version's",
    ),
    "threshold out of range": (
        lambda f: _edit(f, lambda c: c["calibration"].update(problem_threshold=1.5)),
        r"problem threshold 1.5 not in \(0, 1\)",
    ),
    "temperature missing": (
        lambda f: _edit(f, lambda c: c["calibration"]["temperature"].pop("uxcx")),
        "temperatures .* must be positive, one per head",
    ),
    "other encoder": (
        lambda f: _edit(f, lambda c: c.update(encoder_sha256="0" * 64)),
        "trained on a different encoder",
    ),
    "garbage weights": (
        lambda f: (f / "branch.safetensors").write_bytes(b"\x00garbage" * 10),
        "is unreadable|does not fit",
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_broken_artifacts_fail_clearly(tmp_path: Path, analyzer: Analyzer, broken: str) -> None:
    folder = _copy(tmp_path)
    damage, message = BROKEN[broken]
    damage(folder)
    with pytest.raises(ArtifactError, match=message):
        AnalysisBranch(folder, analyzer.embedder)


def test_weights_of_another_shape_fail_clearly(tmp_path: Path, analyzer: Analyzer) -> None:
    from safetensors.numpy import load_file, save_file

    folder = _copy(tmp_path)
    state = load_file(str(folder / "branch.safetensors"))
    state["uxcx.weight"] = np.zeros((2, 384), dtype=np.float16)
    save_file(state, str(folder / "branch.safetensors"))
    with pytest.raises(ArtifactError, match="does not fit"):
        AnalysisBranch(folder, analyzer.embedder)


def test_broken_artifact_stops_start_up(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(analysis_artifact=tmp_path / "models" / "analysis" / "gone")
    with pytest.raises(ArtifactError, match="analysis artifact missing at .*gone"):
        with TestClient(create_app(settings)):
            pass


def test_committed_artifact_records_its_calibration() -> None:
    cfg = read_artifact(DEFAULT_ANALYSIS_ARTIFACT, _EmbedderStub())
    metrics = json.loads((DEFAULT_ANALYSIS_ARTIFACT / "metrics.json").read_text())
    assert cfg["calibration"]["problem_threshold"] == metrics["calibration"]["problem_threshold"]
    # Every number the model card states comes from the held-out splits of that run.
    assert metrics["headline"]["dev_n"] >= 800
    assert (DEFAULT_ANALYSIS_ARTIFACT / "README.md").read_text().count("| real-text dev |") == 1


class _EmbedderStub:
    """Just enough of an embedder for `read_artifact`'s encoder check."""

    def __init__(self) -> None:
        from app.nlp.embedder import packaged_encoder_path

        self.path = packaged_encoder_path()
