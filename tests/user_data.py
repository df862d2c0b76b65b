"""Tiny on-disk datasets in the layouts users bring, written on the fly for the tests."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from stsun.profiles import load_profile
from stsun.synthetic import smooth_noise

GRASS, SOIL = np.array([70, 115, 55]), np.array([150, 122, 92])
ROOFS = np.array([[205, 205, 210], [175, 72, 60], [95, 95, 110]])


def write_raster(path: Path, array: np.ndarray, **extra) -> Path:
    """(bands, H, W) or (H, W) array to PNG/GeoTIFF by suffix (no georeference)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    array = array[None] if array.ndim == 2 else array
    driver = "PNG" if path.suffix == ".png" else "GTiff"
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=array.shape[2], height=array.shape[1],
                           count=array.shape[0], dtype=array.dtype.name, **extra) as dst:
            dst.write(array)
    return path


def _rect(rng: np.random.Generator, size: int) -> tuple[slice, slice]:
    h, w = rng.integers(size // 16, size // 5, size=2)
    r, c = rng.integers(0, size - h), rng.integers(0, size - w)
    return slice(r, r + h), slice(c, c + w)


def aerial_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two 8-bit RGB aerial images of one place (grass and soil, buildings) and the change
    mask: buildings built or demolished between them, under a small change of light."""
    mix = 1 / (1 + np.exp(-2 * smooth_noise(rng, (size, size), 20)))
    ground = GRASS[:, None, None] * mix + SOIL[:, None, None] * (1 - mix)
    ground = ground * (1 + 0.06 * smooth_noise(rng, (size, size), 1.5))
    before = ground.copy()
    old = [_rect(rng, size) for _ in range(rng.integers(2, 5))]
    for rr, cc in old:
        before[:, rr, cc] = ROOFS[rng.integers(len(ROOFS))][:, None, None]
    after = before * rng.uniform(0.9, 1.1) + rng.uniform(-8, 8)
    change = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(4, 9)):  # new buildings
        rr, cc = _rect(rng, size)
        after[:, rr, cc] = ROOFS[rng.integers(len(ROOFS))][:, None, None] * rng.uniform(0.9, 1.1)
        change[rr, cc] = 1
    rr, cc = old[0]  # one demolished
    after[:, rr, cc] = ground[:, rr, cc]
    change[rr, cc] = 1
    noise = lambda: rng.normal(0, 3, (3, size, size))  # noqa: E731
    to8 = lambda a: np.clip(a + noise(), 0, 255).astype(np.uint8)  # noqa: E731
    return to8(before), to8(after), change


def write_change_pairs(root: Path, n: int, size: int = 256, seed: int = 0, suffix: str = ".png",
                       label_scale: int = 255) -> Path:
    """LEVIR-CD layout: A/, B/, label/ with same-named images, labels 0/255 (or 0/1)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        a, b, change = aerial_pair(rng, size)
        write_raster(root / "A" / f"{i:04d}{suffix}", a)
        write_raster(root / "B" / f"{i:04d}{suffix}", b)
        write_raster(root / "label" / f"{i:04d}{suffix}", (change * label_scale).astype(np.uint8))
    return root


def toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_profile(path: Path, base: str, **updates) -> Path:
    """A profile TOML: the built-in ``base`` with ``updates`` (tables: scaling, label_colours)."""
    data = {k: v for k, v in json.loads(load_profile(base).model_dump_json()).items() if v is not None}
    data.update(updates)
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and k != "bands"]
    for table in ("scaling", "label_colours"):
        if data.get(table):
            lines += [f"[{table}]"] + [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data[table].items()]
    for band in data["bands"]:
        lines += ["[[bands]]"] + [f"{k} = {toml_value(v)}" for k, v in band.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def aerial_bcd_profile(path: Path) -> Path:
    """LEVIR-CD's profile (aerial RGB, 0.5 m) at a 256 px tile, as a user would copy it."""
    return write_profile(path, "levir-cd-bcd", name="aerial-bcd-256", tile_size=256)
