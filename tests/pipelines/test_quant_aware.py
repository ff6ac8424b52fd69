"""Quantisation-aware distillation: it simulates the int8 graph's rounding, and it trains."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.nlp.runtime import OnnxGraph
from pipelines import quant_aware
from pipelines.export_onnx import quantize
from pipelines.train_uxcx import stable_bucket
from tests.pipelines.test_export_quantize import _linear_graph


def test_simulated_rounding_is_the_int8_graphs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((32, 12)) * 0.2).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    _linear_graph(tmp_path / "plain.onnx", w, b)
    quantize(tmp_path / "plain.onnx", tmp_path / "int8.onnx")
    x = rng.standard_normal((2, 4, 32)).astype(np.float32)
    x[0, 1] *= 30.0
    graph = OnnxGraph(tmp_path / "int8.onnx", threads=1)
    got = graph.run(["y"], {"x": x, "attention_mask": np.ones((2, 4), np.int64)})[0]

    lin = torch.nn.Linear(32, 12)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.T))
        lin.bias.copy_(torch.from_numpy(b))
    holder = torch.nn.Sequential(lin)
    swapped = quant_aware.simulate_int8(holder)
    assert not isinstance(holder[0], torch.nn.Linear)
    simulated = holder(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(simulated, got, rtol=1e-5, atol=1e-4)
    # Plain fp32 is measurably further from the graph than the simulation.
    plain = x @ w + b
    assert np.abs(plain - got).max() > 20 * np.abs(simulated - got).max()
    quant_aware.restore(swapped)
    assert holder[0] is lin


def test_gradients_pass_straight_through_the_rounding() -> None:
    x = torch.linspace(-1, 1, 12).reshape(2, 6).requires_grad_(True)
    quant_aware.fake_quant_rows(x).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, torch.ones_like(x))


def test_training_texts_hold_out_a_quarter_of_the_tweets(tmp_path: Path) -> None:
    tweets = [f"my order number {k} has not arrived" for k in range(40)]
    for name, texts in (("tweets.csv", tweets + tweets[:5]), ("banking.csv", ["card declined"])):
        with (tmp_path / name).open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, ["text"])
            writer.writeheader()
            writer.writerows({"text": t} for t in texts)
    got = quant_aware.training_texts(
        fixtures_train=["the app crashes"],
        banking_train=tmp_path / "banking.csv",
        tweets=tmp_path / "tweets.csv",
    )
    kept = [t for t in tweets if stable_bucket(t, quant_aware.TWEET_BUCKETS) != 0]
    assert 0 < len(kept) < len(tweets)
    assert sorted(got) == sorted(kept + ["card declined", "the app crashes"])
    assert got == quant_aware.training_texts(
        fixtures_train=["the app crashes"],
        banking_train=tmp_path / "banking.csv",
        tweets=tmp_path / "tweets.csv",
    )


def test_distillation_brings_the_rounded_student_closer_to_its_teacher() -> None:
    from transformers import BertConfig, BertModel

    from app.nlp.embedder import TransformerEmbedder

    torch.manual_seed(0)
    tokenizer = TransformerEmbedder().tokenizer
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip

    class Graph(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: Any, mask: Any) -> Any:
            return self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)[
                "hidden_states"
            ]

    teacher = Graph(BertModel(config).eval())
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # start away from the teacher, further than rounding alone would
        for m in student.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.add_(0.05 * torch.randn_like(m.weight))
    texts = [f"ticket {k}: the {w} is broken" for k in range(64) for w in ("app", "card")]
    result = quant_aware.distil(
        student, teacher, tokenizer, texts, tap=1, steps=40, batch_size=8,
        learning_rate=1e-3, progress=False,
    )  # fmt: skip
    assert result["steps"] == 40
    assert result["loss_last"] < 0.8 * result["loss_first"]
    # The plain layers are back, trained, and no longer need gradients.
    assert all(not p.requires_grad for n, p in student.named_parameters() if "word_emb" not in n)
    linears = [m for m in student.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 6 + 1  # six per layer, and the pooler
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(student.parameters(), teacher.parameters(), strict=True)
    )
    assert changed


def test_branch_distillation_brings_the_rounded_branch_closer_to_its_heads() -> None:
    from app.nlp.analysis import build_module
    from app.nlp.embedder import TransformerEmbedder

    torch.manual_seed(0)
    embedder = TransformerEmbedder()
    teacher = build_module(embedder, 3).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # start away from the teacher, further than rounding alone would
        for m in student.layers.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.add_(0.02 * torch.randn_like(m.weight))
    head_names = ("sentiment", "problem", "problem_sentiment", "uxcx", "subcategory")

    def heads_of(module: Any) -> dict[str, torch.Tensor]:
        return {
            f"{h}.{k}": v.clone()
            for h in head_names
            for k, v in getattr(module, h).state_dict().items()
        }

    heads_before = heads_of(student)
    texts = [f"ticket {k}: the {w} is broken" for k in range(32) for w in ("app", "card")]
    result = quant_aware.distil_branch(
        student, teacher, embedder, texts, tap=3, steps=30, batch_size=8,
        learning_rate=1e-4, progress=False,
    )  # fmt: skip
    assert result["steps"] == 30 and result["texts"] == len(texts)
    assert result["loss_last"] < 0.8 * result["loss_first"]
    # Only the layers trained; the heads keep the artifact's weights, nothing needs gradients.
    after = heads_of(student)
    assert all(torch.equal(heads_before[k], after[k]) for k in after)
    assert not any(p.requires_grad for p in student.layers.parameters())
    assert len([m for m in student.layers.modules() if isinstance(m, torch.nn.Linear)]) == 18
