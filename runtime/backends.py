"""The backend table: every way to run a build, with what it needs.

One entry per backend: the engine class, the artifact it runs, its precisions, whether it needs
a GPU, and an availability check that says why it cannot run here. ``load_engine``, the CLI
help, the build's TensorRT step and the benchmarks read this table; a new backend is one entry
here plus its engine class.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

from stsun.export.trt.env import unavailable_reason as tensorrt_unavailable

from .compiled_backend import CompiledEngine
from .engine import Engine
from .ort_backend import OnnxRuntimeEngine
from .serving.client import TritonEngine
from .torch_backends import EagerEngine, FoldedEngine
from .trt_backend import TensorRTEngine


@dataclass(frozen=True)
class Backend:
    name: str
    engine: type[Engine]
    artifact: str                      # what it runs: checkpoint, onnx, tensorrt (a plan), or a server
    precisions: tuple[str, ...]
    needs_gpu: bool
    summary: str
    requires: tuple[str, ...] = ()     # Python modules it imports
    extra: str = ""                    # the pip extra that brings them
    check: Callable[[], str | None] | None = None  # further availability check (a GPU, a driver)

    def unavailable_reason(self) -> str | None:
        """None when this backend can run here, else why not."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"{', '.join(missing)} not installed (pip install 'stsun[{self.extra}]')"
        return self.check() if self.check else None


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("eager", EagerEngine, "checkpoint", ("fp32",), False,
            "the dynamic model: hypernetworks evaluated on every call"),
    Backend("folded", FoldedEngine, "checkpoint", ("fp32",), False, "the folded static model in PyTorch"),
    Backend("compiled", CompiledEngine, "checkpoint", ("fp32", "fp16", "bf16"), False,
            "the folded model under torch.compile; fp16/bf16 with the fused kernel and CUDA graphs on a GPU"),
    Backend("onnxruntime", OnnxRuntimeEngine, "onnx", ("fp32", "fp16", "int8"), False,
            "the ONNX through onnxruntime (TensorRT, CUDA or CPU execution provider)"),
    Backend("tensorrt", TensorRTEngine, "tensorrt", ("fp32", "fp16"), True, "a native TensorRT plan",
            requires=("tensorrt", "pycuda"), extra="gpu", check=tensorrt_unavailable),
    Backend("triton", TritonEngine, "server", ("fp32",), False,
            "a running Triton Inference Server (options: url, protocol, model)",
            requires=("tritonclient",), extra="serve"),
)}


def backend(name: str, precision: str | None = None) -> Backend:
    """The table's entry for ``name``, checked to run ``precision`` when one is given."""
    from stsun.errors import EngineError

    try:
        spec = BACKENDS[name]
    except KeyError:
        raise EngineError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}") from None
    if precision is not None and precision not in spec.precisions:
        raise EngineError(f"the {name} backend runs in {' / '.join(spec.precisions)} only, not {precision}")
    return spec


__all__ = ["BACKENDS", "Backend", "backend"]
