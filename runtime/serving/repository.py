"""Write a Triton Inference Server model repository for a build directory.

Per profile, two inputs forms side by side, each in the flavours a server can run:
- ``<profile>``: scaled float32 ``x`` -> float32 ``logits``;
- ``<profile>-dn``: raw digital numbers ``dn`` (the profile's ``scaling.dtype``, e.g. UINT16) ->
  the map bands ``stsun predict`` writes (``classes``, UINT8) and, when asked, ``logits``
  (the scaling, DN offset, nodata mask and argmax live in the ONNX graph: ``stsun.export.raw_io``).

Flavours: the python backend running the ONNX through onnxruntime (the name as above; runs on the
pip-installed server from nvidia-pytriton, CPU-only), ``-onnx`` for the onnxruntime_onnx backend
(NVIDIA's container), ``-trt`` for tensorrt_plan (float input only, and only when the build has an
engine: TensorRT has no 16-bit integer tensors, so a DN plan cannot take UINT16).

Every model has a bounded queue: requests beyond ``max_queue_size`` or waiting longer than
``queue_timeout_s`` are rejected at once (HTTP 503 / gRPC UNAVAILABLE) instead of piling up behind
clients that gave up; a client can ask for a shorter wait with the request's ``timeout`` parameter.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from stsun.classmaps import map_layout
from stsun.export.raw_io import add_raw_io
from stsun.graph_io import CLASSES_OUTPUT_NAME, DN_INPUT_NAME, INPUT_NAME, OUTPUT_NAME

from ..engine import BuildDir

PYTHON_MODEL = Path(__file__).with_name("python_model.py")
TRITON_TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "int16": "TYPE_INT16"}


@dataclass(frozen=True)
class ServingConfig:
    """The knobs of every generated model configuration. Defaults from benchmarks/serve.py on
    2 cores: two instances of one thread each served 1.24x the inferences/s of one instance using
    both cores at concurrency 8 (the batching delay, 0 to 20 ms, changed nothing). Threads default
    to the writing machine's cores split between the instances: pass ``intra_op_threads`` when the
    repository is written for another machine."""
    instances: int = 2               # model instances (python stubs) per model
    intra_op_threads: int | None = None  # onnxruntime threads per instance (None: cores / instances)
    max_queue_delay_us: int = 2000   # how long the dynamic batcher waits to fill a batch
    max_queue_size: int = 32         # requests waiting per model, beyond that: rejected
    queue_timeout_s: float = 10.0    # a request waiting longer is rejected, not computed

    def __post_init__(self) -> None:
        if self.intra_op_threads is None:
            object.__setattr__(self, "intra_op_threads", max(1, (os.cpu_count() or 1) // self.instances))


def config_pbtxt(name: str, build: BuildDir, platform: str, kind: str, serving: ServingConfig,
                 raw: bool = False, extra: str = "") -> str:
    p = build.profile
    mb = build.max_batch
    preferred = sorted({b for b in (max(1, mb // 2), mb) if b >= 1})
    dims_in = ", ".join(str(d) for d in p.input_shape)
    dims_logits = ", ".join(str(d) for d in (p.t_out, p.c_out, p.tile_size, p.tile_size))
    logits = f'{{ name: "{OUTPUT_NAME}", data_type: TYPE_FP32, dims: [ {dims_logits} ] }}'
    if raw:
        bands, dtype, _ = map_layout(p.task, p.t_out, p.c_out)
        inputs = f'{{ name: "{DN_INPUT_NAME}", data_type: {TRITON_TYPES[p.scaling.dtype]}, dims: [ {dims_in} ] }}'
        outputs = (f'{{ name: "{CLASSES_OUTPUT_NAME}", data_type: {TRITON_TYPES[dtype]}, '
                   f'dims: [ {bands}, {p.tile_size}, {p.tile_size} ] }},\n  {logits}')
    else:
        inputs = f'{{ name: "{INPUT_NAME}", data_type: TYPE_FP32, dims: [ {dims_in} ] }}'
        outputs = logits
    return f"""name: "{name}"
{platform}
max_batch_size: {mb}
input [
  {inputs}
]
output [
  {outputs}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: {serving.max_queue_delay_us}
  default_queue_policy {{
    timeout_action: REJECT
    default_timeout_microseconds: {int(serving.queue_timeout_s * 1e6)}
    allow_timeout_override: true
    max_queue_size: {serving.max_queue_size}
  }}
}}
instance_group [ {{ count: {serving.instances}, kind: {kind} }} ]
version_policy: {{ latest: {{ num_versions: 1 }} }}
{extra}"""


def write_triton_repo(build_dir: str | Path, repo: str | Path, precision: str = "fp32",
                      serving: ServingConfig | None = None) -> list[str]:
    """Add (or replace) this build's models in ``repo``; returns the model names written."""
    serving = serving or ServingConfig()
    build = BuildDir(build_dir)
    repo = Path(repo)
    name = build.profile.name
    onnx = build.artifact("onnx", precision)
    written = []

    def model_dir(model: str) -> Path:
        d = repo / model
        if d.exists():
            shutil.rmtree(d)
        (d / "1").mkdir(parents=True)
        written.append(model)
        return d

    params = "\n".join(f'parameters: {{ key: "{k}", value: {{ string_value: "{v}" }} }}'
                       for k, v in (("valid_min", "-1.0"), ("valid_max", "3.0"),
                                    ("intra_op_threads", str(serving.intra_op_threads)))) + "\n"
    for suffix, raw in (("", False), ("-dn", True)):
        d = model_dir(f"{name}{suffix}")
        if raw:
            add_raw_io(onnx, d / "1" / "model.onnx", build.profile)
        else:
            shutil.copyfile(onnx, d / "1" / "model.onnx")
        shutil.copyfile(PYTHON_MODEL, d / "1" / "model.py")
        (d / "config.pbtxt").write_text(config_pbtxt(f"{name}{suffix}", build, 'backend: "python"', "KIND_CPU",
                                                     serving, raw, params))
        d_onnx = model_dir(f"{name}{suffix}-onnx")
        shutil.copyfile(d / "1" / "model.onnx", d_onnx / "1" / "model.onnx")
        (d_onnx / "config.pbtxt").write_text(config_pbtxt(f"{name}{suffix}-onnx", build, 'platform: "onnxruntime_onnx"',
                                                          "KIND_GPU", serving, raw))
    plans = build.report.artifact_paths("tensorrt")
    if plans:
        d = model_dir(f"{name}-trt")
        shutil.copyfile(build.path / plans[0].path, d / "1" / "model.plan")
        (d / "config.pbtxt").write_text(config_pbtxt(f"{name}-trt", build, 'platform: "tensorrt_plan"',
                                                     "KIND_GPU", serving))
    return written
