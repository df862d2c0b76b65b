"""Is TensorRT usable here, and on which GPU: the checks every TensorRT step shares.

A plan runs only on the TensorRT version and GPU that built it, so builds record
``gpu_identity()`` beside each plan and loads compare it with ``plan_mismatch()``.
"""
from __future__ import annotations


def unavailable_reason() -> str | None:
    """None when TensorRT can build and run engines here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'stsun[gpu]' on a machine with an NVIDIA GPU)"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device found"
    except Exception as err:  # pycuda missing, no driver, ...
        return f"CUDA is not usable: {err}"
    return None


def gpu_identity() -> dict:
    """TensorRT version, GPU name and compute capability of this machine."""
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    dev = cuda.Device(0)
    return {"tensorrt": trt.__version__, "gpu": dev.name(), "compute_capability": list(dev.compute_capability())}


def compute_capability() -> int:
    """This GPU's compute capability as 80, 90, ..."""
    major, minor = gpu_identity()["compute_capability"]
    return 10 * major + minor


def plan_mismatch(recorded: dict) -> str | None:
    """Why a plan built on ``recorded`` (a build's gpu_identity) cannot run here, or None."""
    here = gpu_identity()
    if (recorded["tensorrt"], recorded["gpu"]) == (here["tensorrt"], here["gpu"]):
        return None
    return (f"built with TensorRT {recorded['tensorrt']} on {recorded['gpu']}; this machine has TensorRT "
            f"{here['tensorrt']} on {here['gpu']}: rebuild the engine here")
