"""Fused LGWA window-attention kernel (Triton) and its PyTorch custom op.

``stsun.kernels.window_attention`` needs triton (the ``gpu`` or ``dev`` extra); importing this
package does not, so CPU-only installs keep working on the reference path. The kernel lives in
``window_kernel`` (a module named ``window_attention`` would shadow this function once imported).
"""
from __future__ import annotations


def window_attention(qkv, grid_hw, window_hw, num_heads, scale=None, out=None):
    """The fused Triton kernel (see the ``stsun.kernels.window_kernel`` module docstring)."""
    from .window_kernel import window_attention as fused

    return fused(qkv, grid_hw, window_hw, num_heads, scale, out)
