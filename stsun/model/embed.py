"""Fixed sin-cos embeddings for metadata scalars and token-grid positions."""
from __future__ import annotations

import torch


def sincos_1d(values: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) scalars -> (..., dim) sin-cos features with periods from 2*pi to 2*pi*10000."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float32, device=values.device) / (dim / 2.0)
    omega = 1.0 / (10000.0 ** omega)
    angles = values.float().unsqueeze(-1) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_2d(grid_h: int, grid_w: int, dim: int, columns_first: bool = False) -> torch.Tensor:
    """(grid_h * grid_w, dim) position embedding in row-major token order: half rows, half columns
    (``columns_first``: half columns, half rows, as the authors' code initialises theirs)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dim must be a multiple of 4, got {dim}")
    rows = sincos_1d(torch.arange(grid_h, dtype=torch.float32).repeat_interleave(grid_w), dim // 2)
    cols = sincos_1d(torch.arange(grid_w, dtype=torch.float32).repeat(grid_h), dim // 2)
    return torch.cat([cols, rows] if columns_first else [rows, cols], dim=-1)
