"""``torch.ops.stsun.window_attention``: the fused kernel as a PyTorch custom op.

A custom op is opaque to torch.compile / torch.export (they capture it as one node instead of
tracing into Triton), and it dispatches by device: the Triton kernel on CUDA, the PyTorch
reference everywhere else, with identical semantics.
"""
from __future__ import annotations

import torch

from .reference import window_attention_reference


@torch.library.custom_op("stsun::window_attention", mutates_args=())
def window_attention_op(qkv: torch.Tensor, grid_h: int, grid_w: int, win_h: int, win_w: int,
                        num_heads: int, scale: float) -> torch.Tensor:
    if qkv.is_cuda:
        from .window_kernel import window_attention  # needs triton, present with the gpu extra

        return window_attention(qkv, (grid_h, grid_w), (win_h, win_w), num_heads, scale)
    return window_attention_reference(qkv, (grid_h, grid_w), (win_h, win_w), num_heads, scale)


@window_attention_op.register_fake
def _(qkv: torch.Tensor, grid_h: int, grid_w: int, win_h: int, win_w: int, num_heads: int,
      scale: float) -> torch.Tensor:
    b, n, c3 = qkv.shape
    return qkv.new_empty(b, n, c3 // 3)
