"""LGWA: local-global window attention blocks.

The reference window attention lives here (``window_attention_reference``); the fused
Triton kernel in ``stsun.kernels`` implements exactly the same contract.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import TaskBatchNorm2d

# Per group of four blocks: three window shapes (rows x cols, in tokens), then global.
WINDOW_SCHEDULE: tuple[tuple[int, int] | None, ...] = ((32, 8), (16, 16), (8, 32), None)


def window_attention_reference(
    qkv: torch.Tensor,
    grid_hw: tuple[int, int],
    window_hw: tuple[int, int],
    num_heads: int,
    scale: float | None = None,
    explicit_softmax: bool = False,
) -> torch.Tensor:
    """Multi-head attention inside each window of a token grid.

    qkv: (B, H*W, 3*C), row-major tokens, last axis laid out (3, num_heads, head_dim).
    Windows tile the grid from the top-left; positions beyond the grid (when H or W is not
    a multiple of the window) are padded for the partition but masked out of the softmax,
    so they never receive attention weight. Returns (B, H*W, C), heads concatenated.
    ``explicit_softmax`` computes softmax(QK^T)V with plain matmuls instead of SDPA: the graph a
    generic exporter emits, kept as a baseline for the kernel benchmark.
    """
    b, n, c3 = qkv.shape
    gh, gw = grid_hw
    # A window larger than the grid covers the same keys as one clipped to it.
    wh, ww = min(window_hw[0], gh), min(window_hw[1], gw)
    if n != gh * gw or c3 % (3 * num_heads):
        raise ValueError(f"qkv of shape {tuple(qkv.shape)} does not fit grid {grid_hw} with {num_heads} heads")
    hd = c3 // (3 * num_heads)
    ph, pw = (-gh) % wh, (-gw) % ww
    x = qkv.view(b, gh, gw, c3)
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    nh, nw = (gh + ph) // wh, (gw + pw) // ww
    # (B, nh, wh, nw, ww, 3, heads, hd) -> (3, B*nh*nw, heads, wh*ww, hd)
    x = x.view(b, nh, wh, nw, ww, 3, num_heads, hd).permute(5, 0, 1, 3, 6, 2, 4, 7)
    q, k, v = x.reshape(3, b * nh * nw, num_heads, wh * ww, hd).unbind(0)
    mask = None
    if ph or pw:
        rows = torch.arange(nh * wh, device=qkv.device).view(nh, 1, wh, 1) < gh
        cols = torch.arange(nw * ww, device=qkv.device).view(1, nw, 1, ww) < gw
        valid = (rows & cols).reshape(nh * nw, 1, 1, wh * ww)  # keys inside the grid
        mask = valid.repeat(b, 1, 1, 1)
    if explicit_softmax:
        scores = (q @ k.transpose(-2, -1)) * (hd ** -0.5 if scale is None else scale)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = scores.softmax(-1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # (B*nh*nw, heads, wh*ww, hd) -> (B, nh*wh, nw*ww, heads*hd), then crop the padding
    out = out.view(b, nh, nw, num_heads, wh, ww, hd).permute(0, 1, 4, 2, 5, 3, 6)
    out = out.reshape(b, nh * wh, nw * ww, num_heads * hd)[:, :gh, :gw]
    return out.reshape(b, n, num_heads * hd)


class WindowAttention(nn.Module):
    """qkv projection -> window (or global) attention -> output projection."""

    def __init__(self, dim: int, num_heads: int, window_hw: tuple[int, int] | None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window_hw = window_hw
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.emit_plugin = False  # ONNX export: one custom WindowAttention node (a TensorRT plugin)
        self.use_kernel = True  # the fused kernel for CUDA inference; benchmarks switch it off

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        window = self.window_hw or grid_hw
        qkv = self.qkv(x)
        hd = qkv.shape[-1] // (3 * self.num_heads)
        if self.emit_plugin and torch.onnx.is_in_onnx_export():
            wh, ww = min(window[0], grid_hw[0]), min(window[1], grid_hw[1])
            # attribute order = the TensorRT plugin's (stsun.export.tensorrt_plugin); aot=1 selects
            # its ahead-of-time kernel, so the engine runs without Python
            attrs = {"grid_h": grid_hw[0], "grid_w": grid_hw[1], "win_h": wh, "win_w": ww,
                     "num_heads": self.num_heads, "head_dim": hd, "scale": hd ** -0.5,
                     "plugin_namespace": "stsun", "plugin_version": "1", "aot": True}
            out = torch.onnx.ops.symbolic("stsun::WindowAttention", (qkv,), attrs, dtype=qkv.dtype,
                                          shape=(*qkv.shape[:2], qkv.shape[2] // 3), version=1)
        elif self.use_kernel and qkv.is_cuda and not (torch.is_grad_enabled() and qkv.requires_grad):
            # Inference on a GPU: the fused kernel, as a custom op that torch.compile can capture.
            from stsun.kernels.ops import window_attention_op

            out = window_attention_op(qkv, *grid_hw, *window, self.num_heads, hd ** -0.5)
        else:
            out = window_attention_reference(qkv, grid_hw, window, self.num_heads)
        return self.proj(out)


class LGWABlock(nn.Module):
    """x += Attn(LN(x)); x += MLP(LN(x)); x += Conv3x3(SiLU(BN(x))) on the token grid."""

    def __init__(self, dim: int, num_heads: int, window_hw: tuple[int, int] | None,
                 mlp_ratio: float = 4.0, eps: float = 1e-6, num_tasks: int = 3) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, num_heads, window_hw)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.local = nn.Sequential(TaskBatchNorm2d(dim, num_tasks), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), grid_hw)
        x = x + self.mlp(self.norm2(x))
        n, _, d = x.shape
        grid = x.transpose(1, 2).reshape(n, d, *grid_hw)
        grid = grid + self.local(grid)
        return grid.flatten(2).transpose(1, 2)
