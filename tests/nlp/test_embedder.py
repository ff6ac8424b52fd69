"""The embedder matches the sentence-transformers pipeline of all-MiniLM-L6-v2 exactly."""

from __future__ import annotations

import numpy as np
import pytest

from app.nlp.analyzer import Analyzer, compose_text
from app.nlp.embedder import TransformerEmbedder, packaged_encoder_path

TEXTS = [
    "The app crashes when I open settings",
    "my parcel never arrived and nobody answers",
    "ok",
    "A much longer ticket body that goes on about the checkout page failing with an error "
    "and the customer being charged anyway, then waiting a week for any reply at all. " * 6,
    "Thanks!! 🙏 @support",
]


def test_matches_sentence_transformers(torch_embedder: TransformerEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(packaged_encoder_path()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    ours = torch_embedder.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    cos = (ours * expected).sum(axis=1)
    assert cos.min() > 0.9999


def test_batch_order_and_single_texts_agree(analyzer: Analyzer) -> None:
    together = analyzer.embedder.embed(TEXTS)
    alone = np.vstack([analyzer.embedder.embed([t]) for t in TEXTS])
    assert np.allclose(together, alone, atol=1e-4)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert analyzer.embedder.embed([]).shape == (0, 384)


def test_similar_problems_are_closer_than_unrelated_ones(analyzer: Analyzer) -> None:
    a, b, c = analyzer.embedder.embed(
        [
            "the app crashes on launch",
            "application closes itself when started",
            "I was billed twice for my plan",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_missing_weights_fail_clearly(tmp_path: object) -> None:
    with pytest.raises(FileNotFoundError, match="no encoder weights"):
        TransformerEmbedder(str(tmp_path))


def test_compose_text() -> None:
    assert compose_text("Refund", "still waiting") == "Refund\nstill waiting"
    assert compose_text(None, "  body  ") == "body"
    # A body that repeats its subject is not doubled.
    assert compose_text("App crash", "App crash on login") == "App crash on login"
