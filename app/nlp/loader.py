"""Build the analysers named in settings, once per process."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from app.core.config import Settings
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


def _onnx_runtimes(settings: Settings, backend: str) -> tuple[OnnxEncoder, BranchRuntime | None]:
    """The ONNX encoder and, for the branch sentiment backend, the ONNX branch; raises
    RuntimeArtifactError (or ArtifactError) saying what is wrong with the artifact."""
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
    branch: BranchRuntime | None = None
    if settings.sentiment_backend == "branch":
        source = artifact.config.get("sentiment", {})
        if artifact.branch is None:
            raise RuntimeArtifactError(
                f"ONNX artifact at {artifact.folder} has no sentiment branch for {backend}"
            )
        actual = branch_weights_sha256(settings.sentiment_artifact)
        if source.get("branch_sha256") != actual:
            raise RuntimeArtifactError(
                f"ONNX artifact at {artifact.folder} was exported from another sentiment "
                f"artifact (branch sha256 {str(source.get('branch_sha256'))[:12]}..., "
                f"SENTIMENT_ARTIFACT {settings.sentiment_artifact} has {actual[:12]}...); "
                f"export it again with `python -m pipelines export-onnx --out "
                f"{artifact.folder}`"
            )
        branch = OnnxBranch(artifact.branch, name=backend, threads=threads)
    return encoder, branch


def load_embedder(settings: Settings) -> tuple[TransformerEmbedder, BranchRuntime | None]:
    """The embedder on the ENCODER_BACKEND runtime, and the sentiment branch's runtime.

    Left at its default, an ONNX backend whose artifact is missing, corrupt or unchecked
    falls back to PyTorch with a warning; named explicitly, it fails start-up instead."""
    backend = settings.encoder_backend
    path = settings.embedder_path or None
    if backend != "torch":
        try:
            encoder, branch = _onnx_runtimes(settings, backend)
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
            return embedder, branch
    embedder = TransformerEmbedder(
        path, max_tokens=settings.embedder_max_tokens, threads=settings.encoder_threads
    )
    return embedder, None


def load_analyzer(settings: Settings) -> Analyzer:
    """Load the embedder and every analyser; raises with a clear message when one is missing."""
    start = time.perf_counter()
    embedder, branch_runtime = load_embedder(settings)
    analyzer = Analyzer(
        embedder=embedder,
        sentiment=load_sentiment_scorer(
            settings.sentiment_backend,
            embedder=embedder,
            artifact_dir=settings.sentiment_artifact,
            branch_runtime=branch_runtime,
        ),
        uxcx=load_uxcx_classifier(
            settings.uxcx_backend,
            embedder,
            artifact_dir=settings.uxcx_artifact,
            encoder_fingerprint=encoder_fingerprint(embedder),
        ),
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
