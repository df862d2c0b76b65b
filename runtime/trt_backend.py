"""Native TensorRT backend (TensorRT 10 or 11, with pycuda). Not run on the project's CPU machines."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stsun.profiles import Profile

from .engine import BuildDir, Engine, EngineError


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, plan_path: Path, profile: Profile, max_batch: int) -> None:
        super().__init__(profile, max_batch)
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as err:
            raise EngineError(f"the tensorrt backend needs tensorrt and pycuda (pip install 'stsun[gpu]'): {err}") from None
        identity = json.loads(plan_path.with_suffix(".plan.json").read_text())
        gpu = cuda.Device(0).name()
        if identity["tensorrt"] != trt.__version__ or identity["gpu"] != gpu:
            raise EngineError(f"{plan_path} was built with TensorRT {identity['tensorrt']} on {identity['gpu']}; "
                              f"this machine has TensorRT {trt.__version__} on {gpu}: rebuild the engine here")
        self._cuda = cuda
        self._precision = identity["precision"]
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize {plan_path} (corrupted or truncated?)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        sample = int(np.prod(profile.input_shape)) * 4
        out_sample = profile.t_out * profile.c_out * profile.tile_size ** 2 * 4
        self.d_in = cuda.mem_alloc(sample * max_batch)
        self.d_out = cuda.mem_alloc(out_sample * max_batch)
        self.context.set_tensor_address("x", int(self.d_in))
        self.context.set_tensor_address("logits", int(self.d_out))

    @classmethod
    def open(cls, build: BuildDir, precision: str = "fp16") -> "TensorRTEngine":
        return cls(build.artifact("tensorrt", precision), build.profile, build.max_batch)

    @property
    def device(self) -> str:
        return f"cuda:{self._cuda.Device(0).name()}"

    @property
    def precision(self) -> str:
        return self._precision

    def _run(self, x: np.ndarray) -> np.ndarray:
        p = self.profile
        out = np.empty((len(x), p.t_out, p.c_out, p.tile_size, p.tile_size), np.float32)
        self.context.set_input_shape("x", x.shape)
        self._cuda.memcpy_htod_async(self.d_in, x, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise EngineError("TensorRT execution failed")
        self._cuda.memcpy_dtoh_async(out, self.d_out, self.stream)
        self.stream.synchronize()
        return out
