"""train-analysis: the real-text dev split never reaches training, labels files are checked,
the threshold and temperatures are fitted as documented, and a short run writes an artifact
the service loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.enrich.worker import Worker
from app.nlp.analysis import AnalysisBranch
from app.nlp.analyzer import Analyzer
from pipelines import analysis_data
from pipelines.__main__ import main as pipelines_main
from pipelines.train_analysis import (
    TrainConfig,
    best_threshold,
    build_data,
    calibrate,
    fit_temperature,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "uxcx"


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _brand(dev: bool) -> str:
    """A brand handle on the asked side of the split."""
    for n in range(1000):
        name = f"Brand{n}"
        if analysis_data._bucket(f"brand:{name}") == 0 and dev:
            return name
        if analysis_data._bucket(f"brand:{name}") != 0 and not dev:
            return name
    raise AssertionError("no brand found")


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    """A small stand-in for ../shared/datasets, written for the test."""
    root = tmp_path / "datasets"
    dev, train = _brand(True), _brand(False)
    tweets = [
        ["1", dev, "Tue Oct 31 22:11:45 +0000 2017", f"@{dev} the app crashes on start"],
        ["2", dev, "Tue Oct 31 22:12:45 +0000 2017", f"@{dev} thanks for the help"],
        ["3", train, "Tue Oct 31 22:13:45 +0000 2017", f"@{train} my parcel is two weeks late"],
        ["4", train, "Tue Oct 31 22:14:45 +0000 2017", f"@{train} I love you guys"],
        ["5", train, "Tue Oct 31 22:15:45 +0000 2017", f"@{train} nobody answers my emails"],
    ]
    _write(root / "support_tweets" / "inbound.csv", ["tweet_id", "company", "created_at", "text"],
           tweets)  # fmt: skip
    _write(
        root / "airline_tweets" / "train.csv",
        ["tweet_id", "airline", "sentiment", "negativereason", "text", "tweet_created"],
        [
            ["10", "Southwest", "negative", "Late Flight", "@SouthwestAir 3 hours late again", ""],
            ["11", "United", "negative", "Lost Luggage", "@united where is my bag", ""],
            ["12", "United", "positive", "", "@united great crew today", ""],
            ["13", "United", "neutral", "", "@united what time does boarding start", ""],
        ],
    )
    return root


def _labels(path: Path, rows: list[list[str]]) -> Path:
    _write(path, ["source", "id", "label", "subcategory", "clarity"], rows)
    return path


def test_dev_split_is_held_out_whole_and_needs_two_readings(datasets: Path, tmp_path: Path) -> None:
    first = _labels(tmp_path / "first.csv", [
        ["support_tweets", "1", "UX", "bug", "clear"],
        ["support_tweets", "2", "none", "thanks", "clear"],
        ["support_tweets", "3", "CX", "delivery", "clear"],
        ["support_tweets", "4", "skip", "", "clear"],
        ["support_tweets", "5", "CX", "support_responsiveness", "hard"],
        ["airline_tweets", "10", "CX", "travel_disruption", "clear"],
        ["support_tweets", "999", "UX", "bug", "clear"],
    ])  # fmt: skip
    second = _labels(tmp_path / "second.csv", [
        ["support_tweets", "1", "UX", "bug", "clear"],
        ["support_tweets", "2", "CX", "support_quality", "hard"],  # disagrees: left out
        ["airline_tweets", "10", "CX", "travel_disruption", "clear"],
    ])  # fmt: skip
    examples, notes = build_data(
        datasets=datasets, fixtures=FIXTURES, real_labels=first, v1_labels=None,
        second_reading=second, overrides=[], config=TrainConfig(),
    )  # fmt: skip
    by_key: dict[str, list[str]] = {}
    for e in examples:
        by_key.setdefault(e.key, []).append(e.split)
    # The dev brand's tweets and the held-out airline: dev only, and only where both agree.
    assert by_key["support_tweets:1"] == ["dev"]
    assert "support_tweets:2" not in by_key
    assert sorted(by_key["airline_tweets:10"]) == ["airline_dev", "dev"]
    # The train brand's labelled tweets train or select; skipped ones teach nothing.
    assert by_key["support_tweets:3"][0] in ("train", "select")
    assert "support_tweets:4" not in by_key
    assert notes["counts"]["label_without_message"] == 1
    assert notes["counts"]["dev_disagreed_or_single"] == 1
    # Airline tweets nobody read: the crowd's sentiment and the reason as a weak label.
    lost = next(e for e in examples if e.key == "airline_tweets:11")
    assert (lost.weak, lost.problem, lost.ux, lost.sentiment) == (True, 1, 0, 0)
    neutral = next(e for e in examples if e.key == "airline_tweets:13")
    assert (neutral.problem, neutral.sentiment) == (-1, 1)
    # Nothing from a dev group is ever in train or select.
    for e in examples:
        if e.split in ("train", "select") and e.key in analysis_data.read_real_messages(datasets):
            assert not analysis_data.is_dev(analysis_data.read_real_messages(datasets)[e.key])


def test_label_files_are_checked(tmp_path: Path) -> None:
    bad = _labels(tmp_path / "bad.csv", [["support_tweets", "1", "UX", "delivery", "clear"]])
    with pytest.raises(ValueError, match=r"bad.csv:2: sub-category 'delivery' is not one of UX"):
        analysis_data.read_real_labels(bad)
    bad = _labels(tmp_path / "bad2.csv", [["reddit", "1", "UX", "bug", "clear"]])
    with pytest.raises(ValueError, match="source 'reddit'"):
        analysis_data.read_real_labels(bad)
    twice = _labels(tmp_path / "twice.csv", [["support_tweets", "1", "UX", "bug", "clear"]] * 2)
    with pytest.raises(ValueError, match="labelled twice"):
        analysis_data.read_real_labels(twice)


def test_committed_labels_are_valid_and_hold_no_text() -> None:
    labels = analysis_data.read_real_labels(FIXTURES / "real_labels.csv")
    second = analysis_data.read_real_labels(FIXTURES / "real_agreement.csv")
    assert len(labels) >= 3000 and len(second) >= 800
    assert set(second) <= set(labels)
    header = (FIXTURES / "real_labels.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "source,id,label,subcategory,clarity"


def test_threshold_maximises_problem_macro_f1() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 2000)
    # Problems score around 0.6, the rest around 0.3: the best cut lies between them.
    p = np.clip(np.where(truth == 1, 0.6, 0.3) + rng.normal(0, 0.08, 2000), 0, 1)
    t = best_threshold(p, truth)
    assert 0.38 <= t <= 0.52
    assert best_threshold(np.array([0.2, 0.8]), np.array([0, 1])) == 0.5  # ties: nearest 0.5


def test_temperature_recovers_the_scale_of_the_logits() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, 5000)
    truth = (rng.random(5000) < 1 / (1 + np.exp(-logits))).astype(int)
    # Logits made twice as confident as the data: the fitted temperature undoes it.
    assert 1.7 <= fit_temperature(2 * logits, truth, True) <= 2.3
    assert 0.85 <= fit_temperature(logits, truth, True) <= 1.15


def test_calibration_uses_only_strong_labels_of_the_select_split() -> None:
    from pipelines.train_analysis import Example

    examples = [
        Example(key=f"k{i}", text="t", origin="real", split="select", problem=i % 2,
                ux=i % 2 if i % 2 else -1, subcategory=0 if i % 2 else 14, sentiment=i % 3)
        for i in range(40)
    ]  # fmt: skip
    examples.append(
        Example(key="weak", text="t", origin="airline", split="select", problem=1, weak=True)
    )
    logits = {
        "problem": np.array([4.0 if e.problem == 1 else -4.0 for e in examples]),
        "uxcx": np.zeros(len(examples)),
        "subcategory": np.zeros((len(examples), 18)),
        "sentiment": np.zeros((len(examples), 3)),
    }
    result = calibrate(examples, np.arange(len(examples)), logits)
    assert result["fitted_on"]["problem"] == 40  # the weak label is not used
    assert 0.05 <= result["problem_threshold"] <= 0.95
    assert set(result["temperature"]) == {"problem", "uxcx", "subcategory", "sentiment"}


def test_corrections_in_the_database_train_the_branch(
    tmp_path: Path, client: TestClient, worker: Worker, db_url: str
) -> None:
    tid = client.post(
        "/v1/tickets",
        json={"source": "api", "external_id": "C-1", "body": "The checkout charged me twice."},
    ).json()["data"][0]["id"]
    worker.drain()
    client.put(
        f"/v1/tickets/{tid}/label",
        json={"label": "UX", "subcategory": "bug", "author": "pm@example.com"},
    )
    out = tmp_path / "analysis" / "c1"
    code = pipelines_main([
        "train-analysis", "--datasets", str(tmp_path / "none"), "--out", str(out),
        "--epochs", "1", "--max-examples", "60", "--database-url", db_url,
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["notes"]["overrides"] == 1
    assert metrics["data"]["splits"]["train/override"] == 1


def test_short_run_writes_an_artifact_the_service_loads(tmp_path: Path, analyzer: Analyzer) -> None:
    out = tmp_path / "analysis" / "v9"
    code = pipelines_main([
        "train-analysis", "--datasets", str(tmp_path / "none"), "--out", str(out),
        "--epochs", "1", "--max-examples", "120", "--no-overrides",
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["notes"]["datasets"].startswith("not found")
    config = json.loads((out / "config.json").read_text())
    assert 0 < config["calibration"]["problem_threshold"] < 1
    branch = AnalysisBranch(out, analyzer.embedder)
    assert branch.name == "analysis:v9"
    texts = ["the app crashes", "thanks a lot"]
    encoding = analyzer.embedder.encode(texts, tap_layer=branch.tap_layer)
    labels = branch.classify(texts, encoding)
    assert [round(sum(u.probabilities.values()), 3) for u in labels] == [1.0, 1.0]
    assert len(branch.score(texts, encoding)) == 2
