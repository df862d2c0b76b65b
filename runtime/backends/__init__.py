"""The backend table: every way to run a build, with what it needs, and ``load_engine``.

One entry per backend: the module holding its engine class, the artifact it runs, its
precisions, whether it needs a GPU, and an availability check that says why it cannot run here.
``load_engine``, the CLI help, the build's TensorRT step and the benchmarks read this table; a new
backend is one module in this package (an ``Engine`` subclass with ``open``) plus one entry here.
Engine modules are imported only when their backend is opened, so running an ONNX build never
imports torch.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stsun.errors import EngineError

from ..engine import BuildDir, Engine


def _tensorrt_unavailable() -> str | None:
    from stsun.export.trt.env import unavailable_reason

    return unavailable_reason()


@dataclass(frozen=True)
class Backend:
    name: str
    module: str                        # the module of this package that holds the engine class
    engine_class: str
    artifact: str                      # what it runs: checkpoint, onnx, tensorrt (a plan), or a server
    precisions: tuple[str, ...]
    needs_gpu: bool
    summary: str
    requires: tuple[str, ...] = ()     # Python modules it imports
    extra: str = ""                    # the pip extra that brings them
    check: Callable[[], str | None] | None = None  # further availability check (a GPU, a driver)

    @property
    def engine(self) -> type[Engine]:
        """The engine class (imports its module, and what that needs, on first use)."""
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.engine_class)

    def unavailable_reason(self) -> str | None:
        """None when this backend can run here, else why not."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"{', '.join(missing)} not installed (pip install 'stsun[{self.extra}]')"
        return self.check() if self.check else None


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("eager", "pytorch", "EagerEngine", "checkpoint", ("fp32",), False,
            "the dynamic model: hypernetworks evaluated on every call", requires=("torch",), extra="build"),
    Backend("folded", "pytorch", "FoldedEngine", "checkpoint", ("fp32",), False, "the folded static model in PyTorch",
            requires=("torch",), extra="build"),
    Backend("compiled", "compiled", "CompiledEngine", "checkpoint", ("fp32", "fp16", "bf16"), False,
            "the folded model under torch.compile; fp16/bf16 with the fused kernel and CUDA graphs on a GPU",
            requires=("torch",), extra="build"),
    Backend("onnxruntime", "ort", "OnnxRuntimeEngine", "onnx", ("fp32", "fp16", "int8"), False,
            "the ONNX through onnxruntime (TensorRT, CUDA or CPU execution provider)"),
    Backend("tensorrt", "trt", "TensorRTEngine", "tensorrt", ("fp32", "fp16"), True, "a native TensorRT plan",
            requires=("tensorrt", "pycuda"), extra="gpu", check=_tensorrt_unavailable),
    Backend("triton", "triton_client", "TritonEngine", "server", ("fp32",), False,
            "a running Triton Inference Server (options: url, protocol, model)",
            requires=("tritonclient",), extra="serve"),
)}


def backend(name: str, precision: str | None = None) -> Backend:
    """The table's entry for ``name``, checked to run ``precision`` when one is given."""
    try:
        spec = BACKENDS[name]
    except KeyError:
        raise EngineError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}") from None
    if precision is not None and precision not in spec.precisions:
        raise EngineError(f"the {name} backend runs in {' / '.join(spec.precisions)} only, not {precision}")
    return spec


def load_engine(path: str | Path, backend: str = "onnxruntime", precision: str | None = None, **options) -> Engine:
    """Open a build directory with one backend of ``BACKENDS`` (eager, folded, compiled,
    onnxruntime, tensorrt, triton). ``precision`` picks the artifact or compute precision among
    the backend's (default: fp32; ``compiled``: bf16 on a GPU)."""
    spec = globals()["backend"](backend, precision)  # the parameter shadows the function of that name
    if precision is not None:
        options["precision"] = precision
    return spec.engine.open(BuildDir(path), **options)


__all__ = ["BACKENDS", "Backend", "backend", "load_engine"]
