"""The analysis branch: problem, UX/CX, sub-category and sentiment from one trained branch.

The shared all-MiniLM-L6-v2 pass is tapped at an intermediate layer (as the sentiment branch
is); a fine-tuned copy of the layers above it turns those hidden states into token states, and
four linear heads read their mean (`models/analysis/<version>/`, trained by
`python -m pipelines train-analysis`):

- sentiment: negative / neutral / positive;
- problem: does the message report a problem? One logit, which also reads the sentiment
  head's probabilities (strong negative feeling plus a complaint is rarely "no problem"); the
  `none` decision is this head against its own calibrated threshold, never the largest of
  three classes;
- UX vs CX, among problems: one logit;
- sub-category: the 18 sub-categories of UX, CX and none; the chosen label's best one is shown.

Label probabilities: P(UX) = P(problem) P(UX | problem), P(CX) = P(problem) (1 - P(UX |
problem)), P(none) = 1 - P(problem), each head calibrated by its own temperature. The label
is `none` when P(problem) is under the threshold, else UX or CX, whichever is likelier.

Evidence: every head is linear in the mean of the token states, so each token's share of a
decision is its state times the head's direction, divided by the number of tokens (the
sentiment input of the problem head is one term for the whole text and is not attributed to
words). The chosen label's margin (problem against none, and UX against CX) is split over the
tokens that way, and `EvidenceFinder` groups them into words and phrases.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.nlp.base import (
    SENTIMENT_LABELS,
    SUBCATEGORIES,
    UXCX_LABELS,
    SentenceSentiment,
    Sentiment,
    UxCx,
)
from app.nlp.embedder import Encoding, TapBatch, TransformerEmbedder
from app.nlp.evidence import EvidenceFinder
from app.nlp.segment import sentence_spans
from app.nlp.sentiment import (
    ArtifactError,
    BranchRuntime,
    TorchBranch,
    branch_weights_sha256,
    check_encoder,
    from_probabilities,
    load_branch_weights,
    with_worst_sentence,
)

log = logging.getLogger("app.nlp.analysis")

# The sub-category head's classes, in order: every label's sub-categories.
CLASSES: tuple[tuple[str, str], ...] = tuple(
    (label, sub) for label in UXCX_LABELS for sub in SUBCATEGORIES[label]
)
# Head name -> output width.
HEADS: dict[str, int] = {"sentiment": 3, "problem": 1, "uxcx": 1, "subcategory": len(CLASSES)}
WEIGHTS_FILE = "branch.safetensors"
KIND = "minilm-analysis-branch"


def build_module(embedder: TransformerEmbedder, tap_layer: int) -> Any:
    """A fresh branch: the encoder's own layers above `tap_layer` and the four heads."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    layers_total = int(embedder.config.num_hidden_layers)
    if not 0 < tap_layer < layers_total:
        raise ValueError(f"tap layer must be between 1 and {layers_total - 1}")
    config = embedder.encoder.config

    class AnalysisBranchModule(torch.nn.Module):
        """Fine-tuned upper layers with mean pooling and four linear heads."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(
                copy.deepcopy(list(embedder.encoder.encoder.layer[tap_layer:]))
            )
            self.dropout = torch.nn.Dropout(0.1)
            hidden = config.hidden_size
            self.sentiment = torch.nn.Linear(hidden, HEADS["sentiment"])
            self.problem = torch.nn.Linear(hidden, 1)
            # The problem head also reads the sentiment probabilities (3 -> 1, no bias).
            self.problem_sentiment = torch.nn.Linear(HEADS["sentiment"], 1, bias=False)
            self.uxcx = torch.nn.Linear(hidden, 1)
            self.subcategory = torch.nn.Linear(hidden, HEADS["subcategory"])

        def tokens(self, hidden: Any, mask: Any) -> Any:
            """Token states after the branch's layers."""
            attention = create_bidirectional_mask(
                config=config, inputs_embeds=hidden, attention_mask=mask
            )
            for layer in self.layers:
                hidden = layer(hidden, attention)
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
            return hidden

        def heads(self, pooled: Any) -> dict[str, Any]:
            """Every head's logits from pooled states."""
            x = self.dropout(pooled)
            sentiment = self.sentiment(x)
            problem = self.problem(x) + self.problem_sentiment(torch.softmax(sentiment, -1))
            return {
                "sentiment": sentiment,
                "problem": problem.squeeze(-1),
                "uxcx": self.uxcx(x).squeeze(-1),
                "subcategory": self.subcategory(x),
            }

        def forward(self, hidden: Any, mask: Any) -> dict[str, Any]:
            """Every head's logits for each sequence, from the mean of its token states."""
            states = self.tokens(hidden, mask)
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
            return self.heads(pooled)

    return AnalysisBranchModule()


def read_artifact(artifact_dir: Path, embedder: TransformerEmbedder) -> dict[str, Any]:
    """The artifact's config, checked against the encoder; raises ArtifactError saying why."""
    config_path = artifact_dir / "config.json"
    weights_path = artifact_dir / WEIGHTS_FILE
    if not config_path.exists() or not weights_path.exists():
        raise ArtifactError(
            f"analysis artifact missing at {artifact_dir} (needs config.json and {WEIGHTS_FILE});"
            " train it with `python -m pipelines train-analysis` or set SENTIMENT_BACKEND and "
            "UXCX_BACKEND to other analysers"
        )
    try:
        cfg: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        if cfg.get("kind") != KIND:
            raise ValueError(f"kind {cfg.get('kind')!r} is not {KIND!r}")
        int(cfg["tap_layer"])
        calibration = cfg["calibration"]
        missing = [k for k in ("problem_threshold", "temperature") if k not in calibration]
        if missing:
            raise ValueError(f"calibration lacks {', '.join(missing)}")
        labels = list(cfg["sentiment_labels"])
        classes = [tuple(c) for c in cfg["classes"]]
    except Exception as exc:
        raise ArtifactError(f"analysis artifact at {artifact_dir} is unreadable: {exc}") from exc
    if labels != list(SENTIMENT_LABELS):
        raise ArtifactError(
            f"analysis artifact at {artifact_dir}: sentiment labels {labels} != "
            f"{list(SENTIMENT_LABELS)}"
        )
    if classes != list(CLASSES):
        raise ArtifactError(
            f"analysis artifact at {artifact_dir}: sub-categories {classes} are not this "
            "version's (app/nlp/base.py SUBCATEGORIES); train it again"
        )
    threshold = float(calibration["problem_threshold"])
    if not 0.0 < threshold < 1.0:
        raise ArtifactError(
            f"analysis artifact at {artifact_dir}: problem threshold {threshold} not in (0, 1)"
        )
    temperatures = calibration["temperature"]
    if set(temperatures) != set(HEADS) or min(float(t) for t in temperatures.values()) <= 0:
        raise ArtifactError(
            f"analysis artifact at {artifact_dir}: temperatures {temperatures} must be positive, "
            f"one per head ({', '.join(HEADS)})"
        )
    check_encoder(cfg, embedder, "analysis", artifact_dir)
    return cfg


def load_module(artifact_dir: Path, embedder: TransformerEmbedder) -> Any:
    """The trained branch as a PyTorch module (eval mode)."""
    cfg = read_artifact(artifact_dir, embedder)
    return load_branch_weights(build_module(embedder, int(cfg["tap_layer"])), artifact_dir,
                               "analysis")  # fmt: skip


# sha256 of the artifact's weights (the same file name as the sentiment branch's): an exported
# graph records what it came from.
weights_sha256 = branch_weights_sha256


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
    return out


class Heads:
    """The four heads in numpy, with the artifact's calibration."""

    def __init__(self, state: dict[str, np.ndarray], cfg: dict[str, Any], dim: int) -> None:
        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            value = np.asarray(state[name], dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape}")
            return value

        self.w_sentiment = get("sentiment.weight", (3, dim))
        self.b_sentiment = get("sentiment.bias", (3,))
        self.w_problem = get("problem.weight", (1, dim))[0]
        self.b_problem = float(get("problem.bias", (1,))[0])
        self.v_problem = get("problem_sentiment.weight", (1, 3))[0]
        self.w_uxcx = get("uxcx.weight", (1, dim))[0]
        self.b_uxcx = float(get("uxcx.bias", (1,))[0])
        self.w_sub = get("subcategory.weight", (len(CLASSES), dim))
        self.b_sub = get("subcategory.bias", (len(CLASSES),))
        calibration = cfg["calibration"]
        self.threshold = float(calibration["problem_threshold"])
        self.t = {k: float(v) for k, v in calibration["temperature"].items()}
        # Added to the tempered sentiment logits (fitted for macro-recall, see train-analysis).
        self.sentiment_bias = np.asarray(
            calibration.get("sentiment_bias", [0.0, 0.0, 0.0]), dtype=np.float32
        ).reshape(3)
        self.label_of = np.array([UXCX_LABELS.index(lab) for lab, _ in CLASSES])

    def sentiment_logits(self, pooled: np.ndarray) -> np.ndarray:
        """(n, 3) raw sentiment logits."""
        out: np.ndarray = pooled @ self.w_sentiment.T + self.b_sentiment
        return out

    def sentiment(self, pooled: np.ndarray) -> np.ndarray:
        """(n, 3) calibrated sentiment probabilities."""
        return _softmax(self.sentiment_logits(pooled) / self.t["sentiment"] + self.sentiment_bias)

    def logits(self, pooled: np.ndarray) -> dict[str, np.ndarray]:
        """Raw logits of every head, (n,) or (n, k)."""
        sentiment = self.sentiment_logits(pooled)
        return {
            "sentiment": sentiment,
            "problem": pooled @ self.w_problem
            + _softmax(sentiment) @ self.v_problem
            + self.b_problem,
            "uxcx": pooled @ self.w_uxcx + self.b_uxcx,
            "subcategory": pooled @ self.w_sub.T + self.b_sub,
        }

    def probabilities(self, logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated probabilities: P(problem), P(UX | problem), sub-categories, labels."""
        problem = _sigmoid(logits["problem"] / self.t["problem"])
        ux = _sigmoid(logits["uxcx"] / self.t["uxcx"])
        labels = np.stack([problem * ux, problem * (1.0 - ux), 1.0 - problem], axis=1)
        return {
            "problem": problem,
            "ux": ux,
            "subcategory": _softmax(logits["subcategory"] / self.t["subcategory"]),
            "labels": labels,
            "sentiment": _softmax(logits["sentiment"] / self.t["sentiment"] + self.sentiment_bias),
        }

    def decide(self, problem: np.ndarray, ux: np.ndarray) -> np.ndarray:
        """Label index per text (UX 0, CX 1, none 2): the problem threshold, then UX vs CX."""
        return np.where(problem >= self.threshold, np.where(ux >= 0.5, 0, 1), 2)


class AnalysisBranch:
    """The project's analysis branch: sentiment and UX/CX from one fine-tuned branch.

    One object serves as both the sentiment scorer and the UX/CX labeller; the branch runs
    once per batch (beside the encoder, `tap_states`) and both read its token states. Its
    layers run on PyTorch, or on an exported ONNX graph when `runtime` is given."""

    needs_tokens = False
    pool_layers: tuple[int, ...] = ()

    def __init__(
        self,
        artifact_dir: Path,
        embedder: TransformerEmbedder,
        *,
        runtime: BranchRuntime | None = None,
    ) -> None:
        from safetensors.numpy import load_file

        cfg = read_artifact(artifact_dir, embedder)
        self.tap_layer: int | None = int(cfg["tap_layer"])
        self.version = str(cfg.get("version", artifact_dir.name))
        self.name = f"analysis:{self.version}"
        self.state_key = self.name
        if runtime is None:
            runtime = TorchBranch(load_module(artifact_dir, embedder))
        self.runtime: BranchRuntime = runtime
        try:
            state = load_file(str(artifact_dir / WEIGHTS_FILE))
            self.heads = Heads(state, cfg, embedder.dim)
        except Exception as exc:
            raise ArtifactError(f"analysis artifact at {artifact_dir} does not fit: {exc}") from exc
        self.evidence = EvidenceFinder(list(cfg.get("phrases", [])))
        log.info(
            "analysis artifact loaded",
            extra={
                "stage": "load",
                "path": str(artifact_dir),
                "tap_layer": self.tap_layer,
                "backend": runtime.name,
                "problem_threshold": self.heads.threshold,
            },
        )

    @property
    def threshold(self) -> float:
        """P(problem) at or above which a message reports a problem."""
        return self.heads.threshold

    def tap_states(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The branch's token states for one batch of tapped hidden states."""
        return self.runtime.states(hidden, mask)

    def _states(self, encoding: Encoding) -> list[tuple[TapBatch, np.ndarray]]:
        """Every tapped batch with its branch states (run now for batches without them)."""
        cached = encoding.cache.get(self.state_key)
        if cached is not None:
            return list(cached)
        if encoding.tap_layer != self.tap_layer:
            raise ValueError("AnalysisBranch needs an encoding tapped at its layer")

        def run(tap: TapBatch) -> tuple[TapBatch, np.ndarray]:
            return tap, self.runtime.states(tap.hidden, tap.mask)

        ready = [
            (tap, tap.states[self.state_key])
            for tap in encoding.taps
            if self.state_key in tap.states
        ]
        missing = [tap for tap in encoding.taps if self.state_key not in tap.states]
        pairs = [*ready, *self.runtime.map(run, missing)]
        encoding.cache[self.state_key] = pairs
        return pairs

    def pooled(self, encoding: Encoding, n: int) -> np.ndarray:
        """(n, H) mean of each text's branch token states over all its chunks."""
        key = f"{self.state_key}:pooled"
        if key in encoding.cache:
            out: np.ndarray = encoding.cache[key]
            return out
        dim = self.heads.w_sentiment.shape[1]
        total = np.zeros((n, dim), dtype=np.float32)
        count = np.zeros(n, dtype=np.float32)
        for tap, states in self._states(encoding):
            mask = tap.mask.astype(np.float32)
            owners = [encoding.units[u].text_index for u in tap.units]
            np.add.at(total, owners, (states * mask[..., None]).sum(1))
            np.add.at(count, owners, mask.sum(1))
        out = total / np.maximum(count, 1.0)[:, None]
        encoding.cache[key] = out
        return out

    # -- sentiment ------------------------------------------------------------------------

    def score(self, texts: Sequence[str], encoding: Encoding | None = None) -> list[Sentiment]:
        """Sentiment per text and, for several sentences, per sentence (the same states)."""
        if encoding is None:
            raise ValueError("AnalysisBranch needs the shared encoder pass")
        n = len(texts)
        probs = self.heads.sentiment(self.pooled(encoding, n))
        spans = [sentence_spans(t) for t in texts]
        sentences = self._sentence_probabilities(encoding, spans)
        results = []
        for i in range(n):
            label, score, mapping = from_probabilities(probs[i].tolist())
            whole = Sentiment(label=label, score=score, probabilities=mapping)
            per_sentence = []
            if i in sentences:
                for j, (s, e) in enumerate(spans[i]):
                    p = sentences[i][j]
                    if p is None:
                        continue
                    s_label, s_score, _ = from_probabilities(p.tolist())
                    per_sentence.append(SentenceSentiment(s, e, s_label, s_score))
            results.append(with_worst_sentence(whole, per_sentence))
        return results

    def _sentence_probabilities(
        self, encoding: Encoding, spans: list[list[tuple[int, int]]]
    ) -> dict[int, list[np.ndarray | None]]:
        """Sentiment probabilities per sentence of every text with several sentences: the
        sentence's tokens pooled with [CLS] and [SEP], as in training."""
        dim = self.heads.w_sentiment.shape[1]
        wanted = {i for i, s in enumerate(spans) if len(s) > 1}
        if not wanted:
            return {}
        sums = {i: np.zeros((len(spans[i]), dim), dtype=np.float32) for i in wanted}
        counts = {i: np.zeros(len(spans[i]), dtype=np.float32) for i in wanted}
        bounds = {
            i: (np.array([s for s, _ in spans[i]]), np.array([e for _, e in spans[i]]))
            for i in wanted
        }
        for tap, states in self._states(encoding):
            starts = tap.offsets[..., 0]
            special = (tap.offsets.sum(-1) == 0) & (tap.mask == 1)
            for row, unit in enumerate(tap.units):
                owner = encoding.units[unit].text_index
                if owner not in wanted:
                    continue
                begin, end = bounds[owner]
                j = np.searchsorted(begin, starts[row], side="right") - 1
                inside = (j >= 0) & (starts[row] < end[np.maximum(j, 0)]) & ~special[row]
                inside &= tap.mask[row] == 1
                onehot = (j[None, :] == np.arange(len(begin))[:, None]) & inside[None, :]
                hits = onehot.sum(1)
                present = hits > 0
                if not present.any():
                    continue
                specials = states[row][special[row]].sum(0)
                sums[owner] += onehot.astype(np.float32) @ states[row]
                sums[owner][present] += specials
                counts[owner] += hits + present * float(special[row].sum())
        out: dict[int, list[np.ndarray | None]] = {}
        for i in wanted:
            probs = self.heads.sentiment(sums[i] / np.maximum(counts[i], 1.0)[:, None])
            out[i] = [probs[j] if counts[i][j] > 0 else None for j in range(len(spans[i]))]
        return out

    # -- UX / CX ----------------------------------------------------------------------------

    def classify(
        self, texts: Sequence[str], encoding: Any, select: Sequence[int] | None = None
    ) -> list[UxCx]:
        """Label, sub-category, calibrated probabilities and evidence for each text (or those
        in `select`)."""
        rows = list(range(len(texts))) if select is None else list(select)
        if not rows:
            return []
        pooled = self.pooled(encoding, len(texts))[rows]
        logits = self.heads.logits(pooled)
        probs = self.heads.probabilities(logits)
        chosen = self.heads.decide(probs["problem"], probs["ux"])
        where: dict[int, list[tuple[TapBatch, np.ndarray, int]]] = {}
        wanted = set(rows)
        for tap, states in self._states(encoding):
            for r, unit in enumerate(tap.units):
                owner = encoding.units[unit].text_index
                if owner in wanted:
                    where.setdefault(owner, []).append((tap, states, r))
        results = []
        for k, i in enumerate(rows):
            label_index = int(chosen[k])
            label = UXCX_LABELS[label_index]
            in_label = self.heads.label_of == label_index
            sub_p = probs["subcategory"][k]
            sub = int(np.where(in_label, sub_p, -1.0).argmax())
            label_p = probs["labels"][k]
            results.append(
                UxCx(
                    label=label,
                    probability=round(float(label_p[label_index]), 4),
                    probabilities={
                        lab: round(float(p), 4) for lab, p in zip(UXCX_LABELS, label_p, strict=True)
                    },
                    subcategory=CLASSES[sub][1],
                    subcategory_probability=round(
                        float(sub_p[sub] / max(sub_p[in_label].sum(), 1e-12)), 4
                    ),
                    evidence=self._evidence(texts[i], label, where.get(i, [])),
                    problem_probability=round(float(probs["problem"][k]), 4),
                )
            )
        return results

    def _direction(self, label: str) -> np.ndarray:
        """The direction in state space whose growth makes `label` more likely: problem against
        none, plus UX against CX for a problem."""
        heads = self.heads
        if label == "none":
            return -heads.w_problem / heads.t["problem"]
        sign = 1.0 if label == "UX" else -1.0
        return heads.w_problem / heads.t["problem"] + sign * heads.w_uxcx / heads.t["uxcx"]

    def _evidence(
        self, text: str, label: str, parts: list[tuple[TapBatch, np.ndarray, int]]
    ) -> tuple[Any, ...]:
        """The words that pushed the text towards `label`, with offsets into `text`."""
        if not parts:
            return ()
        direction = self._direction(label)
        total = sum(int(tap.mask[r].sum()) for tap, _, r in parts)
        pieces: list[tuple[int, int]] = []
        scores: list[float] = []
        for tap, states, r in parts:
            n = int(tap.mask[r].sum())
            contrib = (states[r, :n] @ direction) / max(total, 1)
            for (s, e), c in zip(tap.offsets[r, :n].tolist(), contrib.tolist(), strict=True):
                if e > s:
                    pieces.append((s, e))
                    scores.append(c)
        return self.evidence.explain(text, pieces, scores)
