"""TensorRT plugin ``stsun::WindowAttention``: the fused Triton kernel inside an engine.

An ahead-of-time plugin (``tensorrt.plugin`` register + autotune + aot_impl, TensorRT >= 10.8):
at engine build TensorRT asks for each node's kernel, gets PTX from ``stsun.kernels.aot`` for
the build GPU, and bakes it into the plan, so running the engine needs no Python (trtexec and
C++ services load it as is). The ONNX node (``export_fp32(..., attention_plugin=True)``) carries
``plugin_namespace="stsun"`` and ``aot=1``, which is how TensorRT's ONNX parser finds this.

Written against TensorRT 11.4's ``tensorrt.plugin`` sources; not run here (no TensorRT, no GPU).
This module must keep run-time annotations (no ``from __future__ import annotations``): the
decorators check parameter annotations as classes.
"""
from typing import List, Tuple, Union

PLUGIN_ID = "stsun::WindowAttention"
_registered = False


def build_arch() -> int:
    """Compute capability of the GPU TensorRT is building on, as 80, 90, ..."""
    from .tensorrt_build import gpu_identity

    major, minor = gpu_identity()["compute_capability"]
    return 10 * major + minor


def register_window_attention_plugin() -> None:
    """Register the plugin with TensorRT (once per process) before parsing a plugin ONNX."""
    global _registered
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from stsun.kernels.aot import AttentionSpec, compile_ptx

    if not hasattr(trtp, "aot_impl"):
        raise RuntimeError(f"the attention plugin needs ahead-of-time Python plugins (TensorRT 10.8 or newer); "
                           f"this is TensorRT {trt.__version__}: upgrade, or build with --attention tensorrt")
    dtype_names = {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16"}

    # Attribute order must match the ONNX node's (onnx_export) and stay the same in aot_impl:
    # TensorRT hands attributes to aot_impl positionally.
    @trtp.register(PLUGIN_ID)
    def describe(qkv: trtp.TensorDesc, grid_h: int, grid_w: int, win_h: int, win_w: int, num_heads: int,
                 head_dim: int, scale: float) -> trtp.TensorDesc:
        out = qkv.like()
        out.shape_expr[2] = qkv.shape_expr[2] // 3
        return out

    @trtp.autotune(PLUGIN_ID)
    def formats(qkv: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        # input and output share a type; the kernel accumulates in fp32 for all three
        return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def kernel(qkv: trtp.TensorDesc, grid_h: int, grid_w: int, win_h: int, win_w: int, num_heads: int,
               head_dim: int, scale: float, outputs: Tuple[trtp.TensorDesc], tactic: int
               ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        spec = AttentionSpec(grid_h, grid_w, win_h, win_w, num_heads, head_dim, scale, dtype_names[qkv.dtype])
        aot = compile_ptx(spec, build_arch())
        launch = trtp.KernelLaunchParams()
        launch.grid_x = aot.grid_x
        launch.grid_y = qkv.shape_expr[0] * num_heads
        launch.block_x = aot.num_warps * 32
        launch.shared_mem = aot.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in aot.scalars])
        return aot.name, aot.ptx, launch, extra

    _registered = True
