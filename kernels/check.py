"""The fused kernel against the float64 reference: the cases and the check, shared by
tests/test_kernel.py (CPU, Triton interpreter) and benchmarks/gpu.py (CUDA).

Each check draws fresh random inputs, poisons the output with NaN (an element the kernel does
not write stays NaN and fails the check) and compares with the reference computed in float64.
"""
from __future__ import annotations

import torch

from .reference import window_attention_reference

# Window kinds of the model's schedule (None: global, the window is the grid) and grids that
# they tile evenly (32x32) and unevenly (30x27, 20x36: partial windows, masked keys).
WINDOWS: dict[str, tuple[int, int] | None] = {"32x8": (32, 8), "16x16": (16, 16), "8x32": (8, 32), "global": None}
GRIDS: tuple[tuple[int, int], ...] = ((32, 32), (30, 27), (20, 36))
HEAD_DIMS = (16, 24, 64, 128)


def tolerance(dtype: torch.dtype, device: str) -> float:
    """Max |error| allowed; on a GPU an fp32 tl.dot runs in tf32, hence the looser fp32 bound there."""
    return {torch.float32: 2e-3 if device == "cuda" else 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]


def kernel_error(grid: tuple[int, int], window: tuple[int, int] | None, heads: int, head_dim: int,
                 dtype: torch.dtype, device: str, batch: int = 1, seed: int = 0) -> dict[str, float]:
    """Max absolute and relative L2 error of the kernel against the float64 reference (NaN where
    the kernel left an element unwritten)."""
    from . import window_attention

    window = window or grid
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, grid[0] * grid[1], 3 * heads * head_dim, generator=gen).to(device, dtype)
    out = torch.full((batch, grid[0] * grid[1], heads * head_dim), float("nan"), dtype=dtype, device=device)
    window_attention(qkv, grid, window, heads, out=out)
    ref = window_attention_reference(qkv.double(), grid, window, heads)
    if not torch.isfinite(out).all():
        return {"max_abs": float("nan"), "rel_l2": float("nan")}
    diff = out.double() - ref
    return {"max_abs": diff.abs().max().item(), "rel_l2": (diff.norm() / ref.norm()).item()}


__all__ = ["GRIDS", "HEAD_DIMS", "WINDOWS", "kernel_error", "tolerance"]
