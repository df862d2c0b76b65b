"""Input checks shared by the model and every runtime backend.

They run before any compute so that a bad tile fails with a message that names what was
expected, instead of a shape error deep inside a graph.
"""
from __future__ import annotations

import numpy as np

from stsun.errors import InputError


def check_tiles(x, *, t_in: int, c_in: int, tile_size: int | None, allowed_dtypes: tuple[str, ...],
                context: str, band_names: tuple[str, ...] | None = None,
                tile_multiple: int | None = None) -> None:
    """Check a (B, T_in, C_in, H, W) batch, numpy array or torch tensor.

    ``tile_size`` fixes H = W (a built engine); ``tile_multiple`` instead allows any square
    tile that is a multiple of it (the dynamic model).
    """
    shape = tuple(x.shape)
    want = f"(B, T_in={t_in}, C_in={c_in}, H={tile_size or 'H'}, W={tile_size or 'W'})"
    if len(shape) != 5:
        raise InputError(f"{context}: expected a 5-D batch {want}, got shape {shape}")
    _, t, c, h, w = shape
    if shape[0] < 1:
        raise InputError(f"{context}: empty batch (B=0)")
    if t != t_in:
        raise InputError(f"{context}: wrong number of dates: expected T_in={t_in}, got {t} (shape {shape})")
    if c != c_in:
        names = f" ({', '.join(band_names)})" if band_names else ""
        raise InputError(f"{context}: wrong band count: expected C_in={c_in}{names}, got {c} (shape {shape})")
    if tile_size is not None and (h, w) != (tile_size, tile_size):
        raise InputError(f"{context}: wrong tile size: expected {tile_size} x {tile_size}, got {h} x {w}")
    if tile_multiple is not None and (h != w or h % tile_multiple):
        raise InputError(f"{context}: tile must be square with a side that is a multiple of {tile_multiple}, "
                         f"got {h} x {w}")
    dtype = str(x.dtype).removeprefix("torch.")
    if dtype not in allowed_dtypes:
        raise InputError(f"{context}: wrong dtype: expected {' or '.join(allowed_dtypes)}, got {dtype}")
    finite = x.isfinite().all() if hasattr(x, "isfinite") else np.isfinite(x).all()
    if not bool(finite):
        raise InputError(f"{context}: input contains NaN or infinite values; mask nodata before inference")
