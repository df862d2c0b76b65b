"""The one tile grid (stsun.tiling) that scenes, datasets and predict-many share."""
import pytest

from stsun.tiling import TileGrid, resolve_overlap, tile_starts


def covered(starts: list[int], tile: int, length: int) -> set[int]:
    return {i for s in starts for i in range(s, min(s + tile, length))}


def test_a_raster_smaller_than_a_tile_is_one_padded_tile():
    assert tile_starts(100, 256, 192) == [0]
    assert tile_starts(256, 256, 192) == [0]  # exactly one tile
    grid = TileGrid(150, 200, 256)
    assert (grid.rows, grid.cols, len(grid)) == ([0], [0], 1)


def test_an_exact_multiple_without_overlap_gives_disjoint_tiles():
    assert tile_starts(768, 256, 256) == [0, 256, 512]
    grid = TileGrid(512, 768, 256, overlap=0)
    assert (grid.rows, grid.cols, len(grid)) == ([0, 256], [0, 256, 512], 6)


def test_overlapping_tiles_step_by_the_stride_and_the_last_is_flush_with_the_edge():
    assert tile_starts(600, 256, 192) == [0, 192, 344]
    assert tile_starts(300, 256, 256) == [0, 44]  # overlap 0: the last tile shifts inward, not past the edge
    assert tile_starts(1100, 256, 192) == [0, 192, 384, 576, 768, 844]
    for length, stride in [(600, 192), (300, 256), (1100, 192), (257, 1), (513, 200)]:
        starts = tile_starts(length, 256, stride)
        assert starts[-1] + 256 == length and starts == sorted(set(starts))
        assert covered(starts, 256, length) == set(range(length))
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_the_default_overlap_is_a_quarter_tile_and_a_bad_one_is_refused():
    assert resolve_overlap(256, None) == 64 and resolve_overlap(256, 0) == 0 and resolve_overlap(256, 255) == 255
    grid = TileGrid(600, 448, 256)
    assert (grid.overlap, grid.stride, grid.rows, grid.cols) == (64, 192, [0, 192, 344], [0, 192])
    for bad in (-1, 256, 300):
        with pytest.raises(ValueError, match=r"overlap must be in \[0, 256\)"):
            TileGrid(600, 600, 256, bad)
    for bad in (0, -5, 257):
        with pytest.raises(ValueError, match="stride must be"):
            tile_starts(600, 256, bad)
