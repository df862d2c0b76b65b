"""Tiles of the user's own imagery for a build (``--data``): int8 calibration, BatchNorm
calibration and the fidelity gates then see what the model will see, not generated tiles.

``--data`` is anything the project already reads, detected in this order:
- a predict-many manifest (JSON job list, CSV, STAC ItemCollection: ``stsun.app.manifest``), each
  job one scene;
- a dataset folder in a layout ``stsun train --data`` detects (``stsun.data.datasets``), with labels;
- otherwise the paths are the T_in dates of one scene (rasters, band directories, SAFE, STAC
  Items: ``stsun.runtime.scene_inputs``), read onto the first date's grid.

Tiles are non-overlapping windows of the profile's tile. Images (samples or scenes) are split
by a seeded shuffle into calibration and held-out images (one image: its windows are split),
so the two sets never share a pixel. Within each set windows are taken round-robin over the
images in a seeded order, windows with more than ``MAX_NODATA`` of their pixels without data
are skipped, and where labels exist each next tile is the first one holding the class the set
has fewest pixels of, so rare classes (change) are represented.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stsun.app.manifest import read_manifest
from stsun.data.datasets import IGNORE, UserDataset, open_dataset
from stsun.errors import DatasetError, ManifestError
from stsun.profiles import Profile

MAX_NODATA = 0.5     # a window with more of its pixels without data is skipped
POOL_FACTOR = 3      # labelled data: windows read per wanted tile, to choose among for class spread
MIN_CLASS_SHARE = 0.01  # a tile "holds" a class when at least this share of its labelled pixels is it

# (row, col) window -> (x (T_in, C_in, tile, tile), valid (tile, tile), target (T_out, tile, tile) or None)
Reader = Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


@dataclass
class Image:
    name: str
    height: int
    width: int
    read: Reader


@dataclass
class TileSet:
    x: np.ndarray                       # (N, T_in, C_in, tile, tile) float32, scaled as the profile says
    target: np.ndarray | None           # (N, T_out, tile, tile) int64 task targets, IGNORE unlabelled
    windows: list[tuple[str, int, int]] = field(default_factory=list)  # (image, row, col)


@dataclass
class UserTiles:
    source: str
    kind: str
    calibration: TileSet
    heldout: TileSet
    record: dict

    @property
    def labelled(self) -> bool:
        return self.heldout.target is not None


def _pad(a: np.ndarray, tile: int, fill) -> np.ndarray:
    if a.shape[-2:] == (tile, tile):
        return a
    out = np.full((*a.shape[:-2], tile, tile), fill, a.dtype)
    out[..., :a.shape[-2], :a.shape[-1]] = a
    return out


def _dataset_images(ds: UserDataset) -> list[Image]:
    tile = ds.profile.tile_size

    def reader(sample) -> Reader:
        def read(row: int, col: int):
            h, w = min(tile, sample.height - row), min(tile, sample.width - col)
            x, target = ds.read(sample, (row, col, h, w))
            # the reader zeroes every band of every date where any date has no data
            valid = _pad(np.any(x != 0, axis=(0, 1)), tile, False)
            return _pad(x, tile, 0.0), valid, _pad(target, tile, IGNORE)
        return read

    return [Image(s.name, s.height, s.width, reader(s)) for s in ds.samples()]


def _scene_images(scenes: list[tuple[str, list[str]]], profile: Profile, stack: contextlib.ExitStack) -> list[Image]:
    """One image per scene (id, date paths): the dates on the first date's grid."""
    from rasterio.windows import Window

    from stsun.runtime.remote import gdal_env, is_remote
    from stsun.runtime.scene_inputs import DateReader, native_grid, resolve_date

    tile = profile.tile_size

    def reader(dates: list[str]) -> tuple[Reader, tuple[int, int]]:
        resolved = [resolve_date(d, profile) for d in dates]
        grid = native_grid(resolved[0], profile)
        opened: list[DateReader] = []  # opened at the first window read: a manifest may list many scenes

        def read(row: int, col: int):
            if not opened:
                opened.extend(DateReader(d, profile, grid, stack) for d in resolved)
            window = Window(col, row, min(tile, grid.width - col), min(tile, grid.height - row))
            with gdal_env() if any(is_remote(d) for d in dates) else contextlib.nullcontext():  # timeouts, retries
                parts = [r.read(window) for r in opened]
            valid = np.logical_and.reduce([v for _, v in parts])
            x = np.stack([b for b, _ in parts])
            x[:, :, ~valid] = 0.0
            return _pad(x, tile, 0.0), _pad(valid, tile, False), None

        return read, grid.shape

    images = []
    for name, dates in scenes:
        read, (height, width) = reader(dates)
        images.append(Image(name, height, width, read))
    return images


def _windows(image: Image, tile: int) -> list[tuple[int, int]]:
    rows = range(0, max(1, image.height - tile + 1), tile)
    cols = range(0, max(1, image.width - tile + 1), tile)
    return [(r, c) for r in rows for c in cols]


def _draw(images: list[Image], n: int, profile: Profile, rng: np.random.Generator, labelled: bool,
          windows: dict[str, list[tuple[int, int]]]) -> tuple[TileSet, int]:
    """``n`` tiles round-robin over ``images``; returns them and how many windows were skipped."""
    queues = [[(im, *w) for w in (windows[im.name][i] for i in rng.permutation(len(windows[im.name])))]
              for im in images]
    order = [item for round_ in zip(*[q + [None] * (max(map(len, queues)) - len(q)) for q in queues])
             for item in round_ if item is not None]
    want = n * POOL_FACTOR if labelled else n
    pool, skipped = [], 0
    for image, row, col in order:
        if len(pool) >= want:
            break
        x, valid, target = image.read(row, col)
        if 1 - valid.mean() > MAX_NODATA:
            skipped += 1
            continue
        pool.append(((image.name, row, col), x, target))
    if not pool:
        raise DatasetError(f"no tile of {', '.join(im.name for im in images[:3])}"
                           f"{' ...' if len(images) > 3 else ''} has data on at least {1 - MAX_NODATA:.0%} "
                           "of its pixels")
    chosen = pool[:n] if not labelled else _spread_classes(pool, n, profile)
    return TileSet(np.stack([c[1] for c in chosen]), np.stack([c[2] for c in chosen]) if labelled else None,
                   [c[0] for c in chosen]), skipped


def _spread_classes(pool: list, n: int, profile: Profile) -> list:
    """Greedy: each next tile is the first in pool order (which is spread over images) holding
    the class the chosen tiles have fewest pixels of; the first tile when none holds it."""
    k = 2 if profile.c_out == 1 else profile.c_out
    counts = [np.bincount(t[t >= 0].ravel(), minlength=k)[:k] for _, _, t in pool]
    present = np.sum(counts, axis=0) > 0
    totals, chosen, left = np.zeros(k, np.int64), [], list(range(len(pool)))
    while left and len(chosen) < n:
        rarest = int(np.where(present, totals, np.iinfo(np.int64).max).argmin())
        pick = next((i for i in left if counts[i][rarest] >= MIN_CLASS_SHARE * max(counts[i].sum(), 1)
                     and counts[i][rarest] > 0), left[0])
        left.remove(pick)
        chosen.append(pool[pick])
        totals += counts[pick]
    return chosen


def _split_images(images: list[Image], n_cal: int, n_held: int, tile: int, rng: np.random.Generator
                  ) -> tuple[list[Image], list[Image], dict, dict]:
    """(calibration images, held-out images, their windows): whole images apart when there are
    several; one image's windows divided between the two otherwise."""
    windows = {im.name: _windows(im, tile) for im in images}
    if len(images) > 1:
        order = [images[i] for i in rng.permutation(len(images))]
        k = min(len(images) - 1, max(1, round(len(images) * n_held / (n_cal + n_held))))
        return order[k:], order[:k], windows, windows
    (im,) = images
    w = [windows[im.name][i] for i in rng.permutation(len(windows[im.name]))]
    if len(w) < 2:
        raise DatasetError(f"{im.name}: one image of {im.height} x {im.width} px holds a single {tile} px tile; "
                           "calibration and held-out tiles need at least two (give more images)")
    k = max(1, round(len(w) * n_held / (n_cal + n_held)))
    return [im], [im], {im.name: w[k:]}, {im.name: w[:k]}


def _images(paths: list[Path], profile: Profile, stack: contextlib.ExitStack) -> tuple[str, list[Image], bool]:
    """(what the data is, its images, whether they carry labels)."""
    if len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() in (".csv", ".json", ".geojson"):
        text = paths[0].read_text(errors="replace").lstrip()
        if paths[0].suffix.lower() == ".csv" or text.startswith("[") or '"FeatureCollection"' in text[:4096]:
            items = stack.enter_context(tempfile.TemporaryDirectory(prefix="stsun-data-items-"))
            manifest = read_manifest(paths[0], profile.t_in, items)
            manifest.write_items()
            return (f"predict-many manifest ({len(manifest.jobs)} scenes)",
                    _scene_images([(j.id, list(j.dates)) for j in manifest.jobs], profile, stack), False)
    if len(paths) == 1 and paths[0].is_dir():
        try:
            ds = open_dataset(paths[0], profile)
        except DatasetError as err:
            if profile.t_in > 1:  # one folder is one date of a scene only when the profile has one date
                raise DatasetError(f"--data {paths[0]}: not a dataset ({err}); a scene is given as its "
                                   f"{profile.t_in} dates (--data once per date) or as a manifest") from None
        else:
            return f"dataset: {ds.layout.description}", _dataset_images(ds), True
    if len(paths) != profile.t_in:
        raise DatasetError(f"--data: {len(paths)} path(s) given; a scene needs profile '{profile.name}''s "
                           f"{profile.t_in} dates (--data once per date), or give one dataset folder or manifest")
    return "scene", _scene_images([(str(paths[0]), [str(p) for p in paths])], profile, stack), False


def draw_user_tiles(paths: list[Path] | tuple[Path, ...], profile: Profile, calibration: int, heldout: int,
                    seed: int = 0) -> UserTiles:
    """``calibration`` and ``heldout`` tiles (fewer where the data has fewer) from ``paths``."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise DatasetError(f"--data {p}: not found")
    rng = np.random.default_rng(seed)
    tile = profile.tile_size
    with contextlib.ExitStack() as stack:
        try:
            kind, images, labelled = _images(paths, profile, stack)
        except ManifestError as err:
            raise DatasetError(str(err)) from None
        cal_images, held_images, cal_windows, held_windows = _split_images(images, calibration, heldout, tile, rng)
        held, skipped_h = _draw(held_images, heldout, profile, rng, labelled, held_windows)
        cal, skipped_c = _draw(cal_images, calibration, profile, rng, labelled, cal_windows)
    source = ", ".join(str(p) for p in paths)
    listing = json.dumps({"calibration": cal.windows, "heldout": held.windows})
    record = {
        "data": source, "kind": kind, "labelled": labelled, "seed": seed, "tile_size": tile,
        "images": len(images), "max_nodata_fraction": MAX_NODATA,
        "calibration": {"tiles": len(cal.x), "images": sorted({w[0] for w in cal.windows}),
                        "skipped_nodata": skipped_c},
        "heldout": {"tiles": len(held.x), "images": sorted({w[0] for w in held.windows}), "skipped_nodata": skipped_h},
        "tiles_sha256": hashlib.sha256(listing.encode()).hexdigest(),  # over the (image, row, col) of every tile
    }
    return UserTiles(source, kind, cal, held, record)


__all__ = ["MAX_NODATA", "TileSet", "UserTiles", "draw_user_tiles"]
