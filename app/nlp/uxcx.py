"""UX / CX / none labelling, picked by name from settings.

- `linear` (the default): the project's trained labeller (`models/uxcx/<version>/`, written by
  `python -m pipelines train-uxcx`): one linear layer over the shared sentence embedding to a
  sub-category, temperature-calibrated; a label's probability is the sum of its sub-categories'.
  Being linear over a mean of token states, its decision splits exactly into one share per
  token, which `app.nlp.evidence` turns into evidence spans.
- `prototypes`: zero-shot; the cosine similarity of a text to short written descriptions of each
  kind of problem. No training; kept as the baseline that `bench/uxcx.py` compares against.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.nlp.base import SUBCATEGORIES, UXCX_LABELS, Embedder, Evidence, UxCx
from app.nlp.evidence import EvidenceFinder

log = logging.getLogger("app.nlp.uxcx")


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
    """Zero-shot: nearest written description on the shared embedding."""

    name = "prototypes"
    needs_tokens = False
    pool_layers: tuple[int, ...] = ()

    def __init__(self, embedder: Embedder) -> None:
        self._labels = [label for label, _, _ in PROTOTYPES]
        self._subcategories = [sub for _, sub, _ in PROTOTYPES]
        self._vectors = embedder.embed([text for _, _, text in PROTOTYPES])
        self._masks = {
            label: np.array([p == label for p in self._labels], dtype=bool) for label in UXCX_LABELS
        }

    def classify(
        self, texts: Sequence[str], encoding: Any, select: Sequence[int] | None = None
    ) -> list[UxCx]:
        """Label each text (those in `select`, if given) by its most similar description."""
        rows = list(range(len(texts))) if select is None else list(select)
        if not rows:
            return []
        embeddings = encoding.embeddings[rows]
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


class ArtifactError(RuntimeError):
    """A labeller artifact that is missing, malformed or made for another encoder."""


class LinearUxCx:
    """The trained labeller: sub-category softmax over the shared embedding, with evidence."""

    needs_tokens = True

    def __init__(self, artifact_dir: Path, *, encoder_fingerprint: str | None = None) -> None:
        from safetensors.numpy import load_file

        config_path = artifact_dir / "config.json"
        weights_path = artifact_dir / "weights.safetensors"
        if not config_path.exists() or not weights_path.exists():
            raise ArtifactError(
                f"UX/CX artifact missing at {artifact_dir} (needs config.json and "
                "weights.safetensors); train it with `python -m pipelines train-uxcx` or set "
                "UXCX_BACKEND=prototypes"
            )
        try:
            cfg = json.loads(config_path.read_text(encoding="utf-8"))
            tensors = load_file(str(weights_path))
            self.weight = tensors["weight"].astype(np.float32)
            self.bias = tensors["bias"].astype(np.float32)
            self.temperature = float(cfg["temperature"])
            self.classes: list[tuple[str, str]] = [(c[0], c[1]) for c in cfg["classes"]]
            phrases = list(cfg.get("phrases", []))
            self.layers: tuple[int, ...] = tuple(int(x) for x in cfg["layers"])
            version = str(cfg["version"])
            fingerprint = cfg.get("encoder_sha256")
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise ArtifactError(f"UX/CX artifact at {artifact_dir} is malformed: {exc}") from exc
        if (
            self.weight.ndim != 2
            or self.weight.shape[0] != len(self.classes)
            or self.weight.shape[1] % len(self.layers)
        ):
            raise ArtifactError(f"UX/CX artifact at {artifact_dir}: weight/classes disagree")
        if self.bias.shape != (len(self.classes),) or self.temperature <= 0:
            raise ArtifactError(f"UX/CX artifact at {artifact_dir}: bad bias or temperature")
        unknown = [c for c in self.classes if c[1] not in SUBCATEGORIES.get(c[0], ())]
        if unknown:
            raise ArtifactError(f"UX/CX artifact at {artifact_dir}: unknown classes {unknown}")
        if encoder_fingerprint and fingerprint and fingerprint != encoder_fingerprint:
            raise ArtifactError(
                f"UX/CX artifact at {artifact_dir} was trained on another encoder "
                f"(sha256 {fingerprint[:12]}..., this one {encoder_fingerprint[:12]}...)"
            )
        self.name = f"linear:{version}"
        self.dim = int(self.weight.shape[1]) // len(self.layers)
        # The first layer listed is the final one (the sentence embedding); the rest are
        # intermediate layers pooled the same way from the same encoder pass.
        self.pool_layers = self.layers[1:]
        self._per_layer = {
            layer: self.weight[:, k * self.dim : (k + 1) * self.dim]
            for k, layer in enumerate(self.layers)
        }
        # (classes, labels) 0/1: sums sub-category probabilities into label probabilities.
        self._to_label = np.array(
            [[c[0] == label for label in UXCX_LABELS] for c in self.classes], dtype=np.float32
        )
        self.evidence = EvidenceFinder(phrases)

    def features(self, encoding: Any, rows: Sequence[int] | None = None) -> np.ndarray:
        """(n, dim * layers): the pooled layers of the encoding, side by side."""
        parts = [encoding.pooled[layer] for layer in self.layers]
        x = np.concatenate(parts, axis=1)
        return x if rows is None else x[list(rows)]

    def probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated (n, classes) sub-category and (n, 3) label probabilities."""
        logits = (features @ self.weight.T + self.bias) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, probs @ self._to_label

    def classify(
        self, texts: Sequence[str], encoding: Any, select: Sequence[int] | None = None
    ) -> list[UxCx]:
        """Label, sub-category, probabilities and evidence for each text (or those in
        `select`); evidence needs the encoding's token states (`keep_tokens=True`)."""
        rows = list(range(len(texts))) if select is None else list(select)
        if not rows:
            return []
        sub_probs, label_probs = self.probabilities(self.features(encoding, rows))
        # Which token states belong to which text: (batch, row in batch) per encoder unit.
        where: dict[int, list[tuple[int, int]]] = {}
        token_batches = encoding.tokens.get(self.layers[0], [])
        for b, batch in enumerate(token_batches):
            for r, unit in enumerate(batch.units):
                where.setdefault(encoding.units[unit].text_index, []).append((b, r))
        projected: dict[int, list[np.ndarray]] = {}
        results = []
        for i, sub_p, label_p in zip(rows, sub_probs, label_probs, strict=True):
            k = int(label_p.argmax())
            label = UXCX_LABELS[k]
            in_label = self._to_label[:, k] > 0
            sub = int(np.where(in_label, sub_p, -1.0).argmax())
            evidence: tuple[Evidence, ...] = ()
            if i in where:
                # The decision as a margin: the chosen sub-category's logit against the
                # probability-weighted logits of the other labels' sub-categories. It is linear
                # in the embedding, so each token's share is its state times that direction.
                others = np.where(in_label, 0.0, sub_p)
                direction = -others / max(others.sum(), 1e-12)
                direction[sub] += 1.0
                pieces: list[tuple[int, int]] = []
                scores: list[float] = []
                scales = [float(encoding.pool_scale[layer][i]) for layer in self.layers]
                for b, r in where[i]:
                    if b not in projected:
                        projected[b] = [
                            self._project(encoding.tokens[layer][b], layer) for layer in self.layers
                        ]
                    batch = token_batches[b]
                    n = int(batch.mask[r].sum())
                    offsets = batch.offsets[r, :n].tolist()
                    # Each token's share of the margin, summed over the pooled layers.
                    contrib = sum(
                        (proj[r, :n] @ direction) * scale
                        for proj, scale in zip(projected[b], scales, strict=True)
                    )
                    for (s, e), c in zip(offsets, contrib.tolist(), strict=True):
                        if e > s:
                            pieces.append((s, e))
                            scores.append(c)
                evidence = self.evidence.explain(texts[i], pieces, scores)
            results.append(
                UxCx(
                    label=label,
                    probability=round(float(label_p[k]), 4),
                    probabilities={
                        lab: round(float(p), 4) for lab, p in zip(UXCX_LABELS, label_p, strict=True)
                    },
                    subcategory=self.classes[sub][1],
                    subcategory_probability=round(float(sub_p[sub] / label_p[k]), 4),
                    evidence=evidence,
                )
            )
        return results

    def _project(self, batch: Any, layer: int) -> np.ndarray:
        """(B, T, classes): every token state of one layer through that layer's weights."""
        hidden = np.asarray(batch.hidden, dtype=np.float32)
        return np.asarray(hidden @ self._per_layer[layer].T)


def load_uxcx_classifier(
    backend: str,
    embedder: Embedder,
    *,
    artifact_dir: Path | None = None,
    encoder_fingerprint: str | None = None,
) -> PrototypeClassifier | LinearUxCx:
    """The labeller named by the UXCX_BACKEND setting."""
    if backend == "prototypes":
        return PrototypeClassifier(embedder)
    if backend == "linear":
        if artifact_dir is None:
            raise ValueError("UXCX_BACKEND=linear needs UXCX_ARTIFACT")
        return LinearUxCx(artifact_dir, encoder_fingerprint=encoder_fingerprint)
    if backend == "analysis":
        raise ValueError(
            "UXCX_BACKEND=analysis is built by app.nlp.loader.load_analyzer (one branch serves "
            "sentiment and UX/CX)"
        )
    raise ValueError(f"unknown UXCX_BACKEND {backend!r}; available: analysis, linear, prototypes")


# A cluster whose leading label holds less than this mean probability is `mixed`.
MIXED_BELOW = 0.6


@dataclass(frozen=True, slots=True)
class GroupLabel:
    """The UX/CX label of a group of messages (a cluster), from all its members.

    `label` is UX, CX, none, or `mixed` when the members split; `leading` is the strongest
    label even then. `confidence` is the mean probability of `leading` over the members.
    """

    label: str
    leading: str
    confidence: float
    probabilities: dict[str, float]
    shares: dict[str, float]  # members whose own label is each label
    subcategories: dict[str, int]  # members of the leading label, by sub-category
    evidence: tuple[str, ...]  # the phrases that drove most members of the leading label


def label_group(members: Sequence[UxCx], *, max_evidence: int = 5) -> GroupLabel | None:
    """Aggregate members' probabilities (never one representative) into the group's label."""
    if not members:
        return None
    probs = np.array([[m.probabilities.get(k, 0.0) for k in UXCX_LABELS] for m in members])
    mean = probs.mean(axis=0)
    k = int(mean.argmax())
    leading = UXCX_LABELS[k]
    own = [m.label for m in members]
    subcategories: dict[str, int] = {}
    phrase_weight: dict[str, float] = {}
    phrase_members: dict[str, int] = {}
    for m in members:
        if m.label != leading:
            continue
        if m.subcategory:
            subcategories[m.subcategory] = subcategories.get(m.subcategory, 0) + 1
        for key in {e.text.lower() for e in m.evidence}:
            phrase_members[key] = phrase_members.get(key, 0) + 1
        for e in m.evidence:
            key = e.text.lower()
            phrase_weight[key] = phrase_weight.get(key, 0.0) + e.weight
    # Typical: carried by many members, then by how much it weighed in their decisions.
    ranked = sorted(phrase_weight, key=lambda p: (-phrase_members[p], -phrase_weight[p], p))
    return GroupLabel(
        label=leading if mean[k] >= MIXED_BELOW else "mixed",
        leading=leading,
        confidence=round(float(mean[k]), 4),
        probabilities={lab: round(float(p), 4) for lab, p in zip(UXCX_LABELS, mean, strict=True)},
        shares={lab: round(own.count(lab) / len(own), 4) for lab in UXCX_LABELS},
        subcategories=dict(sorted(subcategories.items(), key=lambda kv: (-kv[1], kv[0]))),
        evidence=tuple(ranked[:max_evidence]),
    )
