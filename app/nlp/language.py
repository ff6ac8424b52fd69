"""Language identification with py3langid (its model ships inside the package)."""

from __future__ import annotations

import re

from app.nlp.base import Language

# Handles, links and hashtag marks say nothing about the language and confuse the detector.
_NOISE = re.compile(r"(@\w+|https?://\S+|www\.\S+|#)")


class LanguageDetector:
    """Detects the language; English is what the analysers are trained for."""

    def __init__(self, min_confidence: float = 0.8) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.min_confidence = min_confidence

    def detect(self, text: str) -> Language:
        """The most likely language; unconfident guesses on short texts count as English."""
        clean = " ".join(_NOISE.sub(" ", text).split())
        if len(clean) < 3:
            return Language(code="und", confidence=0.0, supported=True)
        code, confidence = self._identifier.classify(clean)
        confidence = float(confidence)
        # Short English texts often come back as some other language at low confidence;
        # only a confident non-English call switches the English analysers off.
        supported = code == "en" or confidence < self.min_confidence
        return Language(code=str(code), confidence=round(confidence, 4), supported=supported)
