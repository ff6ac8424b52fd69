"""Quantisation-aware distillation of the int8 encoder (a step of `export-onnx`).

The exported int8 graph rounds every weight to 255 levels per output channel and every
activation to 255 levels per token. Here those same roundings are simulated in PyTorch (fake
quantisation, with straight-through gradients) on the rescaled encoder that is about to be
exported, and its weights are trained so that the rounded encoder gives what PyTorch fp32
gives: the loss is the cosine distance of the sentence embeddings plus the relative error of
the hidden states the sentiment branch reads. The teacher is the packaged encoder itself, so no
label is involved and the embedding space stays the one every stored vector lives in.

Texts: the Banking77 training split, the UX/CX fixtures' training split and three quarters of
the support tweets (`stable_bucket(text, 4) != 0`; `bench/encoder.py` measures on the rest),
less every tweet of the analysis branch's dev split (`held_out_texts`).
Seeded; on the 2-core machine 800 steps take 9 to 10 minutes (400 took 13 on an AVX2-only one).
"""

from __future__ import annotations

import csv
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("pipelines.quant_aware")

STEPS = 800
BATCH = 32
LEARNING_RATE = 2e-5
MAX_TOKENS = 128  # training texts are cut here; the service's limit is 256
TAP_WEIGHT = 1.0
TWEET_BUCKETS = 4  # support tweets in bucket 0 are held out for bench/encoder.py


def fake_quant_rows(x: Any) -> Any:
    """x rounded as the int8 graph rounds it: 255 levels per row (last axis), symmetric;
    the gradient passes straight through."""
    import torch

    s = x.detach().abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127.0
    q = torch.round(x / s).clamp(-127, 127) * s
    return x + (q - x).detach()


def _fake_quant_linear(lin: Any) -> Any:
    import torch

    class FakeQuantLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: Any) -> Any:
            # torch keeps the weight as (out, in): its rows are the graph's output channels.
            w = fake_quant_rows(self.lin.weight)
            return torch.nn.functional.linear(fake_quant_rows(x), w, self.lin.bias)

    return FakeQuantLinear()


def simulate_int8(module: Any) -> list[tuple[Any, str, Any]]:
    """Replace every nn.Linear in `module` with its fake-quantised twin (same parameters);
    returns what `restore` needs to put the plain layers back."""
    import torch

    swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, _fake_quant_linear(child))
                swapped.append((parent, name, child))
    return swapped


def restore(swapped: Sequence[tuple[Any, str, Any]]) -> None:
    """Undo `simulate_int8`: the plain nn.Linear layers, with their trained weights."""
    for parent, name, child in swapped:
        setattr(parent, name, child)


def held_out_texts(datasets: Path) -> set[str]:
    """Texts of the analysis branch's real-text dev split (`pipelines.analysis_data.is_dev`):
    no step of any training, this one included, may see them."""
    from pipelines.analysis_data import is_dev, read_real_messages

    if not datasets.exists():
        return set()
    return {m.text.strip() for m in read_real_messages(datasets).values() if is_dev(m)}


def training_texts(
    *,
    fixtures_train: Sequence[str],
    banking_train: Path,
    tweets: Path,
    exclude: set[str] | None = None,
) -> list[str]:
    """The distillation texts (see the module docstring), deduplicated and shuffled (seed 0);
    none of `exclude`."""
    from pipelines.train_uxcx import stable_bucket

    texts = list(fixtures_train)
    for path, held_out in ((banking_train, None), (tweets, TWEET_BUCKETS)):
        if not path.exists():
            log.warning("distillation texts missing", extra={"stage": "qat", "path": str(path)})
            continue
        with path.open(encoding="utf-8") as f:
            rows = [row.get("text", "").strip() for row in csv.DictReader(f)]
        texts += [t for t in rows if t and (held_out is None or stable_bucket(t, held_out) != 0)]
    out = sorted(set(texts) - (exclude or set()))
    random.Random(0).shuffle(out)
    return out


def _batches(texts: list[str], size: int, seed: int) -> Iterator[list[str]]:
    """Endless batches of similar length (sorted within windows of 50 batches)."""
    rng = random.Random(seed)
    order = list(texts)
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - size + 1, size * 50):
            window = sorted(order[start : start + size * 50], key=len)
            chunks = [window[i : i + size] for i in range(0, len(window) - size + 1, size)]
            rng.shuffle(chunks)
            yield from chunks


def _pool(hidden: Any, mask: Any) -> Any:
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def _train_rounded(
    rounded: Any,
    trainable: Callable[[], list[Any]],
    loss_of: Callable[[Any], Any],
    *,
    modules: Sequence[Any],
    tokenizer: Any,
    texts: list[str],
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    progress: bool,
    desc: str,
) -> dict[str, Any]:
    """The distillation loop both distillations share: `rounded`'s linear layers get int8
    rounding simulated, the parameters `trainable()` returns are trained with AdamW (linear
    warm-up over 5% of the steps, then linear decay) on `loss_of(tokenised batch)`, and the
    plain layers are put back, trained, needing no gradients. `modules` run in eval mode."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    swapped = simulate_int8(rounded)
    # Dropout stays off: the student must match the teacher's inference, not regularise.
    for module in modules:
        module.eval()
    params = trainable()
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps)
    )
    batches = _batches(texts, batch_size, seed)
    start = time.perf_counter()
    first = last = 0.0
    bar = tqdm(range(steps), desc=desc, disable=None if progress else True)
    try:
        for step in bar:
            batch = tokenizer(
                next(batches), padding=True, truncation=True, max_length=MAX_TOKENS,
                return_tensors="pt",
            )  # fmt: skip
            loss = loss_of(batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            value = float(loss.detach())
            first = value if step == 0 else first
            last = value if step == 0 else 0.95 * last + 0.05 * value
            bar.set_postfix(loss=f"{last:.4f}")
    finally:
        restore(swapped)
        for p in params:
            p.requires_grad_(False)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_tokens": MAX_TOKENS,
        "texts": len(texts),
        "loss_first": round(first, 4),
        "loss_last": round(last, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


def distil(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    tap: int,
    steps: int = STEPS,
    batch_size: int = BATCH,
    learning_rate: float = LEARNING_RATE,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `student` (ids, mask -> hidden states, about to be quantised) in place so that,
    rounded as int8, it gives `teacher`'s embeddings and tap-layer states."""
    import torch

    def loss_of(batch: Any) -> Any:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            want = teacher(ids, mask)
        got = student(ids, mask)
        cosine = (_pool(got[-1], mask) * _pool(want[-1], mask)).sum(-1)
        m = mask.unsqueeze(-1).to(got[tap].dtype)
        tap_error = ((got[tap] - want[tap]) ** 2 * m).sum() / (want[tap] ** 2 * m).sum()
        return 100 * ((1 - cosine).mean() + TAP_WEIGHT * tap_error)

    result = _train_rounded(
        student,
        lambda: [p for n, p in student.named_parameters() if "word_embeddings" not in n],
        loss_of,
        modules=(student, teacher), tokenizer=tokenizer, texts=texts, steps=steps,
        batch_size=batch_size, learning_rate=learning_rate, seed=seed, progress=progress,
        desc="int8 distillation",
    )  # fmt: skip
    log.info("distilled", extra={"stage": "qat", **result})
    return result


BRANCH_STEPS = 300
BRANCH_LEARNING_RATE = 1e-5


def distil_branch(
    student: Any,
    teacher: Any,
    embedder: Any,
    texts: list[str],
    *,
    tap: int,
    steps: int = BRANCH_STEPS,
    batch_size: int = BATCH,
    learning_rate: float = BRANCH_LEARNING_RATE,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the rescaled analysis branch `student` (about to be quantised) in place so that,
    with its layers rounded as int8, its heads give what `teacher` (the fp32 artifact) gives.

    Inputs are the packaged encoder's layer-`tap` states of `texts`; the loss is the squared
    error of every head's logits (each head divided by the spread of the teacher's) plus the
    relative error of the pooled states. Only the branch's layers are rounded and trained: the
    heads run in fp32 at serving time and keep the artifact's weights."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    encoder = embedder.encoder

    def pooled(module: Any, hidden: Any, mask: Any) -> Any:
        states = module.tokens(hidden, mask)
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1)

    def loss_of(batch: Any) -> Any:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            hidden = encoder.embeddings(input_ids=ids, token_type_ids=batch["token_type_ids"])
            attention = create_bidirectional_mask(
                config=encoder.config, inputs_embeds=hidden, attention_mask=mask
            )
            for block in encoder.encoder.layer[:tap]:
                hidden = block(hidden, attention)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            want_pooled = pooled(teacher, hidden, mask)
            want = teacher.heads(want_pooled)
        got_pooled = pooled(student, hidden, mask)
        got = student.heads(got_pooled)
        loss = ((got_pooled - want_pooled) ** 2).sum() / (want_pooled**2).sum()
        for head, value in want.items():
            spread = value.detach().std().clamp(min=1e-3)
            loss = loss + (((got[head] - value) / spread) ** 2).mean()
        return loss

    result = _train_rounded(
        student.layers,
        lambda: list(student.layers.parameters()),
        loss_of,
        modules=(student, teacher), tokenizer=embedder.tokenizer, texts=texts, steps=steps,
        batch_size=batch_size, learning_rate=learning_rate, seed=seed, progress=progress,
        desc="int8 branch distillation",
    )  # fmt: skip
    log.info("branch distilled", extra={"stage": "qat", **result})
    return result
