"""UX / CX / none labelling, picked by name from settings.

The first labeller compares a text's embedding with short descriptions of each kind of problem
(prototypes) and turns the best similarity per label into probabilities with a softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.nlp.base import UXCX_LABELS, Embedder, Embeddings, UxCx

# (label, sub-category, description). Written for this project; the rule is which team fixes
# the root cause: product/engineering/design -> UX, support/operations/logistics/billing -> CX.
PROTOTYPES: tuple[tuple[str, str, str], ...] = (
    ("UX", "bug", "the app crashes every time I open it"),
    ("UX", "bug", "I get an error message when I try to save my changes"),
    ("UX", "bug", "the button does nothing when I tap it, looks like a bug"),
    ("UX", "outage", "the website is down and the service is not working for anyone"),
    ("UX", "outage", "my internet connection keeps dropping and there is no signal"),
    ("UX", "performance", "the app is very slow and pages take forever to load"),
    ("UX", "usability", "the new interface is confusing and I can't find the settings"),
    ("UX", "usability", "where is the option to export, the menu makes no sense"),
    ("UX", "account_access", "I can't log in to my account, the password reset link fails"),
    ("UX", "compatibility", "since the latest update my data no longer syncs between devices"),
    ("UX", "compatibility", "the update broke the app on my phone"),
    ("UX", "feature_request", "please add a dark mode, this feature is missing"),
    (
        "CX",
        "support_responsiveness",
        "I have been waiting for days and nobody from support replied",
    ),
    (
        "CX",
        "support_responsiveness",
        "still no answer to my email, how long does it take to respond",
    ),
    (
        "CX",
        "support_quality",
        "the support agent was rude and unhelpful and kept passing me around",
    ),
    ("CX", "support_quality", "customer service gave me a copy-paste answer that did not help"),
    ("CX", "delivery", "my order has not arrived and the package is two weeks late"),
    ("CX", "delivery", "the parcel arrived damaged and items were missing from my order"),
    ("CX", "billing", "I was charged twice and I am still waiting for my refund"),
    ("CX", "billing", "the price went up without notice and the bill is wrong"),
    ("CX", "cancellation", "I want to cancel my subscription but they make it impossible"),
    ("CX", "staff", "the staff in the store were rude and the queue was an hour long"),
    ("CX", "travel_disruption", "my flight was delayed for hours and my luggage is lost"),
    ("CX", "travel_disruption", "the train was cancelled and nobody told us what to do"),
    ("none", "praise", "thank you so much, great service, you made my day"),
    ("none", "praise", "I love this app, it works perfectly"),
    ("none", "thanks", "thanks, that fixed it, all good now"),
    ("none", "thanks", "thank you for the quick help, your team was great"),
    ("none", "praise", "love the new look, great job"),
    ("none", "question", "what time do you open on Sundays"),
    ("none", "chit_chat", "happy friday everyone, have a nice weekend"),
)

# Similarities of MiniLM embeddings spread over a narrow range; a low temperature turns a
# clear lead into a confident probability without making close calls look certain.
_TEMPERATURE = 0.05


class PrototypeClassifier:
    """Nearest-description labelling on the shared embedding."""

    name = "prototypes"

    def __init__(self, embedder: Embedder) -> None:
        self._labels = [label for label, _, _ in PROTOTYPES]
        self._subcategories = [sub for _, sub, _ in PROTOTYPES]
        self._vectors = embedder.embed([text for _, _, text in PROTOTYPES])
        self._masks = {
            label: np.array([p == label for p in self._labels], dtype=bool) for label in UXCX_LABELS
        }

    def classify(self, texts: Sequence[str], embeddings: Embeddings) -> list[UxCx]:
        """Label each text by its most similar description per label."""
        if len(texts) == 0:
            return []
        sims = embeddings @ self._vectors.T  # (n, prototypes); vectors are unit length
        best = np.stack([sims[:, self._masks[label]].max(axis=1) for label in UXCX_LABELS], 1)
        logits = best / _TEMPERATURE
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        results = []
        for row, sim_row in zip(probs, sims, strict=True):
            k = int(row.argmax())
            label = UXCX_LABELS[k]
            in_label = np.where(self._masks[label])[0]
            nearest = int(in_label[sim_row[in_label].argmax()])
            results.append(
                UxCx(
                    label=label,
                    probability=round(float(row[k]), 4),
                    probabilities={
                        lab: round(float(p), 4) for lab, p in zip(UXCX_LABELS, row, strict=True)
                    },
                    subcategory=self._subcategories[nearest],
                )
            )
        return results


def load_uxcx_classifier(backend: str, embedder: Embedder) -> PrototypeClassifier:
    """The labeller named by the UXCX_BACKEND setting."""
    if backend == "prototypes":
        return PrototypeClassifier(embedder)
    raise ValueError(f"unknown UXCX_BACKEND {backend!r}; available: prototypes")
