"""Build the analysers named in settings, once per process."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from app.core.config import Settings
from app.nlp.analysis import AnalysisBranch
from app.nlp.analysis import weights_sha256 as analysis_weights_sha256
from app.nlp.analyzer import Analyzer
from app.nlp.embedder import TransformerEmbedder, packaged_encoder_path
from app.nlp.language import LanguageDetector
from app.nlp.runtime import OnnxArtifact, OnnxEncoder, RuntimeArtifactError, open_artifact
from app.nlp.sentiment import (
    BranchRuntime,
    OnnxBranch,
    branch_weights_sha256,
    encoder_fingerprint,
    load_sentiment_scorer,
    weights_fingerprint,
)
from app.nlp.uxcx import load_uxcx_classifier

log = logging.getLogger("app.nlp")


def _branch_backends(settings: Settings) -> dict[str, Path]:
    """The trained branches the analysers in settings need, with their artifact folders."""
    wanted: dict[str, Path] = {}
    if settings.sentiment_backend == "branch":
        wanted["sentiment"] = Path(settings.sentiment_artifact)
    if "analysis" in (settings.sentiment_backend, settings.uxcx_backend):
        wanted["analysis"] = Path(settings.analysis_artifact)
    return wanted


def _onnx_runtimes(
    settings: Settings, backend: str
) -> tuple[OnnxEncoder, dict[str, BranchRuntime]]:
    """The ONNX encoder and the ONNX graph of every trained branch the analysers need;
    raises RuntimeArtifactError (or ArtifactError) saying what is wrong with the artifact."""
    weights = Path(settings.embedder_path) if settings.embedder_path else packaged_encoder_path()
    artifact: OnnxArtifact = open_artifact(
        settings.onnx_artifact,
        backend,
        encoder_sha256=weights_fingerprint(weights),
        require_check=True,
    )
    layers = int(json.loads((weights / "config.json").read_text())["num_hidden_layers"])
    threads = settings.encoder_threads
    encoder = OnnxEncoder(
        artifact.encoder, name=f"{backend}:{artifact.version}", threads=threads, layers=layers
    )
    runtimes: dict[str, BranchRuntime] = {}
    for role, artifact_dir in _branch_backends(settings).items():
        graph = artifact.branches.get(role)
        if graph is None:
            raise RuntimeArtifactError(
                f"ONNX artifact at {artifact.folder} has no {role} branch for {backend}"
            )
        source = artifact.config.get(role, {})
        actual = (
            branch_weights_sha256(artifact_dir)
            if role == "sentiment"
            else analysis_weights_sha256(artifact_dir)
        )
        if source.get("branch_sha256") != actual:
            setting = "SENTIMENT_ARTIFACT" if role == "sentiment" else "ANALYSIS_ARTIFACT"
            raise RuntimeArtifactError(
                f"ONNX artifact at {artifact.folder} was exported from another {role} "
                f"artifact (branch sha256 {str(source.get('branch_sha256'))[:12]}..., "
                f"{setting} {artifact_dir} has {actual[:12]}...); export it again with "
                f"`python -m pipelines export-onnx --out {artifact.folder}`"
            )
        runtimes[role] = OnnxBranch(graph, name=backend, threads=threads)
    return encoder, runtimes


def load_embedder(
    settings: Settings,
) -> tuple[TransformerEmbedder, dict[str, BranchRuntime]]:
    """The embedder on the ENCODER_BACKEND runtime, and the trained branches' runtimes
    (empty on PyTorch: each branch then runs its own PyTorch module).

    Left at its default, an ONNX backend whose artifact is missing, corrupt or unchecked
    falls back to PyTorch with a warning; named explicitly, it fails start-up instead."""
    backend = settings.encoder_backend
    path = settings.embedder_path or None
    if backend != "torch":
        try:
            encoder, branches = _onnx_runtimes(settings, backend)
        except Exception as exc:
            if settings.encoder_backend_explicit:
                raise RuntimeArtifactError(
                    f"ENCODER_BACKEND={backend} cannot start: {exc}"
                ) from exc
            log.warning(
                "encoder backend %s unavailable, falling back to torch: %s",
                backend,
                exc,
                extra={"stage": "load", "backend": backend, "fallback": "torch"},
            )
        else:
            embedder = TransformerEmbedder(
                path, max_tokens=settings.embedder_max_tokens, runtime=encoder
            )
            return embedder, branches
    embedder = TransformerEmbedder(
        path, max_tokens=settings.embedder_max_tokens, threads=settings.encoder_threads
    )
    return embedder, {}


def load_analyzer(settings: Settings) -> Analyzer:
    """Load the embedder and every analyser; raises with a clear message when one is missing."""
    start = time.perf_counter()
    embedder, runtimes = load_embedder(settings)
    # One analysis branch serves sentiment and UX/CX when both name it: it runs once.
    branch: AnalysisBranch | None = None
    if "analysis" in (settings.sentiment_backend, settings.uxcx_backend):
        branch = AnalysisBranch(
            Path(settings.analysis_artifact), embedder, runtime=runtimes.get("analysis")
        )
    sentiment = (
        branch
        if settings.sentiment_backend == "analysis" and branch is not None
        else load_sentiment_scorer(
            settings.sentiment_backend,
            embedder=embedder,
            artifact_dir=settings.sentiment_artifact,
            branch_runtime=runtimes.get("sentiment"),
        )
    )
    uxcx = (
        branch
        if settings.uxcx_backend == "analysis" and branch is not None
        else load_uxcx_classifier(
            settings.uxcx_backend,
            embedder,
            artifact_dir=settings.uxcx_artifact,
            encoder_fingerprint=encoder_fingerprint(embedder),
        )
    )
    analyzer = Analyzer(
        embedder=embedder,
        sentiment=sentiment,
        uxcx=uxcx,
        language=LanguageDetector(settings.language_min_confidence),
    )
    log.info(
        "analysers loaded",
        extra={
            "stage": "load",
            **analyzer.versions,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return analyzer
