"""TensorRT int8 calibration cache from the build's calibration tiles (needs TensorRT 10 and an
NVIDIA GPU; written against TensorRT 10's documented Python API, not run on the project's CPU
machines).

The int8 ONNX the build gates is QDQ (explicit quantization) for onnxruntime. TensorRT's own
int8 path for the fp32 graph is implicit quantization: an ``IInt8EntropyCalibrator2`` is fed the
same tiles during one engine build and TensorRT writes the per-tensor scales it chose as a
calibration cache, which later builds (``config.int8_calibrator`` whose
``read_calibration_cache`` returns it) reuse without recalibrating. TensorRT 10.1 deprecated
implicit quantization and TensorRT 11 removed calibrators: there the cache is skipped with that
reason.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stsun.atomic import atomic_write
from stsun.errors import BuildError
from stsun.graph_io import INPUT_NAME
from stsun.profiles import Profile

from .plan import parse_onnx


def calibrator_unavailable() -> str | None:
    import tensorrt as trt

    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        return f"TensorRT {trt.__version__} has no int8 calibrators (implicit quantization was removed in 11)"
    return None


def write_calibration_cache(onnx_fp32: Path, cache: Path, tiles: np.ndarray, profile: Profile, batch: int) -> dict:
    """Calibrate TensorRT's implicit int8 on ``tiles`` (N, T_in, C_in, H, W) and write ``cache``;
    returns what the build report records."""
    import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
    import pycuda.driver as cuda
    import tensorrt as trt

    start = time.perf_counter()
    tiles = np.ascontiguousarray(tiles, np.float32)
    batch = min(batch, len(tiles))

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.next = 0
            self.device = cuda.mem_alloc(tiles[:batch].nbytes)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.next + batch > len(tiles):  # TensorRT takes whole batches only
                return None
            cuda.memcpy_htod(self.device, tiles[self.next:self.next + batch])
            self.next += batch
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return None  # always calibrate from these tiles

        def write_calibration_cache(self, data) -> None:
            atomic_write(cache, lambda tmp: tmp.write_bytes(bytes(data)))

    logger = trt.Logger(trt.Logger.WARNING)
    # weakly typed (flags 0): implicit quantization chooses the int8 layers
    builder, network, parser, config = parse_onnx(trt, logger, onnx_fp32, 0)
    config.set_flag(trt.BuilderFlag.INT8)
    shape = (batch, *profile.input_shape)
    opt = builder.create_optimization_profile()
    opt.set_shape(INPUT_NAME, shape, shape, shape)
    config.add_optimization_profile(opt)
    config.set_calibration_profile(opt)  # dynamic batch: calibrate at the calibrator's batch
    config.int8_calibrator = Calibrator()
    if builder.build_serialized_network(network, config) is None or not cache.is_file():
        raise BuildError(f"TensorRT int8 calibration of {onnx_fp32} failed")
    return {"file": cache.name, "calibrator": "IInt8EntropyCalibrator2", "tiles": len(tiles) // batch * batch,
            "seconds": round(time.perf_counter() - start, 2)}


__all__ = ["calibrator_unavailable", "write_calibration_cache"]
