"""The sentiment backends: the analysis branch (default), the v1 branch, hf:/path, VADER;
artifacts and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.core.config import DEFAULT_ANALYSIS_ARTIFACT, DEFAULT_SENTIMENT_ARTIFACT
from app.nlp.analysis import AnalysisBranch
from app.nlp.analyzer import Analyzer
from app.nlp.embedder import TransformerEmbedder
from app.nlp.sentiment import (
    ArtifactError,
    BranchSentiment,
    HFSentiment,
    VaderScorer,
    load_sentiment_scorer,
)

FILLER = (
    "I am writing about my account and the order I placed on the fourth of the month. "
    "The order number is in the confirmation email and the delivery address is my office. "
)


def score(analyzer: Analyzer, texts: list[str]) -> list:
    return [a.sentiment for a in analyzer.analyze(texts)]


def test_default_backend_is_the_analysis_branch(analyzer: Analyzer) -> None:
    assert isinstance(analyzer.sentiment, AnalysisBranch)
    assert analyzer.sentiment.tap_layer is not None
    assert analyzer.versions["sentiment"].startswith("analysis:")
    metrics = json.loads((DEFAULT_ANALYSIS_ARTIFACT / "metrics.json").read_text())
    tweeteval = metrics["evaluation"]["sentiment_tweeteval_val"]["service"]["macro_recall"]
    assert tweeteval >= 0.70
    # The v1 branch stays available (SENTIMENT_BACKEND=branch) and keeps its numbers.
    v1 = json.loads((DEFAULT_SENTIMENT_ARTIFACT / "metrics.json").read_text())
    assert v1["val_as_served"]["macro_recall"] >= 0.72


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Absolutely love the new app, thank you!", "positive"),
        ("Great support, the agent sorted it out in minutes", "positive"),
        ("This is the worst service I have ever had", "negative"),
        ("The app keeps crashing and I lost all my notes", "negative"),
        ("My order number is 4471 and it was placed on Monday", "neutral"),
        ("What time does the store open on Sunday?", "neutral"),
    ],
)
def test_clear_cases(analyzer: Analyzer, text: str, label: str) -> None:
    s = score(analyzer, [text])[0]
    assert s.label == label
    assert -1.0 <= s.score <= 1.0
    assert abs(sum(s.probabilities.values()) - 1.0) < 1e-3
    assert s.most_negative is None  # one sentence


def test_mixed_ticket_is_negative_and_names_the_sentence(analyzer: Analyzer) -> None:
    text = (
        "Thanks so much for your help yesterday, the agent was lovely. "
        "But the app still crashes every time I open it."
    )
    s = score(analyzer, [text])[0]
    assert s.label == "negative"
    worst = s.most_negative
    assert worst is not None and worst.label == "negative"
    assert text[worst.start : worst.end] == "But the app still crashes every time I open it."
    assert s.score < 0 and worst.score <= s.score
    # The sentence on its own reads positive; pooled out of the message it keeps its own tone.
    first = text[: text.index(" But")]
    assert score(analyzer, [first])[0].label == "positive"


def test_rule_turns_a_positive_message_with_a_negative_sentence_negative() -> None:
    from app.nlp.base import SentenceSentiment, Sentiment
    from app.nlp.sentiment import with_worst_sentence

    whole = Sentiment("positive", 0.4, {"negative": 0.1, "neutral": 0.4, "positive": 0.5})
    good = SentenceSentiment(0, 10, "positive", 0.8)
    bad = SentenceSentiment(11, 30, "negative", -0.6)
    combined = with_worst_sentence(whole, [good, bad])
    assert (combined.label, combined.score, combined.most_negative) == ("negative", -0.6, bad)
    mild = SentenceSentiment(11, 30, "neutral", -0.1)
    kept = with_worst_sentence(whole, [good, mild])
    assert (kept.label, kept.score, kept.most_negative) == ("positive", 0.4, mild)
    assert with_worst_sentence(whole, [good]) == whole  # one sentence: nothing to add


def test_batch_and_single_agree(analyzer: Analyzer) -> None:
    texts = ["love it", "hate it", "it is a phone", "Thanks! But it broke again."]
    together = score(analyzer, texts)
    alone = [score(analyzer, [t])[0] for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert a.label == b.label and abs(a.score - b.score) < 1e-3


def test_long_texts_are_chunked_not_truncated(analyzer: Analyzer) -> None:
    # ~40 sentences of neutral filler: far beyond the encoder's 256 tokens.
    head = FILLER * 20
    bad = head + "Honestly this is the worst company I have ever dealt with, I am furious."
    good = head + "Honestly this is the best company I have ever dealt with, I am delighted."
    tokens = len(analyzer.embedder.tokenizer(bad)["input_ids"])
    assert tokens > 2 * analyzer.embedder.max_tokens
    units = analyzer.embedder.split([bad])
    assert len(units) > 1 and units[-1].end == len(bad)
    e_bad, e_good = analyzer.embedder.embed([bad, good])
    # With truncation both would be the embedding of the same first 256 tokens.
    assert float(e_bad @ e_good) < 0.9999
    s_bad, s_good = score(analyzer, [bad, good])
    assert s_bad.label == "negative"
    assert bad[s_bad.most_negative.start : s_bad.most_negative.end].startswith("Honestly")
    assert s_good.score > s_bad.score


def test_long_text_embedding_is_the_mean_over_all_tokens(
    torch_embedder: TransformerEmbedder,
) -> None:
    embedder = torch_embedder
    text = FILLER * 12
    units = embedder.split([text])
    assert len(units) >= 2
    import torch

    sums, count = torch.zeros(embedder.dim), 0
    with torch.inference_mode():
        for u in units:
            batch = embedder.tokenizer(text[u.start : u.end], return_tensors="pt")
            hidden = embedder.encoder(**batch).last_hidden_state[0]
            sums += hidden.sum(0)
            count += hidden.shape[0]
    expected = torch.nn.functional.normalize(sums / count, dim=0).numpy()
    assert float(embedder.embed([text])[0] @ expected) > 0.9999


def test_vader_backend_still_available() -> None:
    s = VaderScorer().score(["Great, thanks!", "Thanks for the reply. This is awful and broken."])
    assert s[0].label == "positive"
    assert s[1].label == "negative" and s[1].most_negative is not None


def _tiny_classifier(path: Path, id2label: dict[int, str]) -> Path:
    """A randomly initialised BERT classifier, built and saved by the test itself."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from app.nlp.embedder import packaged_encoder_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_encoder_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(path)
    return path


def test_hf_backend_serves_a_local_classifier(tmp_path: Path) -> None:
    path = _tiny_classifier(tmp_path / "tiny", {0: "NEGATIVE", 1: "Neutral", 2: "positive"})
    scorer = load_sentiment_scorer(f"hf:{path}")
    assert isinstance(scorer, HFSentiment) and scorer.name == "hf:tiny"
    long_text = "the parcel arrived late. " * 60  # beyond the tiny model's 64 positions
    results = scorer.score(["fine", "Thanks. It broke.", long_text])
    for r in results:
        assert r.label in ("negative", "neutral", "positive")
        assert abs(sum(r.probabilities.values()) - 1) < 1e-3
        assert -1 <= r.score <= 1
    assert results[1].most_negative is not None  # two sentences, scored one by one


def test_hf_backend_without_neutral_and_with_bad_labels(tmp_path: Path) -> None:
    two = _tiny_classifier(tmp_path / "two", {0: "neg", 1: "pos"})
    r = HFSentiment(two).score(["ok"])[0]
    assert r.probabilities["neutral"] == 0.0
    bad = _tiny_classifier(tmp_path / "bad", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(ArtifactError, match="cannot map labels"):
        HFSentiment(bad)
    with pytest.raises(ArtifactError, match="no config.json"):
        load_sentiment_scorer(f"hf:{tmp_path / 'nowhere'}")


def test_missing_and_corrupt_artifacts_fail_clearly(tmp_path: Path, analyzer: Analyzer) -> None:
    embedder: TransformerEmbedder = analyzer.embedder
    with pytest.raises(ArtifactError, match="sentiment artifact missing .* train-sentiment"):
        BranchSentiment(tmp_path / "none", embedder)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((DEFAULT_SENTIMENT_ARTIFACT / "config.json").read_text())
    (corrupt / "branch.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArtifactError, match="unreadable"):
        BranchSentiment(corrupt, embedder)
    other = tmp_path / "other-encoder"
    other.mkdir()
    cfg = json.loads((DEFAULT_SENTIMENT_ARTIFACT / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "encoder_sha256": "0" * 64}))
    (other / "branch.safetensors").write_bytes(
        (DEFAULT_SENTIMENT_ARTIFACT / "branch.safetensors").read_bytes()
    )
    with pytest.raises(ArtifactError, match="different encoder"):
        BranchSentiment(other, embedder)
    with pytest.raises(ValueError, match="available: analysis, branch, vader, hf:/path"):
        load_sentiment_scorer("roberta")


def test_scores_are_deterministic(analyzer: Analyzer) -> None:
    texts = ["the app is slow today", "thank you!"]
    a = [s.score for s in score(analyzer, texts)]
    b = [s.score for s in score(analyzer, texts)]
    assert np.allclose(a, b)
