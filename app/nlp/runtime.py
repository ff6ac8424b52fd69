"""Where the encoder's (and the sentiment branch's) layers run: PyTorch or ONNX Runtime.

Picked by ENCODER_BACKEND:
- `torch`: the packaged weights in PyTorch fp32, batches of up to 32 texts sorted by length.
- `onnx`: the same graph exported to ONNX, fp32, in ONNX Runtime.
- `onnx-int8`: that graph with int8 weights (per output channel) and activations quantised
  to uint8 per token as it runs, after SmoothQuant-style rescaling, with a few outlier input
  channels per layer in fp32 (`pipelines/export_onnx.py`). On a CPU without VNNI the weights
  are loaded as uint8 (`unsigned_weights`), so the integer sums are exact there too.

ONNX Runtime runs calls of up to 8 texts of similar length (`ONNX_PLAN`), each call on one
thread, `ENCODER_THREADS` calls side by side: int8 activations are quantised per token, so a
text's answer does not depend on which texts share its call, and small single-threaded calls
on two cores beat larger padded batches (see `ONNX_PLAN`). A lone text (triage) runs on one
thread too: that is faster than two.

Memory: ONNX Runtime's outputs are numpy views of buffers in its CPU memory arena, and the
encoder's callers keep a batch's token states (for sentiment and evidence) until the batch is
analysed, so the arena grows to the largest batch held and, left alone, never shrinks (30 texts of
20,000 characters: 1.1 GB kept after the batch). The arena stays on, because reusing it is what
makes a flood fast (without it, freed buffers went back to the system and were faulted in again:
2.8 times the page faults and 15-20% more CPU per long ticket); `release_memory` hands it back
when the caller is idle: one tiny run per graph with arena shrinkage, then glibc's malloc_trim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger("app.nlp.runtime")

ENCODER_BACKENDS = ("torch", "onnx", "onnx-int8")
# The file of each ONNX backend inside the artifact folder: the encoder, and each trained
# branch that runs on the encoder's hidden states (the sentiment branch of
# `models/sentiment`, the analysis branch of `models/analysis`).
ONNX_FILES: dict[str, dict[str, str]] = {
    "onnx": {
        "encoder": "encoder.fp32.onnx",
        "sentiment": "sentiment-branch.fp32.onnx",
        "analysis": "analysis-branch.fp32.onnx",
    },
    "onnx-int8": {
        "encoder": "encoder.int8.onnx",
        "sentiment": "sentiment-branch.int8.onnx",
        "analysis": "analysis-branch.int8.onnx",
    },
}
BRANCHES = ("sentiment", "analysis")
# Texts per ONNX call, and rows x longest row. Measured on 2,000 support tweets with the int8
# encoder, two calls side by side: 537 texts/s one text per call, 900-1,000 with this plan or
# with 16 texts (the same within this machine's noise), 833 with 32 (more padding).
ONNX_PLAN = (8, 1024)
T = TypeVar("T")
R = TypeVar("R")


class RuntimeArtifactError(RuntimeError):
    """An ONNX artifact that is missing, corrupt, unchecked or made from other weights."""


def cpu_threads(threads: int) -> int:
    """`threads`, or one per core this process may use when 0."""
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """How many texts (and padded tokens) one forward call may take."""

    max_texts: int
    max_tokens: int  # rows x longest row; 0: no limit beyond max_texts

    def split(self, lengths: Sequence[int]) -> list[list[int]]:
        """Positions 0..n-1 of `lengths` (sorted ascending) cut into consecutive batches."""
        batches: list[list[int]] = []
        current: list[int] = []
        for k, n in enumerate(lengths):
            too_many = len(current) >= self.max_texts
            too_long = self.max_tokens and current and (len(current) + 1) * n > self.max_tokens
            if current and (too_many or too_long):
                batches.append(current)
                current = []
            current.append(k)
        if current:
            batches.append(current)
        return batches


def _load_libc() -> Any:
    """glibc, when this process runs on it (malloc_trim is a glibc extension)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


# Every ONNX graph loaded in this process, so that `release_memory` can shrink their arenas.
_GRAPHS: weakref.WeakSet[OnnxGraph] = weakref.WeakSet()
_GRAPHS_LOCK = threading.Lock()


def release_memory() -> int:
    """Give back to the system what the analysers no longer use; returns how many ONNX arenas
    were shrunk. Call it when idle: what a batch kept in ONNX Runtime's arenas (every buffer
    no longer in use) and in glibc's free lists (the encoder threads' heaps above all, which
    glibc otherwise keeps) is released, and the next batch faults in what it needs again.
    About 20 ms; safe beside other threads' runs (only free memory is released)."""
    with _GRAPHS_LOCK:
        graphs = list(_GRAPHS)
    for graph in graphs:
        graph.shrink_arena()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return len(graphs)


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies u8 x s8 with VNNI (int32 sums, exact). Without it ONNX
    Runtime uses AVX2's VPMADDUBSW, which saturates pairs of products at 16 bits; unknown
    (not Linux) counts as without."""
    try:
        flags = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags) is not None


def unsigned_weights(model: Any) -> int:
    """Store every int8 weight of `model`'s MatMulIntegerToFloat nodes as uint8 with zero
    point 128, in place; returns how many. ONNX Runtime then multiplies u8 x u8 through 16-bit
    products that cannot saturate, so the integer sums are the exact ones VNNI gives."""
    from onnx import TensorProto, numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    zero = "u8_weight_zero_point"
    done: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "MatMulIntegerToFloat" or len(node.input) < 2:
            continue
        w = weights.get(node.input[1])
        if w is None or (w.data_type != TensorProto.INT8 and w.name not in done):
            continue
        if len(node.input) > 5 and node.input[5]:
            continue  # a weight zero point of its own: not this project's rewrite
        if w.name not in done:
            levels = numpy_helper.to_array(w).astype(np.int16) + 128
            w.CopyFrom(numpy_helper.from_array(levels.astype(np.uint8), w.name))
            done.add(w.name)
        while len(node.input) < 5:
            node.input.append("")
        node.input.append(zero)
    if done:
        model.graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), zero))
    return len(done)


class OnnxGraph:
    """One ONNX graph in one single-threaded session, called from `threads` threads at once.

    Measured on the int8 encoder, one short text: 2.4 ms p50 on one thread, 3.2 ms on two
    (waking the second thread for every operator costs more than it saves), so a lone text
    (triage) also runs on one thread, and several texts run side by side."""

    def __init__(self, path: Path, *, threads: int, vnni: bool | None = None) -> None:
        import onnxruntime as ort

        self.path = path
        self.unsigned_weights = 0
        source: str | bytes = str(path)
        if not (has_vnni() if vnni is None else vnni):
            source = self._without_saturation(path)
        self.threads = cpu_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                source, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise RuntimeArtifactError(f"ONNX graph {path} could not be loaded: {exc}") from exc
        self.inputs = [i.name for i in self._session.get_inputs()]
        self.outputs = [o.name for o in self._session.get_outputs()]
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx")
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        with _GRAPHS_LOCK:
            _GRAPHS.add(self)

    def _without_saturation(self, path: Path) -> str | bytes:
        """The graph with unsigned weights (see `unsigned_weights`) when it has int8 ones."""
        import onnx

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # a corrupt file: let ONNX Runtime name the problem
            log.debug("onnx could not parse the graph", extra={"stage": "load", "error": str(exc)})
            return str(path)
        self.unsigned_weights = unsigned_weights(model)
        if not self.unsigned_weights:
            return str(path)
        log.info(
            "int8 weights run as uint8: this CPU has no VNNI, and u8 x s8 would saturate",
            extra={"stage": "load", "path": str(path), "weights": self.unsigned_weights},
        )
        data: bytes = model.SerializeToString()
        return data

    def run(self, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[Any]:
        """Run the graph on the calling thread."""
        result: list[Any] = self._session.run(list(outputs), feeds)
        return result

    def shrink_arena(self) -> None:
        """Free the arena's unused memory: a one-token run whose end shrinks the arena (ONNX
        Runtime frees every region no live buffer is in)."""
        feeds: dict[str, np.ndarray] = {}
        for spec in self._session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
            dtype = np.int64 if spec.type == "tensor(int64)" else np.float32
            feeds[spec.name] = np.ones(shape, dtype=dtype)
        self._session.run(self.outputs[:1], feeds, self._shrink)

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """`fn(item)` for every item: a lone one on the calling thread, several in the pool
        (ONNX Runtime releases the GIL while it computes)."""
        if len(items) == 1 or self.threads == 1:
            return iter([fn(item) for item in items])
        return self._pool.map(fn, items)


class TorchEncoder:
    """The encoder in PyTorch: sequential batches, PyTorch's own threads."""

    name = "torch"

    def __init__(
        self, path: Path, *, threads: int, batch_size: int, attn_implementation: str | None
    ) -> None:
        import torch
        from transformers import AutoModel

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        kwargs: dict[str, Any] = (
            {"attn_implementation": attn_implementation} if attn_implementation else {}
        )
        self.module = AutoModel.from_pretrained(str(path), **kwargs).eval()
        self.plan = BatchPlan(max_texts=batch_size, max_tokens=0)

    def forward(
        self, input_ids: np.ndarray, mask: np.ndarray, layers: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """Hidden states of `layers` (0 = embeddings output), each (B, T, H) float32."""
        torch = self._torch
        last = int(self.module.config.num_hidden_layers)
        with torch.inference_mode():
            result = self.module(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(mask),
                output_hidden_states=any(layer != last for layer in layers),
            )
        return {
            layer: (
                result.last_hidden_state if layer == last else result.hidden_states[layer]
            ).numpy()
            for layer in layers
        }

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterable[R]:
        """Batches one after another: PyTorch spreads each over the cores itself."""
        return (fn(item) for item in items)


class OnnxEncoder:
    """The encoder exported to ONNX (`hidden_0` .. `hidden_N` outputs), a few texts per call."""

    def __init__(self, path: Path, *, name: str, threads: int, layers: int) -> None:
        self.name = name
        self.graph = OnnxGraph(path, threads=threads)
        wanted = ["input_ids", "attention_mask"]
        missing = [
            f"hidden_{k}" for k in range(layers + 1) if f"hidden_{k}" not in self.graph.outputs
        ]
        if self.graph.inputs != wanted or missing:
            raise RuntimeArtifactError(
                f"ONNX encoder {path} has inputs {self.graph.inputs} and outputs "
                f"{self.graph.outputs}; expected inputs {wanted} and hidden_0..hidden_{layers}"
            )
        self.plan = BatchPlan(*ONNX_PLAN)

    def forward(
        self, input_ids: np.ndarray, mask: np.ndarray, layers: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """Hidden states of `layers`, each (B, T, H) float32."""
        values = self.graph.run(
            [f"hidden_{layer}" for layer in layers],
            {"input_ids": input_ids, "attention_mask": mask},
        )
        return dict(zip(layers, values, strict=True))

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """Calls side by side on the graph's threads."""
        return self.graph.map(fn, items)


EncoderRuntime = TorchEncoder | OnnxEncoder


@dataclass(frozen=True, slots=True)
class OnnxArtifact:
    """A checked ONNX artifact folder: its config and the graphs of one precision."""

    folder: Path
    backend: str
    config: dict[str, Any]
    encoder: Path
    # The branch graphs the folder has for this precision, by name ("sentiment", "analysis").
    branches: dict[str, Path]

    @property
    def branch(self) -> Path | None:
        """The sentiment branch's graph, when the folder has one."""
        return self.branches.get("sentiment")

    @property
    def version(self) -> str:
        """The artifact's version (its folder name unless the config says)."""
        return str(self.config.get("version", self.folder.name))


def open_artifact(
    folder: Path, backend: str, *, encoder_sha256: str, require_check: bool
) -> OnnxArtifact:
    """Check an ONNX artifact folder before loading it; raises RuntimeArtifactError saying why.

    Checked: config.json readable, made from these encoder weights, each graph file present
    with the sha256 recorded at export (a truncated or altered file fails here), and, when
    `require_check`, the export's quality check passed."""
    if backend not in ONNX_FILES:
        raise ValueError(f"{backend!r} is not an ONNX backend")
    rebuild = f"build it with `python -m pipelines export-onnx --out {folder}" + (
        " --precision fp32`" if backend == "onnx" else "`"
    )
    config_path = folder / "config.json"
    if not config_path.exists():
        raise RuntimeArtifactError(f"no ONNX artifact at {folder} (config.json missing); {rebuild}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        files = dict(config["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeArtifactError(f"ONNX artifact {config_path} is unreadable: {exc}") from exc
    made_from = config.get("encoder_sha256")
    if made_from != encoder_sha256:
        raise RuntimeArtifactError(
            f"ONNX artifact at {folder} was exported from other encoder weights "
            f"(sha256 {str(made_from)[:12]}..., loaded {encoder_sha256[:12]}...); {rebuild}"
        )
    paths: dict[str, Path] = {}
    for role, name in ONNX_FILES[backend].items():
        path = folder / name
        expected = files.get(name)
        if expected is None and role != "encoder":
            continue  # a folder need not hold every branch
        if expected is None or not path.exists():
            raise RuntimeArtifactError(f"ONNX artifact at {folder}: {name} missing; {rebuild}")
        actual = sha256_file(path)
        if actual != expected.get("sha256"):
            raise RuntimeArtifactError(
                f"ONNX artifact at {folder}: {name} is corrupt (sha256 {actual[:12]}..., "
                f"recorded {str(expected.get('sha256'))[:12]}...); {rebuild}"
            )
        paths[role] = path
    check = config.get("check", {}).get(backend, {})
    if require_check and not check.get("passed"):
        raise RuntimeArtifactError(
            f"ONNX artifact at {folder}: {backend} has not passed its quality check "
            f"({check or 'none recorded'})"
        )
    encoder = paths.pop("encoder")
    return OnnxArtifact(folder, backend, config, encoder, paths)
