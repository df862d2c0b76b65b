"""Write a Triton Inference Server model repository for a build directory.

Three flavours per profile, side by side:
- ``<profile>``: python backend running the ONNX through onnxruntime (runs on the pip-installed
  server from nvidia-pytriton, CPU-only);
- ``<profile>-onnx``: the onnxruntime_onnx backend (NVIDIA's container);
- ``<profile>-trt``: tensorrt_plan (NVIDIA's container; only when the build has an engine).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from stsun.graph_io import INPUT_NAME, OUTPUT_NAME

from ..engine import BuildDir

PYTHON_MODEL = Path(__file__).with_name("python_model.py")


def config_pbtxt(name: str, build: BuildDir, platform: str, instances: str, extra: str = "") -> str:
    p = build.profile
    mb = build.max_batch
    preferred = sorted({b for b in (max(1, mb // 2), mb) if b >= 1})
    dims_in = ", ".join(str(d) for d in p.input_shape)
    dims_out = ", ".join(str(d) for d in (p.t_out, p.c_out, p.tile_size, p.tile_size))
    return f"""name: "{name}"
{platform}
max_batch_size: {mb}
input [
  {{ name: "{INPUT_NAME}", data_type: TYPE_FP32, dims: [ {dims_in} ] }}
]
output [
  {{ name: "{OUTPUT_NAME}", data_type: TYPE_FP32, dims: [ {dims_out} ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: 2000
}}
instance_group [ {instances} ]
version_policy: {{ latest: {{ num_versions: 1 }} }}
{extra}"""


def write_triton_repo(build_dir: str | Path, repo: str | Path, precision: str = "fp32") -> list[str]:
    """Add (or replace) this build's models in ``repo``; returns the model names written."""
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

    d = model_dir(name)
    shutil.copyfile(onnx, d / "1" / "model.onnx")
    shutil.copyfile(PYTHON_MODEL, d / "1" / "model.py")
    params = "\n".join(f'parameters: {{ key: "{k}", value: {{ string_value: "{v}" }} }}'
                       for k, v in (("valid_min", "-1.0"), ("valid_max", "3.0"), ("intra_op_threads", "0")))
    (d / "config.pbtxt").write_text(config_pbtxt(name, build, 'backend: "python"',
                                                 "{ count: 1, kind: KIND_CPU }", params + "\n"))
    d = model_dir(f"{name}-onnx")
    shutil.copyfile(onnx, d / "1" / "model.onnx")
    (d / "config.pbtxt").write_text(config_pbtxt(f"{name}-onnx", build, 'platform: "onnxruntime_onnx"',
                                                 "{ count: 1, kind: KIND_GPU }"))
    plans = [a for a in build.report["artifacts"] if a["format"] == "tensorrt" and a.get("path")]
    if plans:
        d = model_dir(f"{name}-trt")
        shutil.copyfile(build.path / plans[0]["path"], d / "1" / "model.plan")
        (d / "config.pbtxt").write_text(config_pbtxt(f"{name}-trt", build, 'platform: "tensorrt_plan"',
                                                     "{ count: 1, kind: KIND_GPU }"))
    return written
