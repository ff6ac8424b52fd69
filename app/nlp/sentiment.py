"""Sentiment scorers, picked by name from settings.

- `branch` (default): the project's own model. The shared all-MiniLM-L6-v2 pass is tapped at an
  intermediate layer; a fine-tuned copy of the layers above it plus a linear head
  (`models/sentiment/<version>/`, trained by `python -m pipelines train-sentiment`) turns those
  hidden states into negative/neutral/positive. The embedding for clustering is untouched.
- `hf:/path/to/model`: any local transformers sequence-classification model.
- `vader`: the VADER lexicon, kept as a baseline.

Every scorer gives a label, a score in [-1, 1] (P(positive) - P(negative)) and, for texts of
several sentences, the most negative sentence. Support traffic rule: a message whose most
negative sentence is negative is negative ("thanks for the help, but the app still crashes").
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.nlp.base import SENTIMENT_LABELS, SentenceSentiment, Sentiment
from app.nlp.embedder import Encoding, TapBatch, TransformerEmbedder
from app.nlp.segment import sentence_spans, token_chunks

log = logging.getLogger("app.nlp.sentiment")

# VADER's own recommended cut-offs on the compound score.
_VADER_THRESHOLD = 0.05


class ArtifactError(RuntimeError):
    """A trained artifact is missing, corrupt or does not fit the encoder it extends."""


def from_probabilities(probs: Sequence[float]) -> tuple[str, float, dict[str, float]]:
    """Label, score in [-1, 1] and a rounded probability map from (neg, neu, pos) probabilities."""
    k = int(np.argmax(probs))
    score = float(probs[2] - probs[0])
    mapping = {lab: round(float(p), 4) for lab, p in zip(SENTIMENT_LABELS, probs, strict=True)}
    return SENTIMENT_LABELS[k], round(score, 4), mapping


def with_worst_sentence(whole: Sentiment, sentences: Sequence[SentenceSentiment]) -> Sentiment:
    """Attach the most negative sentence; a negative one makes the whole message negative."""
    if len(sentences) < 2:
        return whole
    worst = min(sentences, key=lambda s: s.score)
    result = replace(whole, most_negative=worst)
    if worst.label == "negative" and whole.label != "negative":
        result = replace(result, label="negative", score=min(whole.score, worst.score))
    return result


class VaderScorer:
    """VADER's lexicon and rules: the compound score is the sentiment score in [-1, 1]."""

    name = "vader"
    tap_layer: int | None = None

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def _one(self, text: str) -> tuple[str, float, dict[str, float]]:
        polarity = self._vader.polarity_scores(text)
        compound = float(polarity["compound"])
        if compound >= _VADER_THRESHOLD:
            label = "positive"
        elif compound <= -_VADER_THRESHOLD:
            label = "negative"
        else:
            label = "neutral"
        probs = {k: float(polarity[k[:3]]) for k in SENTIMENT_LABELS}
        return label, compound, probs

    def score(self, texts: Sequence[str], encoding: Encoding | None = None) -> list[Sentiment]:
        """Score each text and each of its sentences; the encoding is not used by a lexicon."""
        results = []
        for text in texts:
            label, compound, probs = self._one(text)
            sentences = []
            spans = sentence_spans(text)
            if len(spans) > 1:
                for s, e in spans:
                    s_label, s_score, _ = self._one(text[s:e])
                    sentences.append(SentenceSentiment(s, e, s_label, s_score))
            whole = Sentiment(label=label, score=compound, probabilities=probs)
            results.append(with_worst_sentence(whole, sentences))
        return results


def _branch_module(embedder: TransformerEmbedder, tap_layer: int, n_labels: int) -> Any:
    """The layers above `tap_layer` (copied from the encoder) and a linear head."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    # The copied layers' own config: the mask must be built for their attention kernel.
    config = embedder.encoder.config

    class SentimentBranch(torch.nn.Module):
        """Fine-tuned upper layers of the encoder with mean pooling and a linear head."""

        def __init__(self) -> None:
            super().__init__()
            layers = embedder.encoder.encoder.layer[tap_layer:]
            self.layers = torch.nn.ModuleList(copy.deepcopy(list(layers)))
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(config.hidden_size, n_labels)

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

        def forward(self, hidden: Any, mask: Any) -> Any:
            """Logits for each sequence, from the mean of its token states."""
            states = self.tokens(hidden, mask)
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
            return self.head(self.dropout(pooled))

    return SentimentBranch()


def build_branch(embedder: TransformerEmbedder, tap_layer: int) -> Any:
    """A fresh branch initialised from the encoder's own upper layers (used by training)."""
    if not 0 < tap_layer < embedder.config.num_hidden_layers:
        raise ValueError(f"tap layer must be between 1 and {embedder.config.num_hidden_layers - 1}")
    return _branch_module(embedder, tap_layer, len(SENTIMENT_LABELS))


def encoder_fingerprint(embedder: TransformerEmbedder) -> str:
    """sha256 of the encoder's weight file, so an artifact only runs on the encoder it extends."""
    return weights_fingerprint(embedder.path)


def weights_fingerprint(encoder_dir: Path) -> str:
    """sha256 of `model.safetensors` in an encoder folder ("unknown" when there is none)."""
    weights = encoder_dir / "model.safetensors"
    if not weights.exists():
        return "unknown"
    stat = weights.stat()
    return _file_sha256(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per file version: every artifact checks the same 90 MB of weights."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class TorchBranch:
    """The branch's layers in PyTorch."""

    name = "torch"

    def __init__(self, module: Any) -> None:
        import torch

        self._torch = torch
        self.module = module

    def states(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token states after the branch's layers, (B, T, H)."""
        torch = self._torch
        with torch.inference_mode():
            out = self.module.tokens(torch.from_numpy(hidden), torch.from_numpy(mask))
        result: np.ndarray = out.numpy()
        return result

    def map(self, fn: Any, items: Sequence[Any]) -> Any:
        """One batch after another (PyTorch uses the cores itself)."""
        return (fn(item) for item in items)


class OnnxBranch:
    """The branch's layers exported to ONNX (see `pipelines/export_onnx.py`)."""

    def __init__(self, path: Path, *, name: str, threads: int) -> None:
        from app.nlp.runtime import OnnxGraph, RuntimeArtifactError

        self.name = name
        self.graph = OnnxGraph(path, threads=threads)
        if self.graph.inputs != ["hidden", "attention_mask"] or self.graph.outputs != ["states"]:
            raise RuntimeArtifactError(
                f"ONNX sentiment branch {path} has inputs {self.graph.inputs} and outputs "
                f"{self.graph.outputs}; expected (hidden, attention_mask) -> states"
            )

    def states(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token states after the branch's layers, (B, T, H)."""
        out: np.ndarray = self.graph.run(["states"], {"hidden": hidden, "attention_mask": mask})[0]
        return out

    def map(self, fn: Any, items: Sequence[Any]) -> Any:
        """Calls side by side on the graph's threads."""
        return self.graph.map(fn, items)


BranchRuntime = TorchBranch | OnnxBranch


def read_branch_artifact(artifact_dir: Path, embedder: TransformerEmbedder) -> dict[str, Any]:
    """The branch artifact's config, checked against the encoder; raises ArtifactError."""
    config_path = artifact_dir / "config.json"
    weights_path = artifact_dir / "branch.safetensors"
    if not config_path.exists() or not weights_path.exists():
        raise ArtifactError(
            f"sentiment artifact missing at {artifact_dir} (needs config.json and "
            "branch.safetensors); train it with `python -m pipelines train-sentiment "
            "--data ../shared/datasets/tweeteval_sentiment` or set SENTIMENT_BACKEND"
        )
    try:
        cfg: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        int(cfg["tap_layer"])
        labels = list(cfg["labels"])
    except Exception as exc:
        raise ArtifactError(f"sentiment artifact at {artifact_dir} is unreadable: {exc}") from exc
    if labels != list(SENTIMENT_LABELS):
        raise ArtifactError(f"sentiment artifact labels {labels} != {list(SENTIMENT_LABELS)}")
    check_encoder(cfg, embedder, "sentiment", artifact_dir)
    return cfg


def check_encoder(
    cfg: dict[str, Any], embedder: TransformerEmbedder, what: str, artifact_dir: Path
) -> None:
    """Raise ArtifactError when a branch artifact records other encoder weights than the
    loaded ones."""
    expected = cfg.get("encoder_sha256")
    actual = encoder_fingerprint(embedder)
    if expected and actual != expected:
        raise ArtifactError(
            f"{what} artifact at {artifact_dir} was trained on a different encoder "
            f"(sha256 {expected[:12]}..., loaded {actual[:12]}...)"
        )


def load_branch_weights(module: Any, artifact_dir: Path, what: str) -> Any:
    """`module` (eval mode) with the float16 weights of `artifact_dir/branch.safetensors`;
    raises ArtifactError when they are unreadable or of another shape."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(artifact_dir / "branch.safetensors"))
    except Exception as exc:
        raise ArtifactError(f"{what} artifact at {artifact_dir} is unreadable: {exc}") from exc
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{what} artifact at {artifact_dir} does not fit: {exc}") from exc
    return module.eval()


def load_branch_module(artifact_dir: Path, embedder: TransformerEmbedder) -> Any:
    """The fine-tuned branch as a PyTorch module (eval mode), from its safetensors."""
    cfg = read_branch_artifact(artifact_dir, embedder)
    branch = _branch_module(embedder, int(cfg["tap_layer"]), len(SENTIMENT_LABELS))
    return load_branch_weights(branch, artifact_dir, "sentiment")


def branch_weights_sha256(artifact_dir: Path) -> str:
    """sha256 of a branch artifact's weights: an exported graph records what it came from."""
    weights = artifact_dir / "branch.safetensors"
    stat = weights.stat()
    return _file_sha256(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


class BranchSentiment:
    """The project's sentiment model: a fine-tuned branch on the shared encoder pass.

    The branch's layers run on PyTorch, or on an exported ONNX graph when `runtime` is given;
    its head (one linear layer over mean-pooled states) runs here in numpy either way."""

    def __init__(
        self,
        artifact_dir: Path,
        embedder: TransformerEmbedder,
        *,
        runtime: BranchRuntime | None = None,
    ) -> None:
        from safetensors.numpy import load_file

        cfg = read_branch_artifact(artifact_dir, embedder)
        self.tap_layer: int | None = int(cfg["tap_layer"])
        if runtime is None:
            runtime = TorchBranch(load_branch_module(artifact_dir, embedder))
        self.runtime: BranchRuntime = runtime
        try:
            state = load_file(str(artifact_dir / "branch.safetensors"))
            self.head_weight = state["head.weight"].astype(np.float32)
            self.head_bias = state["head.bias"].astype(np.float32)
        except Exception as exc:
            raise ArtifactError(
                f"sentiment artifact at {artifact_dir} is unreadable: {exc}"
            ) from exc
        if self.head_weight.shape != (len(SENTIMENT_LABELS), embedder.dim):
            raise ArtifactError(
                f"sentiment artifact at {artifact_dir} does not fit: head "
                f"{self.head_weight.shape}, encoder width {embedder.dim}"
            )
        self.name = f"branch:{cfg.get('version', artifact_dir.name)}"
        # The key of this branch's states in `TapBatch.states`.
        self.state_key = self.name
        log.info(
            "sentiment artifact loaded",
            extra={
                "stage": "load",
                "path": str(artifact_dir),
                "tap_layer": self.tap_layer,
                "backend": runtime.name,
            },
        )

    def _probabilities(self, pooled: np.ndarray) -> np.ndarray:
        """Softmax of the head over mean-pooled branch states, (n, 3)."""
        logits = pooled @ self.head_weight.T + self.head_bias
        logits -= logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
        return out

    def tap_states(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The branch's token states for one batch of tapped hidden states (for
        `TransformerEmbedder.encode(tap_states=...)`, which runs it beside the encoder)."""
        return self.runtime.states(hidden, mask)

    def score(self, texts: Sequence[str], encoding: Encoding | None = None) -> list[Sentiment]:
        """Score texts from the tapped hidden states of the shared encoder pass."""
        if encoding is None or encoding.tap_layer != self.tap_layer:
            raise ValueError("BranchSentiment needs an encoding tapped at its layer")
        n = len(texts)
        spans = [sentence_spans(t) for t in texts]
        hidden_size = self.head_weight.shape[1]
        # Sums of token states per text (whole message) and per (text, sentence).
        text_sum = np.zeros((n, hidden_size), dtype=np.float32)
        text_count = np.zeros(n, dtype=np.float32)
        sent_sum = {
            i: np.zeros((len(spans[i]), hidden_size), dtype=np.float32)
            for i in range(n)
            if len(spans[i]) > 1
        }
        sent_count = {i: np.zeros(len(spans[i]), dtype=np.float32) for i in sent_sum}
        bounds = {
            i: (np.array([s for s, _ in spans[i]]), np.array([e for _, e in spans[i]]))
            for i in sent_sum
        }

        def run(tap: TapBatch) -> tuple[TapBatch, np.ndarray]:
            return tap, self.runtime.states(tap.hidden, tap.mask)

        # Batches whose branch states came with the encoder pass (`tap_states`) need no call.
        key = self.state_key
        ready = [(tap, tap.states[key]) for tap in encoding.taps if key in tap.states]
        missing = [tap for tap in encoding.taps if key not in tap.states]
        for tap, states in [*ready, *self.runtime.map(run, missing)]:
            mask = tap.mask.astype(np.float32)
            owners = [encoding.units[u].text_index for u in tap.units]
            np.add.at(text_sum, owners, (states * mask[..., None]).sum(1))
            np.add.at(text_count, owners, mask.sum(1))
            starts = tap.offsets[..., 0]
            special = (tap.offsets.sum(-1) == 0) & (tap.mask == 1)
            for row, owner in enumerate(owners):
                if owner not in sent_sum:
                    continue
                begin, end = bounds[owner]
                # Which sentence each token starts in (-1: none, or a special token).
                j = np.searchsorted(begin, starts[row], side="right") - 1
                inside = (j >= 0) & (starts[row] < end[np.maximum(j, 0)]) & ~special[row]
                inside &= tap.mask[row] == 1
                onehot = (j[None, :] == np.arange(len(begin))[:, None]) & inside[None, :]
                hits = onehot.sum(1)
                present = hits > 0
                if not present.any():
                    continue
                # Pool the sentence's tokens with [CLS] and [SEP], as in training.
                specials = states[row][special[row]].sum(0)
                sent_sum[owner] += onehot.astype(np.float32) @ states[row]
                sent_sum[owner][present] += specials
                sent_count[owner] += hits + present * float(special[row].sum())
        probs = self._probabilities(text_sum / np.maximum(text_count, 1.0)[:, None])
        sent_probs = {
            i: self._probabilities(sent_sum[i] / np.maximum(sent_count[i], 1.0)[:, None])
            for i in sent_sum
        }
        results = []
        for i in range(n):
            label, score, mapping = from_probabilities(probs[i].tolist())
            whole = Sentiment(label=label, score=score, probabilities=mapping)
            sentences = []
            if i in sent_probs:
                for j, (s, e) in enumerate(spans[i]):
                    if sent_count[i][j] == 0:
                        continue
                    s_label, s_score, _ = from_probabilities(sent_probs[i][j].tolist())
                    sentences.append(SentenceSentiment(s, e, s_label, s_score))
            results.append(with_worst_sentence(whole, sentences))
        return results


class HFSentiment:
    """Any local transformers sequence-classification model (SENTIMENT_BACKEND=hf:/path)."""

    tap_layer: int | None = None

    def __init__(self, path: Path, *, batch_size: int = 32) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        if not (path / "config.json").exists():
            raise ArtifactError(f"SENTIMENT_BACKEND hf:{path}: no config.json there")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.classifier = AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True
            ).eval()
        except Exception as exc:
            raise ArtifactError(f"SENTIMENT_BACKEND hf:{path} could not be loaded: {exc}") from exc
        self.columns = self._label_columns(self.classifier.config.id2label, path)
        limit = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512)
        self.max_tokens = limit
        self.batch_size = batch_size
        self.name = f"hf:{path.name}"

    @staticmethod
    def _label_columns(id2label: dict[int, str], path: Path) -> list[int | None]:
        """Which output column is negative, neutral and positive (neutral may be absent)."""
        columns: list[int | None] = []
        for wanted in ("neg", "neu", "pos"):
            found = [int(i) for i, name in id2label.items() if str(name).lower().startswith(wanted)]
            columns.append(found[0] if found else None)
        if columns[0] is None or columns[2] is None:
            raise ArtifactError(
                f"SENTIMENT_BACKEND hf:{path}: cannot map labels {dict(id2label)} to "
                "negative/neutral/positive; name them so in config.id2label"
            )
        return columns

    def _probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 3) probabilities for texts that fit the model."""
        torch = self._torch
        out = np.zeros((len(texts), 3), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                probs = torch.softmax(self.classifier(**batch).logits, -1).numpy()
                for row, i in enumerate(idx):
                    out[i] = [probs[row, c] if c is not None else 0.0 for c in self.columns]
        return out / out.sum(axis=1, keepdims=True)

    def score(self, texts: Sequence[str], encoding: Encoding | None = None) -> list[Sentiment]:
        """Chunk long texts to the model's limit, score chunks and sentences, combine."""
        pieces: list[str] = []
        owner: list[tuple[int, int | None, int]] = []  # (text, sentence or None, tokens)
        spans_all = []
        for i, text in enumerate(texts):
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
            for s, e in token_chunks(text, offsets, self.max_tokens - 2) or [(0, len(text))]:
                pieces.append(text[s:e])
                owner.append((i, None, max(1, len(text[s:e]))))
            spans = sentence_spans(text)
            spans_all.append(spans)
            if len(spans) > 1:
                for j, (s, e) in enumerate(spans):
                    pieces.append(text[s:e])
                    owner.append((i, j, 1))
        probs = self._probabilities(pieces) if pieces else np.zeros((0, 3))
        whole = np.zeros((len(texts), 3))
        weight = np.zeros(len(texts))
        sentences: list[list[SentenceSentiment]] = [[] for _ in texts]
        for (i, sentence, w), p in zip(owner, probs, strict=True):
            if sentence is None:
                whole[i] += w * p
                weight[i] += w
            else:
                s, e = spans_all[i][sentence]
                label, score, _ = from_probabilities(p)
                sentences[i].append(SentenceSentiment(s, e, label, score))
        results = []
        for i in range(len(texts)):
            label, score, mapping = from_probabilities(whole[i] / max(weight[i], 1e-9))
            results.append(with_worst_sentence(Sentiment(label, score, mapping), sentences[i]))
        return results


SentimentBackend = VaderScorer | BranchSentiment | HFSentiment


def load_sentiment_scorer(
    backend: str,
    *,
    embedder: TransformerEmbedder | None = None,
    artifact_dir: Path | None = None,
    branch_runtime: BranchRuntime | None = None,
) -> SentimentBackend:
    """The scorer named by the SENTIMENT_BACKEND setting (`branch_runtime`: where the branch's
    layers run; PyTorch when None)."""
    if backend == "vader":
        return VaderScorer()
    if backend == "branch":
        if embedder is None or artifact_dir is None:
            raise ValueError(
                "the branch sentiment backend needs the embedder and SENTIMENT_ARTIFACT"
            )
        return BranchSentiment(artifact_dir, embedder, runtime=branch_runtime)
    if backend.startswith("hf:"):
        return HFSentiment(Path(backend[3:]).expanduser())
    if backend == "analysis":
        raise ValueError(
            "SENTIMENT_BACKEND=analysis is built by app.nlp.loader.load_analyzer (one branch "
            "serves sentiment and UX/CX)"
        )
    raise ValueError(
        f"unknown SENTIMENT_BACKEND {backend!r}; available: analysis, branch, vader, hf:/path"
    )
