"""Blending overlapping tiles' logits into a scene, one strip of tiles at a time."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def hann_weights(size: int) -> np.ndarray:
    """2-D blending weights: high in the tile centre, small but non-zero at its edges."""
    w = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.maximum(np.outer(w, w), 1e-3).astype(np.float32)


class StripBlender:
    """A rolling accumulator one tile high and the scene's (padded) width wide: tiles' logits are
    added with ``hann_weights``, and the rows no later tile touches are handed out blended. Memory
    is one strip of logits, whatever the scene's height."""

    def __init__(self, t_out: int, c_out: int, tile: int, width: int) -> None:
        self.tile = tile
        self.weights = hann_weights(tile)
        self.acc = np.zeros((t_out, c_out, tile, width), np.float32)
        self.wsum = np.zeros((tile, width), np.float32)
        self.top = 0  # scene row held by accumulator row 0

    def start_strip(self, y0: int) -> None:
        """Make accumulator row 0 scene row ``y0`` (strips come top to bottom): the rows above it
        were handed out already, so the accumulator rolls up and zeroes its freed rows."""
        shift = y0 - self.top
        if shift:
            self.acc[:, :, :-shift], self.acc[:, :, -shift:] = self.acc[:, :, shift:].copy(), 0
            self.wsum[:-shift], self.wsum[-shift:] = self.wsum[shift:].copy(), 0
            self.top = y0

    def add(self, cols: Iterable[int], logits: Iterable[np.ndarray]) -> None:
        """Add tiles of the current strip: ``logits[i]`` (T_out, C_out, tile, tile) at column ``cols[i]``."""
        t = self.tile
        for x0, lg in zip(cols, logits):
            self.acc[:, :, :t, x0:x0 + t] += lg * self.weights
            self.wsum[:t, x0:x0 + t] += self.weights

    def blended(self, rows: int, width: int) -> np.ndarray:
        """(T_out, C_out, rows, width) blended logits of the strip's first ``rows`` rows."""
        # pixels no tile covered are nodata anyway
        return self.acc[:, :, :rows, :width] / np.maximum(self.wsum[:rows, :width], 1e-12)[None, None]
