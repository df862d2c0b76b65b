"""Runtime backends behind one interface: ``load_engine(build_dir, backend=...)``; the backends
and what each needs are the table in ``stsun.runtime.backends``."""
from stsun.errors import EngineError

from .backends import BACKENDS
from .compiled_backend import CompiledEngine
from .engine import BuildDir, Engine, load_engine
from .ort_backend import OnnxRuntimeEngine
from .serving.client import TritonEngine
from .torch_backends import EagerEngine, FoldedEngine
from .trt_backend import TensorRTEngine

__all__ = ["BACKENDS", "BuildDir", "Engine", "EngineError", "load_engine", "EagerEngine", "FoldedEngine",
           "OnnxRuntimeEngine", "TensorRTEngine", "CompiledEngine", "TritonEngine"]
