"""Build the analysers named in settings, once per process."""

from __future__ import annotations

import logging
import time

from app.core.config import Settings
from app.nlp.analyzer import Analyzer
from app.nlp.embedder import TransformerEmbedder
from app.nlp.language import LanguageDetector
from app.nlp.sentiment import encoder_fingerprint, load_sentiment_scorer
from app.nlp.uxcx import load_uxcx_classifier

log = logging.getLogger("app.nlp")


def load_analyzer(settings: Settings) -> Analyzer:
    """Load the embedder and every analyser; raises with a clear message when one is missing."""
    start = time.perf_counter()
    embedder = TransformerEmbedder(
        settings.embedder_path or None,
        max_tokens=settings.embedder_max_tokens,
        threads=settings.torch_threads,
    )
    analyzer = Analyzer(
        embedder=embedder,
        sentiment=load_sentiment_scorer(
            settings.sentiment_backend, embedder=embedder, artifact_dir=settings.sentiment_artifact
        ),
        uxcx=load_uxcx_classifier(
            settings.uxcx_backend,
            embedder,
            artifact_dir=settings.uxcx_artifact,
            encoder_fingerprint=encoder_fingerprint(embedder),
        ),
        language=LanguageDetector(settings.language_min_confidence),
    )
    log.info(
        "analysers loaded",
        extra={
            "stage": "load",
            **analyzer.versions,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return analyzer
