"""The int8 rewrite of `pipelines/export_onnx.py` on a small graph: per-token math, exactly,
on any CPU (with VNNI, and without it, where the service stores the weights unsigned)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.nlp.runtime import OnnxGraph, has_vnni
from pipelines.export_onnx import merge_duplicates, quantize


def _linear_graph(path: Path, w: np.ndarray, b: np.ndarray) -> None:
    """x (B, T, K) -> x @ w + b, with the (B, T) attention mask the rewrite takes shapes from."""
    k = w.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", k]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("vnni", [None, False], ids=["this-cpu", "no-vnni"])
def test_per_token_int8_matches_its_definition(tmp_path: Path, vnni: bool | None) -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 24)) * 0.1).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    _linear_graph(tmp_path / "plain.onnx", w, b)
    quantize(tmp_path / "plain.onnx", tmp_path / "int8.onnx")
    # As the service loads it: on a CPU without VNNI the weights become unsigned, because
    # AVX2's u8 x s8 products saturate (these random levels do, by up to 0.08 here).
    session = OnnxGraph(tmp_path / "int8.onnx", threads=1, vnni=vnni)
    assert session.unsigned_weights == (0 if has_vnni() and vnni is None else 1)

    x = rng.standard_normal((3, 5, 64)).astype(np.float32)
    x[1, 2] *= 40.0  # one loud token: per-token ranges keep it from flattening the others
    got = session.run(["y"], {"x": x, "attention_mask": np.ones((3, 5), np.int64)})[0]

    # The definition: weights int8 per output column, each token's row uint8 with its own scale.
    w_scale = np.abs(w).max(axis=0) / 127.0
    w_levels = np.clip(np.round(w / w_scale), -127, 127)
    rows = x.reshape(-1, 64)
    x_scale = np.abs(rows).max(axis=1, keepdims=True) / 127.0
    x_levels = np.clip(np.round(rows / x_scale), -127, 127)
    want = ((x_levels @ w_levels) * x_scale * w_scale + b).reshape(3, 5, 24)
    assert got.shape == (3, 5, 24)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-4)
    # And close to the fp32 layer, the loud token included.
    assert np.abs(got - (x @ w + b)).max() < 0.05 * np.abs(x @ w + b).max()
    # A token's answer is its own: the same row alone gives the same numbers.
    alone = session.run(["y"], {"x": x[:1, :1], "attention_mask": np.ones((1, 1), np.int64)})[0]
    assert np.array_equal(alone[0, 0], got[0, 0])


def test_graph_without_the_mask_input_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "no-mask",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="attention_mask"):
        quantize(tmp_path / "plain.onnx", tmp_path / "int8.onnx")


def test_vnni_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n", encoding="utf-8")
    assert has_vnni(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse2 avx avx2 fma\n", encoding="utf-8")
    assert not has_vnni(cpuinfo)
    assert not has_vnni(tmp_path / "missing")


def test_equal_nodes_are_merged_and_their_input_quantised_once(tmp_path: Path) -> None:
    """Query, key and value each select the same channels of one input: one Gather and one
    QuantizeLinear serve all three after the rewrite."""
    rng = np.random.default_rng(1)
    nodes, inits = [], []
    for name in ("q", "k", "v"):
        inits += [
            numpy_helper.from_array(np.arange(1, 7, dtype=np.int64), f"{name}.lo"),
            numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), f"{name}.w"),
        ]
        nodes += [
            helper.make_node("Gather", ["x", f"{name}.lo"], [f"{name}.x"], axis=2),
            helper.make_node("MatMul", [f"{name}.x", f"{name}.w"], [name]),
        ]
    graph = helper.make_graph(
        nodes,
        "qkv",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 8]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("q", "k", "v")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "plain.onnx"))
    plain = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    feeds = {"x": x, "attention_mask": np.ones((2, 3), np.int64)}
    want = plain.run(["q", "k", "v"], feeds)

    merged = onnx.load(str(tmp_path / "plain.onnx"))
    merge_duplicates(merged.graph)
    assert [n.op_type for n in merged.graph.node].count("Gather") == 1
    assert len([i for i in merged.graph.initializer if i.name.endswith(".lo")]) == 1
    quantize(tmp_path / "plain.onnx", tmp_path / "int8.onnx")
    int8 = onnx.load(str(tmp_path / "int8.onnx"))
    assert [n.op_type for n in int8.graph.node].count("QuantizeLinear") == 1
    got = OnnxGraph(tmp_path / "int8.onnx", threads=1).run(["q", "k", "v"], feeds)
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w).max() < 0.02 * np.abs(w).max()
