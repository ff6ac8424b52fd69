"""python -m pipelines train-uxcx on a small slice of the fixtures, with a human correction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.enrich.worker import Worker
from app.nlp.analyzer import Analyzer
from app.nlp.base import SUBCATEGORIES
from app.nlp.uxcx import LinearUxCx
from pipelines.__main__ import main
from pipelines.requeue import requeue
from pipelines.train_uxcx import load_fixtures

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "uxcx"


def _slice(tmp_path: Path, per_class: int) -> Path:
    """The first `per_class` fixtures of every sub-category, as a fixtures folder."""
    folder = tmp_path / "fixtures"
    folder.mkdir()
    taken: dict[str, int] = {}
    lines = []
    for path in sorted(FIXTURES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            key = f"{row['label']}/{row['subcategory']}"
            if taken.get(key, 0) < per_class:
                taken[key] = taken.get(key, 0) + 1
                lines.append(line)
    (folder / "slice.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_fixtures_are_valid_and_cover_every_subcategory() -> None:
    examples = load_fixtures(FIXTURES)
    assert len(examples) >= 1500
    assert len({e.industry for e in examples}) >= 8
    # Every sub-category the labeller knows (UX, CX and none) has examples.
    assert {(e.label, e.subcategory) for e in examples} == {
        (label, sub) for label, subs in SUBCATEGORIES.items() for sub in subs
    }
    assert len(SUBCATEGORIES["UX"]) == len(SUBCATEGORIES["CX"]) == 7
    assert sum(e.hard for e in examples) >= 200
    assert {e.channel for e in examples} == {"ticket", "tweet", "review", "forum", "chat"}


def test_bad_fixture_lines_name_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    good = FIXTURES.joinpath("saas.jsonl").read_text(encoding="utf-8").splitlines()[0]
    row = json.loads(good)
    (folder / "a.jsonl").write_text(
        good + "\n" + json.dumps({**row, "id": "x", "subcategory": "refund"})
    )
    with pytest.raises(ValueError, match=r"a.jsonl:2: sub-category 'refund'"):
        load_fixtures(folder)


def test_retraining_keeps_corrections_and_learns_from_them(
    tmp_path: Path,
    client: TestClient,
    worker: Worker,
    engine: Engine,
    analyzer: Analyzer,
    db_url: str,
) -> None:
    tid = client.post(
        "/v1/tickets",
        json={"source": "api", "external_id": "R-1", "body": "The checkout charged me twice."},
    ).json()["data"][0]["id"]
    worker.drain()
    client.put(
        f"/v1/tickets/{tid}/label",
        json={"label": "UX", "subcategory": "bug", "author": "pm@example.com"},
    )
    out = tmp_path / "uxcx" / "t1"
    code = main(
        [
            "train-uxcx",
            "--fixtures", str(_slice(tmp_path, 6)),
            "--tweet-labels", str(tmp_path / "none.csv"),
            "--out", str(out),
            "--database-url", db_url,
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["overrides"] == 1
    assert metrics["data"]["train_by_origin"]["override"] == 1
    test = metrics["test_fixtures"]
    assert test["n"] + metrics["data"]["train_by_origin"]["fixture"] == 6 * 18
    assert len(test["label"]["confusion"]["matrix"]) == 3
    assert sum(map(sum, test["label"]["confusion"]["matrix"])) == test["n"]
    assert (out / "README.md").read_text().startswith("# UX/CX labeller t1")

    # Serve the retrained model: the correction still wins after re-analysis.
    retrained = Analyzer(
        embedder=analyzer.embedder,
        sentiment=analyzer.sentiment,
        uxcx=LinearUxCx(out),
        language=analyzer.language,
    )
    second = Worker(
        engine=engine,
        analyzer=retrained,
        routing=worker.routing,
        batch_size=8,
        max_attempts=3,
    )
    assert requeue(engine, statuses=["done"]) == 1
    second.drain()
    t = client.get(f"/v1/tickets/{tid}").json()
    assert t["analysis"]["analysers"]["uxcx"] == "linear:t1"
    assert t["label"]["label"] == "UX" and t["label"]["source"] == "override"
    assert t["label"]["team"] == "product-engineering"
