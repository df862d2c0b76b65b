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
from stsun.graph_io import INPUT_NAME
from stsun.kernels.contract import PLUGIN_NAME, PLUGIN_NAMESPACE, AttentionSpec
from stsun.kernels.reference import window_attention_reference

from .onnx_export import read_metadata


class WindowAttention(OpRun):
    op_domain = PLUGIN_NAMESPACE

    def _run(self, qkv, **attrs):  # plugin_namespace, plugin_version, aot: TensorRT's business
        s = AttentionSpec.from_onnx_attributes(attrs, "fp32")
        out = window_attention_reference(torch.from_numpy(qkv), (s.grid_h, s.grid_w), (s.win_h, s.win_w),
                                         s.num_heads, attrs["scale"])
        return (out.numpy(),)


def run_with_reference(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of a plugin ONNX for ``x``, one tile at a time (the evaluator is pure numpy)."""
    evaluator = ReferenceEvaluator(str(path), new_ops=[WindowAttention])
    return np.concatenate([evaluator.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))])


def plugin_specs(paths: list[Path]) -> list[AttentionSpec]:
    """The distinct kernel specialisations plugin ONNX files need (one per window shape and dtype)."""
    specs = []
    for path in paths:
        dtype = read_metadata(path)["precision"]  # the fp16 graph runs every plugin node in fp16
        for node in onnx.load(str(path)).graph.node:
            if node.op_type != PLUGIN_NAME:
                continue
            a = {att.name: onnx.helper.get_attribute_value(att) for att in node.attribute}
            spec = AttentionSpec.from_onnx_attributes(a, dtype)
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
