"""TensorRT plan (engine) build from an exported ONNX (needs TensorRT 10 or 11 and an NVIDIA GPU).

Written against the Python API of TensorRT 10 and 11 (checked against the 11.4 bindings' names);
it has not run on the project's CPU machines.
The plan's TensorRT version and GPU are recorded beside it (``*.plan.json``) and checked
when it is loaded, because a plan only runs on the TensorRT version and GPU that built it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from stsun.atomic import atomic_write
from stsun.errors import BuildError
from stsun.graph_io import INPUT_NAME
from stsun.profiles import Profile

from ..onnx_export import read_metadata
from .env import gpu_identity

WORKSPACE_BYTES = 4 << 30


def parse_onnx(trt, logger, onnx_path: Path, network_flags: int) -> tuple:
    """(builder, network, parser, config) for ``onnx_path``, the config with our workspace limit;
    the parser is returned because the network refers to its weights."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    return builder, network, parser, config


def build_plan(onnx_path: Path, plan_path: Path, profile: Profile, precision: str, max_batch: int,
               timing_cache: Path) -> dict:
    """Build and serialise a plan; returns what the build report records."""
    import tensorrt as trt

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    if read_metadata(onnx_path).get("attention_plugin") == "true":
        from .plugin import register_window_attention_plugin

        register_window_attention_plugin(onnx_path)
    # Strongly typed: each tensor keeps the type the ONNX gives it (the fp16 export keeps
    # normalisations and softmax in fp32, the int8 export carries Q/DQ). TensorRT 11 has no
    # other mode and no FP16/INT8 builder flags; 10.x accepts the flag.
    builder, network, parser, config = parse_onnx(
        trt, logger, onnx_path, 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # an fp32 engine is held to the fp32 fidelity gate
    shape = profile.input_shape
    opt = builder.create_optimization_profile()
    opt.set_shape(INPUT_NAME, (1, *shape), (max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(opt)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    atomic_write(plan_path, lambda tmp: tmp.write_bytes(bytes(serialized)))
    atomic_write(timing_cache, lambda tmp: tmp.write_bytes(bytes(config.get_timing_cache().serialize())))
    identity = {**gpu_identity(), "precision": precision, "max_batch": max_batch}
    atomic_write(plan_path.with_suffix(".plan.json"), lambda tmp: tmp.write_text(json.dumps(identity, indent=2)))
    return {**identity, "build_seconds": round(time.perf_counter() - start, 2)}
