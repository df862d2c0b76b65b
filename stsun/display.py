"""How imagery is shown to people: a per-band percentile stretch that suits any sensor (Sentinel-2
reflectance, 8-bit aerial RGB, Landsat), instead of a gain tuned for one."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tqdm import tqdm


def stretch(bands: np.ndarray, valid: np.ndarray | None = None, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """(C, H, W) values -> (H, W, C) in [0, 1]: each band's ``low``..``high`` percentiles of its
    valid pixels map to 0..1 (nodata pixels are black)."""
    bands = np.asarray(bands, dtype=np.float32)
    valid = np.isfinite(bands).all(axis=0) if valid is None else valid & np.isfinite(bands).all(axis=0)
    out = np.zeros(bands.shape, np.float32)
    if valid.any():
        for i, band in enumerate(bands):
            lo, hi = np.percentile(band[valid], (low, high))
            out[i] = np.clip((band - lo) / max(hi - lo, 1e-12), 0, 1)
    out[:, ~valid] = 0
    return out.transpose(1, 2, 0)


def progress_bar(iterable=None, show: bool = True, **options) -> "tqdm":
    """A tqdm bar where a person watches a terminal: none when ``show`` is false, and none when
    the output is no terminal (a log file would get a line per refresh)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None if show else True, **options)
