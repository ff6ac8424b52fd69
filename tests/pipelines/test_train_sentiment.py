"""python -m pipelines train-sentiment, end to end on the project's tiny fixture set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.nlp.analyzer import Analyzer
from app.nlp.embedder import TransformerEmbedder
from app.nlp.sentiment import BranchSentiment
from pipelines.__main__ import main
from pipelines.train_sentiment import HiddenCache, clean_tweet, read_split

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sentiment"


def test_clean_tweet() -> None:
    assert clean_tweet('"""QT @user nice one"""') == "QT @user nice one"
    assert clean_tweet('He said ""hi""') == 'He said "hi"'


def test_cached_hidden_states_equal_the_full_encoder_pass(
    torch_embedder: TransformerEmbedder,
) -> None:
    # Training caches PyTorch's states, so they must equal the PyTorch pass.
    texts, _ = read_split(FIXTURES / "val.csv")
    cache = HiddenCache(torch_embedder, texts[:5], layer=4, max_tokens=128, desc="t")
    encoding = torch_embedder.encode(texts[:5], tap_layer=4)
    for tap in encoding.taps:
        for row, unit in enumerate(tap.units):
            i = encoding.units[unit].text_index
            n = int(tap.mask[row].sum())
            ours = cache.data[cache.offsets[i] : cache.offsets[i + 1]].astype(np.float32)
            assert ours.shape[0] == n
            assert np.allclose(ours, tap.hidden[row, :n], atol=2e-2)


def test_train_sentiment_writes_a_servable_artifact(tmp_path: Path, analyzer: Analyzer) -> None:
    out = tmp_path / "sentiment" / "t1"
    code = main(
        [
            "train-sentiment",
            "--data",
            str(FIXTURES),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--tap-layer",
            "4",
            "--batch-size",
            "8",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "branch.safetensors",
        "config.json",
        "metrics.json",
        "README.md",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["tap_layer"] == 4 and config["labels"] == ["negative", "neutral", "positive"]
    assert config["dtype"] == "float16"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"] == 45 and metrics["data"]["val"] == 15
    assert 0.0 <= metrics["val_as_served"]["macro_recall"] <= 1.0
    assert metrics["selected"]["step"] >= 1 and metrics["history"]
    assert "macro-recall" in (out / "README.md").read_text()
    # 45 clear examples are enough for the branch to beat chance on the 15 held out.
    assert metrics["val_as_served"]["macro_recall"] > 0.5
    served = BranchSentiment(out, analyzer.embedder)
    enc = analyzer.embedder.encode(["I love it", "I hate it"], tap_layer=served.tap_layer)
    love, hate = served.score(["I love it", "I hate it"], enc)
    assert love.score > hate.score
