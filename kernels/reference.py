"""The PyTorch reference for LGWA window attention: the contract the fused kernel implements.

Pad + partition + SDPA + reverse, written for clarity; the fused Triton kernel
(``window_kernel``) computes exactly this without the copies, and the tests hold the two
together in float64. The model calls this wherever the kernel does not run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
