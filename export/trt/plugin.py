"""TensorRT plugin ``stsun::WindowAttention``: the fused Triton kernel inside an engine.

An ahead-of-time plugin (``tensorrt.plugin`` register + autotune + aot_impl, TensorRT >= 10.8):
at engine build TensorRT asks for each node's kernel, gets PTX from ``stsun.kernels.aot`` for
the build GPU, and bakes it into the plan, so running the engine needs no Python (trtexec and
C++ services load it as is). The node's attributes are ``stsun.kernels.contract.AttentionSpec``;
``plugin_namespace="stsun"`` and ``aot=1`` on the node are how TensorRT's ONNX parser finds this.

Written against TensorRT 11.4's ``tensorrt.plugin`` sources; not run here (no TensorRT, no GPU).
This module must keep run-time annotations (no ``from __future__ import annotations``): the
decorators check parameter annotations as classes.
"""
import inspect
from pathlib import Path
from typing import List, Tuple, Union

from stsun.errors import BuildError
from stsun.kernels.contract import PLUGIN_ID, AttentionSpec

from .env import compute_capability

_registered = False


def check_signature(fn, leading: int, trailing: int) -> None:
    """TensorRT passes the node's attributes positionally: the decorated functions' attribute
    parameters must be the contract's, in its order."""
    params = list(inspect.signature(fn).parameters)
    attrs = params[leading:len(params) - trailing]
    if tuple(attrs) != AttentionSpec.attribute_names():
        raise BuildError(f"plugin function {fn.__name__} takes attributes {attrs}, the contract has "
                         f"{list(AttentionSpec.attribute_names())}")


def register_window_attention_plugin(onnx_path: Path | None = None) -> None:
    """Register the plugin with TensorRT (once per process) before parsing a plugin ONNX; with
    ``onnx_path``, compile that graph's kernels in one batch first."""
    global _registered
    arch = compute_capability()
    if onnx_path is not None:
        from stsun.kernels.aot import compile_many

        from ..plugin_artifacts import plugin_specs

        compile_many((spec, arch) for spec in plugin_specs([onnx_path]))
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from stsun.kernels.aot import compile_ptx

    if not hasattr(trtp, "aot_impl"):
        raise BuildError(f"the attention plugin needs ahead-of-time Python plugins (TensorRT 10.8 or newer); "
                         f"this is TensorRT {trt.__version__}: upgrade, or build with --attention tensorrt")
    dtype_names = {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16"}

    def describe(qkv: trtp.TensorDesc, grid_h: int, grid_w: int, win_h: int, win_w: int, num_heads: int,
                 head_dim: int, scale: float) -> trtp.TensorDesc:
        out = qkv.like()
        out.shape_expr[2] = qkv.shape_expr[2] // 3
        return out

    def formats(qkv: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        # input and output share a type; the kernel accumulates in fp32 for all three
        return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16", "LINEAR")]

    def kernel(qkv: trtp.TensorDesc, grid_h: int, grid_w: int, win_h: int, win_w: int, num_heads: int,
               head_dim: int, scale: float, outputs: Tuple[trtp.TensorDesc], tactic: int
               ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        spec = AttentionSpec(grid_h, grid_w, win_h, win_w, num_heads, head_dim, scale, dtype_names[qkv.dtype])
        aot = compile_ptx(spec, arch)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = aot.grid_x
        launch.grid_y = qkv.shape_expr[0] * num_heads
        launch.block_x = aot.num_warps * 32
        launch.shared_mem = aot.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in aot.scalars])
        return aot.name, aot.ptx, launch, extra

    check_signature(describe, 1, 0)
    check_signature(kernel, 1, 2)
    trtp.register(PLUGIN_ID)(describe)
    trtp.autotune(PLUGIN_ID)(formats)
    trtp.aot_impl(PLUGIN_ID)(kernel)
    _registered = True
