"""Inputs to try every journey on, written on the spot (``stsun demo -o DIR``), and the small on-disk
datasets in the layouts users bring that the tests write: a two-date Sentinel-2 scene, the same
dates as a SAFE product (baseline 05.10) and as STAC items with an ItemCollection, and a
LEVIR-style aerial change dataset with a 256 px profile for it."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from stsun.data.synthetic import S2_20M_BANDS, smooth_noise, write_band_files, write_safe, write_scene
from stsun.profiles import load_profile

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


S2_COMMON = {"B2": "blue", "B3": "green", "B4": "red", "B5": "rededge1", "B6": "rededge2", "B7": "rededge3",
             "B8": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22"}


def write_stac(date_files: list[Path], out: Path, tile: str = "33UUP") -> Path:
    """Each date as band files (20 m bands at 20 m) and a STAC item (``dateN/item.json``), and an
    ItemCollection of them (``catalogue.json``, what ``stsun predict-many`` pairs per tile)."""
    import rasterio
    from rasterio.warp import transform_bounds

    profile = load_profile("sentinel2-scd")
    items = []
    for t, date in enumerate(date_files):
        d = out / f"date{t + 1}"
        paths = write_band_files(date, profile, d, lambda b, r: f"T{tile}_{b}_{round(r)}m.tif", S2_20M_BANDS)
        with rasterio.open(date) as src:
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        item = {"type": "Feature", "stac_version": "1.0.0", "id": f"S2B_{tile}_{2023 + t}0601",
                "bbox": [west, south, east, north],
                "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                                 [west, north], [west, south]]]},
                "properties": {"datetime": f"{2023 + t}-06-01T10:00:00Z", "platform": "sentinel-2b",
                               "s2:mgrs_tile": tile, "eo:cloud_cover": 0},
                "links": [], "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
                "assets": {S2_COMMON[b]: {"href": p.name, "type": "image/tiff; application=geotiff",
                                          "eo:bands": [{"name": b, "common_name": S2_COMMON[b]}]}
                           for b, p in paths.items()}}
        (d / "item.json").write_text(json.dumps(item, indent=1) + "\n")
        items.append({**item, "assets": {k: {**a, "href": f"date{t + 1}/{a['href']}"}
                                         for k, a in item["assets"].items()}})
    catalogue = out / "catalogue.json"
    catalogue.write_text(json.dumps({"type": "FeatureCollection", "features": items}, indent=1) + "\n")
    return catalogue


def write_demo(out: str | Path, size: int = 512, pairs: int = 10) -> dict[str, Path]:
    """Every demo input under ``out``; returns what was written, by name."""
    out = Path(out)
    profile = load_profile("sentinel2-scd")
    scene = write_scene(profile, out / "scene", size=size, seed=0)
    written = {"scene": out / "scene"}
    for t, date in enumerate(scene["dates"]):
        written[f"safe{t + 1}"] = write_safe(date, profile, out / "safe", when=f"{2023 + t}0601T100559",
                                             driver="JP2OpenJPEG")
    written["catalogue"] = write_stac(scene["dates"], out / "stac")
    written["levir"] = write_change_pairs(out / "levir", pairs, size=256)
    written["levir_profile"] = aerial_bcd_profile(out / "aerial-bcd-256.toml")
    return written
