"""What the attention-plugin build can produce and check without TensorRT or a GPU.

- ``run_with_reference``: runs a plugin ONNX (``stsun::WindowAttention`` nodes) on the CPU with
  onnx's reference evaluator, the custom node computed by the PyTorch reference attention. It
  proves the exported graph around the plugin (inputs, attributes, shapes, fp16 casts) is right.
- ``write_kernels``: the ahead-of-time PTX TensorRT will embed, for sm_80 and sm_90, each one
  assembled by ptxas to prove it valid and to report registers and spills.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from stsun.atomic import atomic_write
from stsun.model.lgwa import window_attention_reference

from .onnx_export import INPUT_NAME, read_metadata

PLUGIN_OP = "WindowAttention"


class WindowAttention(OpRun):
    op_domain = "stsun"

    def _run(self, qkv, grid_h=None, grid_w=None, win_h=None, win_w=None, num_heads=None, head_dim=None,
             scale=None, **_):  # plugin_namespace, plugin_version, aot: TensorRT's business
        out = window_attention_reference(torch.from_numpy(qkv), (grid_h, grid_w), (win_h, win_w), num_heads, scale)
        return (out.numpy(),)


def run_with_reference(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of a plugin ONNX for ``x``, one tile at a time (the evaluator is pure numpy)."""
    evaluator = ReferenceEvaluator(str(path), new_ops=[WindowAttention])
    return np.concatenate([evaluator.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))])


def plugin_specs(paths: list[Path]) -> list:
    """The distinct kernel specialisations plugin ONNX files need (one per window shape and dtype)."""
    from stsun.kernels.aot import AttentionSpec  # needs triton; plain builds do not

    specs = []
    for path in paths:
        dtype = read_metadata(path)["precision"]  # the fp16 graph runs every plugin node in fp16
        for node in onnx.load(str(path)).graph.node:
            if node.op_type != PLUGIN_OP:
                continue
            a = {att.name: onnx.helper.get_attribute_value(att) for att in node.attribute}
            spec = AttentionSpec(a["grid_h"], a["grid_w"], a["win_h"], a["win_w"], a["num_heads"], a["head_dim"],
                                 float(np.float32(a["scale"])), dtype)  # TensorRT passes the scale as float32
            if spec not in specs:
                specs.append(spec)
    return specs


def write_kernels(paths: list[Path], out_dir: Path) -> list[dict]:
    """Compile every kernel the plugin ONNX ``paths`` need, for each architecture in ARCHS."""
    from stsun.kernels.aot import ARCHS, assemble, compile_many

    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for kernel in compile_many((spec, arch) for spec in plugin_specs(paths) for arch in ARCHS):
        ptx = out_dir / f"window_attention.{kernel.spec.tag}.sm{kernel.arch}.ptx"
        atomic_write(ptx, lambda tmp: tmp.write_text(kernel.ptx))
        reports.append({"file": ptx.name, **kernel.report(), "ptxas": assemble(kernel)})
    atomic_write(out_dir / "kernels.json", lambda tmp: tmp.write_text(json.dumps(reports, indent=2) + "\n"))
    return reports
