"""Fused LGWA window attention in OpenAI Triton: one launch, no padding or partition copies.

Contract (identical to ``stsun.kernels.reference.window_attention_reference``, the PyTorch reference):
qkv (B, H*W, 3*C) in row-major token order, last axis laid out (3, num_heads, head_dim);
windows tile the grid from the top-left; window == grid means global attention; positions
outside the grid take no part in the softmax; returns (B, H*W, C) with heads concatenated.

Each program owns BLOCK_M queries of one window for one (batch, head). It gathers Q, K and V
straight from ``qkv`` with window index arithmetic (token = row * W + col), keeps an online
softmax in registers (flash-attention style, exp2 with log2(e) folded into the scale), masks
keys beyond the grid instead of padding them, and writes its rows of the output in place.
Nothing of window or attention-matrix size is ever stored in device memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _window_attention_fwd(
    # TensorRT's AOT plugin calling convention: input pointers, int32 scalars, output pointers
    # (qk_scale is a compile-time constant there; see stsun.kernels.aot)
    qkv_ptr, qk_scale, n_tokens, grid_h, grid_w, windows_per_row, out_ptr,
    C: tl.constexpr, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    WIN_H: tl.constexpr, WIN_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr,
):
    WIN_TOKENS: tl.constexpr = WIN_H * WIN_W
    M_BLOCKS: tl.constexpr = (WIN_TOKENS + BLOCK_M - 1) // BLOCK_M
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    window = pid_m // M_BLOCKS
    row0 = (window // windows_per_row) * WIN_H
    col0 = (window % windows_per_row) * WIN_W
    b = pid_bh // NUM_HEADS
    h = pid_bh % NUM_HEADS
    # 64-bit batch offset: B * H*W * 3C can exceed 2**31 for large batches of large models
    base = qkv_ptr + b.to(tl.int64) * n_tokens * (3 * C) + h * HEAD_DIM
    out_base = out_ptr + b.to(tl.int64) * n_tokens * C + h * HEAD_DIM

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    offs_m = (pid_m % M_BLOCKS) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_row = row0 + offs_m // WIN_W
    q_col = col0 + offs_m % WIN_W
    q_ok = (offs_m < WIN_TOKENS) & (q_row < grid_h) & (q_col < grid_w)
    q_tok = q_row * grid_w + q_col
    q = tl.load(base + q_tok[:, None] * (3 * C) + offs_d[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    # finite initial max: a key block with no valid key then contributes exp2(-inf) = 0, not NaN
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, WIN_TOKENS, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k_row = row0 + offs_n // WIN_W
        k_col = col0 + offs_n % WIN_W
        k_ok = (offs_n < WIN_TOKENS) & (k_row < grid_h) & (k_col < grid_w)
        k_tok = k_row * grid_w + k_col
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(base + C + k_tok[:, None] * (3 * C) + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(base + 2 * C + k_tok[:, None] * (3 * C) + offs_d[None, :], mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(out_base + q_tok[:, None] * C + offs_d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=q_ok[:, None] & d_ok[None, :])


@dataclass(frozen=True)
class Launch:
    """Everything a launch of the kernel depends on besides the tensors and the batch size;
    shared by the JIT path below and the ahead-of-time build (stsun.kernels.aot)."""

    grid_hw: tuple[int, int]
    window_hw: tuple[int, int]  # clipped to the grid
    num_heads: int
    head_dim: int

    @classmethod
    def of(cls, grid_hw: tuple[int, int], window_hw: tuple[int, int], num_heads: int, head_dim: int) -> "Launch":
        if not 16 <= head_dim <= 128:
            raise ValueError(f"head_dim must be in [16, 128], got {head_dim}")
        gh, gw = grid_hw
        return cls((gh, gw), (min(window_hw[0], gh), min(window_hw[1], gw)), num_heads, head_dim)

    @property
    def block(self) -> int:
        """BLOCK_M = BLOCK_N: every tl.dot dimension >= 16, no larger than the window needs."""
        wh, ww = self.window_hw
        return min(64 if self.head_dim <= 64 else 32, max(16, triton.next_power_of_2(wh * ww)))

    @property
    def windows_per_row(self) -> int:
        return triton.cdiv(self.grid_hw[1], self.window_hw[1])

    @property
    def programs_per_head(self) -> int:
        """Program-grid x extent: query blocks of every window; the y extent is batch * heads."""
        wh, ww = self.window_hw
        n_windows = triton.cdiv(self.grid_hw[0], wh) * self.windows_per_row
        return n_windows * triton.cdiv(wh * ww, self.block)

    def scalars(self) -> tuple[int, int, int, int]:
        """The kernel's int32 arguments: n_tokens, grid_h, grid_w, windows_per_row."""
        gh, gw = self.grid_hw
        return gh * gw, gh, gw, self.windows_per_row

    def constexprs(self, dot_fp32: bool = False) -> dict[str, int | bool]:
        return dict(C=self.num_heads * self.head_dim, NUM_HEADS=self.num_heads, HEAD_DIM=self.head_dim,
                    WIN_H=self.window_hw[0], WIN_W=self.window_hw[1], BLOCK_M=self.block, BLOCK_N=self.block,
                    BLOCK_D=max(16, triton.next_power_of_2(self.head_dim)), DOT_FP32=dot_fp32)


def window_attention(qkv: torch.Tensor, grid_hw: tuple[int, int], window_hw: tuple[int, int],
                     num_heads: int, scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused window attention (see module docstring). fp32, fp16 or bf16; fp32 accumulation.
    ``out``, if given, is a contiguous (B, H*W, C) tensor of qkv's dtype written in place."""
    b, n, c3 = qkv.shape
    gh, gw = grid_hw
    if n != gh * gw or c3 % (3 * num_heads):
        raise ValueError(f"qkv of shape {tuple(qkv.shape)} does not fit grid {grid_hw} with {num_heads} heads")
    if qkv.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"window_attention supports float32, float16 and bfloat16, got {qkv.dtype}")
    c = c3 // 3
    launch = Launch.of(grid_hw, window_hw, num_heads, c // num_heads)
    qkv = qkv.contiguous()
    if out is None:
        out = torch.empty(b, n, c, dtype=qkv.dtype, device=qkv.device)
    elif out.shape != (b, n, c) or out.dtype != qkv.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {(b, n, c)} {qkv.dtype} tensor")
    scale = launch.head_dim ** -0.5 if scale is None else scale
    _window_attention_fwd[(launch.programs_per_head, b * num_heads)](
        qkv, scale * LOG2E, *launch.scalars(), out,
        # bf16 tl.dot is wrong under the CPU interpreter (triton issue 11584): upcast there only
        **launch.constexprs(dot_fp32=_INTERPRET and qkv.dtype == torch.bfloat16),
    )
    return out


def attention_flops(batch: int, grid_hw: tuple[int, int], window_hw: tuple[int, int], channels: int) -> float:
    """Useful FLOPs (QK^T and PV over valid tokens only), for TFLOP/s reporting."""
    gh, gw = grid_hw
    wh, ww = min(window_hw[0], gh), min(window_hw[1], gw)
    total = 0
    for r in range(0, gh, wh):
        for c in range(0, gw, ww):
            t = min(wh, gh - r) * min(ww, gw - c)
            total += 4 * t * t * channels
    return float(batch * total)


__all__ = ["Launch", "window_attention", "attention_flops"]
