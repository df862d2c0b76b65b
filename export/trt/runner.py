"""Run a serialised TensorRT plan (TensorRT 10 or 11, with pycuda). Not run on the project's
CPU machines. The ``tensorrt`` runtime backend wraps this in the common engine interface."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stsun.errors import EngineError
from stsun.graph_io import INPUT_NAME, OUTPUT_NAME
from stsun.profiles import Profile

from .env import plan_mismatch


class PlanRunner:
    """A deserialised plan with device buffers for ``max_batch`` tiles of ``profile``."""

    def __init__(self, plan_path: Path, profile: Profile, max_batch: int) -> None:
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as err:
            raise EngineError("the tensorrt backend needs tensorrt and pycuda "
                              f"(pip install 'stsun[gpu]'): {err}") from None
        identity = json.loads(plan_path.with_suffix(".plan.json").read_text())
        if reason := plan_mismatch(identity):
            raise EngineError(f"{plan_path} was {reason}")
        self.profile = profile
        self.precision: str = identity["precision"]
        self.device = f"cuda:{cuda.Device(0).name()}"
        self._cuda = cuda
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {plan_path} (corrupted or truncated?)")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = cuda.Stream()
        sample = int(np.prod(profile.input_shape)) * 4
        out_sample = profile.t_out * profile.c_out * profile.tile_size ** 2 * 4
        self.d_in = cuda.mem_alloc(sample * max_batch)
        self.d_out = cuda.mem_alloc(out_sample * max_batch)
        self.context.set_tensor_address(INPUT_NAME, int(self.d_in))
        self.context.set_tensor_address(OUTPUT_NAME, int(self.d_out))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = self.profile
        out = np.empty((len(x), p.t_out, p.c_out, p.tile_size, p.tile_size), np.float32)
        self.context.set_input_shape(INPUT_NAME, x.shape)
        self._cuda.memcpy_htod_async(self.d_in, x, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise EngineError("TensorRT execution failed")
        self._cuda.memcpy_dtoh_async(out, self.d_out, self.stream)
        self.stream.synchronize()
        return out
