"""Runtime backends behind one interface: ``load_engine(build_dir, backend=...)``."""
from .compiled_backend import CompiledEngine
from .engine import BuildDir, Engine, EngineError, load_engine
from .ort_backend import OnnxRuntimeEngine
from .torch_backends import EagerEngine, FoldedEngine
from .triton_client import TritonEngine
from .trt_backend import TensorRTEngine

BACKENDS: dict[str, type[Engine]] = {
    cls.backend: cls for cls in (EagerEngine, FoldedEngine, CompiledEngine, OnnxRuntimeEngine, TensorRTEngine, TritonEngine)
}

__all__ = ["BACKENDS", "BuildDir", "Engine", "EngineError", "load_engine", "EagerEngine", "FoldedEngine",
           "OnnxRuntimeEngine", "TensorRTEngine", "CompiledEngine", "TritonEngine"]
