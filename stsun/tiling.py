"""The one tile grid: where square tiles start so that they cover a raster.

Scenes (``stsun.runtime.scene``), evaluation over user datasets (``stsun.data.datasets``) and
predict-many's tile counts (``stsun.app.many``) all use it, so the tiles counted are the tiles run.
"""
from __future__ import annotations


def resolve_overlap(tile: int, overlap: int | None) -> int:
    """Pixels neighbouring tiles share: ``overlap``, or a quarter tile when None (the scene
    default); ValueError unless it is in [0, tile)."""
    overlap = tile // 4 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, {tile}), got {overlap}")
    return overlap


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, length): regular steps, the last one flush with the end; [0] alone
    when the length is at most a tile (that tile is padded)."""
    if not 0 < stride <= tile:  # a larger stride would leave gaps, a non-positive one never ends
        raise ValueError(f"stride must be in (0, {tile}], got {stride}")
    if length <= tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


class TileGrid:
    """Origins of the ``tile`` x ``tile`` tiles covering a ``height`` x ``width`` raster, neighbours
    sharing ``overlap`` pixels (None: a quarter tile; datasets pass 0)."""

    def __init__(self, height: int, width: int, tile: int, overlap: int | None = None) -> None:
        self.tile = tile
        self.overlap = resolve_overlap(tile, overlap)
        self.stride = tile - self.overlap
        self.rows = tile_starts(height, tile, self.stride)
        self.cols = tile_starts(width, tile, self.stride)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)
