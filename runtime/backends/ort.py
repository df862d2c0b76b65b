"""ONNX Runtime backend: TensorRT, CUDA or CPU execution provider, whichever exist."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stsun.atomic import atomic_path
from stsun.digest import file_sha256
from stsun.errors import EngineError
from stsun.graph_io import INPUT_NAME
from stsun.profiles import Profile, profile_from_dict

from ..engine import BuildDir, Engine

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CACHE_ENV = "STSUN_ORT_CACHE"  # a folder for onnxruntime's optimized graphs (see OnnxRuntimeEngine)


def optimized_graph(path: Path, cache: Path) -> Path:
    """``path``'s graph as onnxruntime optimizes it at the extended level (fused GELU, MatMul+Add,
    ...: rewrites that hold on any CPU, unlike the layout changes of the full level, which each
    session still applies for its own machine), written once into ``cache`` under the source's
    sha256 and this onnxruntime's version, so later sessions skip that work (about a quarter of
    session creation for the tiny demo model)."""
    cached = cache / f"{file_sha256(path)[:32]}.ort-{ort.__version__}.onnx"
    if not cached.is_file():
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        with atomic_path(cached) as tmp:
            opts.optimized_model_filepath = str(tmp)
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return cached


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, onnx_path: str | Path, profile: Profile | None = None, max_batch: int | None = None,
                 providers: list[str] | None = None, threads: int | None = None, spinning: bool = True,
                 cache: str | Path | None = None) -> None:
        """``threads``: intra-op threads (default: onnxruntime's, one per physical core);
        ``spinning``: worker threads busy-wait between ops (lower latency; False frees the cores
        for other work between calls); ``cache``: a folder for ``optimized_graph`` (default: the
        STSUN_ORT_CACHE environment variable; none: every session optimizes the graph itself)."""
        path = Path(onnx_path)
        if not path.is_file():
            raise EngineError(f"ONNX model not found: {path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        available = ort.get_available_providers()
        chosen = providers or [p for p in PREFERRED_PROVIDERS if p in available]
        cache = cache or os.environ.get(CACHE_ENV)
        try:
            # The extended rewrites are per execution provider: only a CPU session reads the cached graph.
            graph = optimized_graph(path, Path(cache)) if cache and chosen == ["CPUExecutionProvider"] else path
            self.session = ort.InferenceSession(str(graph), opts, providers=chosen)
        except Exception as err:  # onnxruntime raises its own untyped exceptions
            raise EngineError(f"could not load ONNX model {path} (corrupted or truncated file? rebuild it): "
                              f"{str(err).splitlines()[0][:300]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "stsun.profile" not in meta:
            raise EngineError(f"{path} carries no stsun metadata: not exported by stsun")
        stored = profile_from_dict(json.loads(meta["stsun.profile"]), source=str(path))
        if profile is not None and stored.name != profile.name:
            raise EngineError(f"{path} was built for profile '{stored.name}', not '{profile.name}'")
        super().__init__(profile or stored, max_batch)
        self.path = path
        self._precision = meta.get("stsun.precision", "fp32")
        self.providers = self.session.get_providers()

    @classmethod
    def open(cls, build: BuildDir, precision: str = "fp32", **options) -> "OnnxRuntimeEngine":
        return cls(build.artifact("onnx", precision), build.profile, build.max_batch, **options)

    @property
    def device(self) -> str:
        return "cpu" if self.providers[0] == "CPUExecutionProvider" else self.providers[0]

    @property
    def precision(self) -> str:
        return self._precision

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: x})[0]
