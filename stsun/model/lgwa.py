"""LGWA: local-global window attention blocks.

Attention itself comes from ``stsun.kernels``: the PyTorch reference everywhere, the fused
Triton kernel for CUDA inference, one ``stsun::WindowAttention`` node in a plugin ONNX export.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stsun.kernels.contract import AttentionSpec
from stsun.kernels.ops import window_attention_op
from stsun.kernels.reference import window_attention_reference

from .norm import TaskBatchNorm2d

# Per group of four blocks: three window shapes (rows x cols, in tokens), then global.
WINDOW_SCHEDULE: tuple[tuple[int, int] | None, ...] = ((32, 8), (16, 16), (8, 32), None)


class WindowAttention(nn.Module):
    """qkv projection -> window (or global) attention -> output projection.

    Where the windows do not tile the grid, the paper variant masks the padded keys (the
    attention contract, ``stsun.kernels``). ``pad_tokens`` follows the authors' code instead:
    the grid is padded with zero tokens BEFORE the qkv projection, so padded positions carry
    the projection's bias as keys and values and take part in the softmax. The padded grid is
    then a multiple of the window, so the reference, the fused kernel and the plugin all run
    it unchanged (nothing left to mask), and the padded rows/columns are cropped after.
    """

    def __init__(self, dim: int, num_heads: int, window_hw: tuple[int, int] | None, pad_tokens: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window_hw = window_hw
        self.pad_tokens = pad_tokens
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.emit_plugin = False  # ONNX export: one custom WindowAttention node (a TensorRT plugin)
        self.use_kernel = True  # the fused kernel for CUDA inference; benchmarks switch it off

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        window = self.window_hw or grid_hw
        gh, gw = grid_hw
        ph, pw = ((-gh) % window[0], (-gw) % window[1]) if self.pad_tokens else (0, 0)
        if ph or pw:
            x = F.pad(x.view(x.shape[0], gh, gw, -1), (0, 0, 0, pw, 0, ph)).flatten(1, 2)
            grid_hw = (gh + ph, gw + pw)
        qkv = self.qkv(x)
        hd = qkv.shape[-1] // (3 * self.num_heads)
        if self.emit_plugin and torch.onnx.is_in_onnx_export():
            spec = AttentionSpec.clipped(grid_hw, window, self.num_heads, hd)
            out = torch.onnx.ops.symbolic(spec.op_name, (qkv,), spec.onnx_attributes(), dtype=qkv.dtype,
                                          shape=(*qkv.shape[:2], qkv.shape[2] // 3), version=1)
        elif self.use_kernel and qkv.is_cuda and not (torch.is_grad_enabled() and qkv.requires_grad):
            # Inference on a GPU: the fused kernel, as a custom op that torch.compile can capture.
            out = window_attention_op(qkv, *grid_hw, *window, self.num_heads, hd ** -0.5)
        else:
            out = window_attention_reference(qkv, grid_hw, window, self.num_heads)
        if ph or pw:
            out = out.view(out.shape[0], *grid_hw, -1)[:, :gh, :gw].flatten(1, 2)
        return self.proj(out)


def use_fused_kernel(module: nn.Module, on: bool) -> None:
    """Switch the fused kernel on or off in every WindowAttention of ``module``: benchmarks compare
    the two, and an AOTInductor package for C++ needs it off (the custom op is Python-only)."""
    for m in module.modules():
        if isinstance(m, WindowAttention):
            m.use_kernel = on


class LGWABlock(nn.Module):
    """x += Attn(LN(x)); x += MLP(LN(x)); x += Conv3x3(SiLU(BN(x))) on the token grid.

    BatchNorm keeps statistics per task (``num_tasks``), or, with ``num_tasks=None``, one shared
    set as the authors' code does; ``pad_tokens`` is WindowAttention's.
    """

    def __init__(self, dim: int, num_heads: int, window_hw: tuple[int, int] | None,
                 mlp_ratio: float = 4.0, eps: float = 1e-6, num_tasks: int | None = 3,
                 pad_tokens: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, num_heads, window_hw, pad_tokens)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        norm = nn.BatchNorm2d(dim) if num_tasks is None else TaskBatchNorm2d(dim, num_tasks)
        self.local = nn.Sequential(norm, nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), grid_hw)
        x = x + self.mlp(self.norm2(x))
        n, _, d = x.shape
        grid = x.transpose(1, 2).reshape(n, d, *grid_hw)
        grid = grid + self.local(grid)
        return grid.flatten(2).transpose(1, 2)
