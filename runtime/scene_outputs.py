"""What a scene run writes: the map (and on request the class probabilities), their tags, and
the tally of the map's classes.

Both are written as tiled GeoTIFFs in a work folder beside the output, a strip of rows at a time,
then tagged and copied into Cloud-Optimized GeoTIFFs at their final paths. Overviews are made by
MODE resampling for the map (a class or change code survives, never an average of codes).
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np

from stsun.atomic import atomic_path
from stsun.classmaps import CHANGE_COLOURS, class_colours, encode_maps, map_layout
from stsun.profiles import Profile

from .scene_inputs import Grid

ENCODING = """Output bands by task (uint8, or uint16 when a from-to code needs it; nodata 255 / 65535):
- ss:  1 band, class index (single-class profiles: 1 = the class, 0 = not)
- bcd: T_out bands, 1 = change between dates t and t+1
- scd: T_in bands of class index per date, then T_in - 1 from-to change bands with
       0 = no change, else 1 + from * C_out + to."""
PROBABILITY_ENCODINGS = ("float32", "uint8")  # uint8: round(p * 254), 255 = nodata, band scale 1/254
COG_BLOCK = 256  # also the tile size: maps of a few tiles still get overviews


class Tally:
    """Pixel counts of the map's bands, gathered as its rows are written: per class band the
    pixels of each class, per change band (bcd, scd from-to) the changed pixels."""

    def __init__(self, p, count: int) -> None:
        self.p, self.valid, self.total = p, 0, 0
        self.hist = np.zeros((count, max(p.c_out, 2)), np.int64)

    def add(self, bands: np.ndarray, valid: np.ndarray) -> None:
        self.valid += int(valid.sum())
        self.total += valid.size
        for b, band in enumerate(bands):
            values = band[valid]
            if self.p.task == "scd" and b >= self.p.t_out:
                values = values > 0
            self.hist[b] += np.bincount(values.ravel().astype(np.int64), minlength=self.hist.shape[1])

    def summary(self) -> dict:
        """{"km2": area with data, "valid_share", "bands": {band: {class or "changed": share of the
        area with data}}, "changed_km2": {change band: km2}}."""
        p = self.p
        km2 = (p.gsd_m / 1000) ** 2
        out = {"km2": round(self.valid * km2, 4), "valid_share": round(self.valid / max(self.total, 1), 4),
               "bands": {}, "changed_km2": {}}
        for b, hist in enumerate(self.hist):
            name = band_name(p, b)
            if p.task == "bcd" or (p.task == "scd" and b >= p.t_out):
                out["bands"][name] = {"changed": round(hist[1] / max(self.valid, 1), 4)}
                out["changed_km2"][name] = round(hist[1] * km2, 4)
            else:
                labels = p.classes if p.c_out > 1 else (f"not {p.classes[0]}", p.classes[0])
                out["bands"][name] = {c: round(hist[i] / max(self.valid, 1), 4) for i, c in enumerate(labels)}
        return out


def band_name(p, b: int) -> str:
    if p.task == "ss":
        return "class"
    if p.task == "bcd":
        return f"change_date{b + 1}_to_date{b + 2}"
    return f"class_date{b + 1}" if b < p.t_out else f"fromto_date{b - p.t_out + 1}_to_date{b - p.t_out + 2}"


def probabilities(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def tag_map(dst, p: Profile, backend: str, dn_offsets: list) -> None:
    """The map's tags (profile, task, classes, backend, encoding, the DN offsets used, colours) and
    band names."""
    count = dst.count
    dst.update_tags(profile=p.name, task=p.task, classes=",".join(p.classes), backend=backend,
                    encoding=ENCODING, dn_offset=json.dumps(dn_offsets))
    colours = CHANGE_COLOURS if p.task == "bcd" else class_colours(p.c_out)
    # TIFF palettes exist for single-band images only; every map also carries its colours as a tag
    dst.update_tags(colormap=json.dumps({i: c for i, c in enumerate(colours)}))
    if count == 1:
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(colours)})
    for b in range(count):
        dst.set_band_description(b + 1, band_name(p, b))


def tag_probabilities(dst, p: Profile, backend: str, encoding: str) -> None:
    """The probabilities' band names (p_dateT_CLASS), scale (uint8) and tags."""
    u8 = encoding == "uint8"
    for b in range(p.t_out * p.c_out):
        dst.set_band_description(b + 1, f"p_date{b // p.c_out + 1}_{p.classes[b % p.c_out]}")
    if u8:
        dst.scales = [1 / 254] * (p.t_out * p.c_out)
    dst.update_tags(profile=p.name, task=p.task, classes=",".join(p.classes), backend=backend,
                    encoding=f"band p_dateT_CLASS: the probability of CLASS on date T "
                             f"({encoding}{': round(p * 254), 255 = nodata' if u8 else ', NaN = nodata'})")


class SceneOutputs:
    """The working GeoTIFFs of one scene run (the map, and the probabilities when
    ``probabilities_encoding`` is given), open on ``stack`` in a work folder beside ``out``."""

    def __init__(self, out: Path, p: Profile, grid: Grid, probabilities_encoding: str | None,
                 stack: contextlib.ExitStack) -> None:
        import rasterio

        self.p, self.encoding = p, probabilities_encoding
        count, dtype, self.nodata = map_layout(p.task, p.t_out, p.c_out)
        height, width = grid.shape
        meta = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
                "nodata": self.nodata, "crs": grid.crs, "transform": grid.transform, "tiled": True,
                "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK,
                "photometric": "MINISBLACK"}  # 3 uint8 bands would otherwise default to RGB
        self.work = Path(stack.enter_context(tempfile.TemporaryDirectory(
            dir=out.parent if out.parent.is_dir() else None, prefix=f".{out.name}.")))
        self.map = stack.enter_context(rasterio.open(self.work / "map.tif", "w", **meta))
        self.probs = None
        if probabilities_encoding is not None:
            u8 = probabilities_encoding == "uint8"
            probs_meta = {**meta, "count": p.t_out * p.c_out, "dtype": "uint8" if u8 else "float32",
                          "nodata": 255 if u8 else np.nan}
            self.probs = stack.enter_context(rasterio.open(self.work / "probs.tif", "w", **probs_meta))
        self.tally = Tally(p, count)

    def write(self, logits: np.ndarray, valid: np.ndarray, window) -> None:
        """Encode blended ``logits`` (T_out, C_out, rows, width) into the map's bands (nodata where
        not ``valid``) and probabilities, at ``window``; count them in the tally."""
        p, dst, probs_dst = self.p, self.map, self.probs
        bands = encode_maps(logits[None], p.task, p.c_out)[0]
        self.tally.add(bands, valid)
        bands[:, ~valid] = self.nodata
        dst.write(bands.astype(dst.dtypes[0]), window=window)
        if probs_dst is not None:
            probs = probabilities(logits).reshape(-1, *logits.shape[-2:])
            if probs_dst.dtypes[0] == "uint8":
                probs = np.round(probs * 254)
                probs[:, ~valid] = 255
            else:
                probs[:, ~valid] = np.nan
            probs_dst.write(probs.astype(probs_dst.dtypes[0]), window=window)

    def finish(self, backend: str, dn_offsets: list) -> None:
        """Tag and close the working files."""
        tag_map(self.map, self.p, backend, dn_offsets)
        self.map.close()
        if self.probs is not None:
            tag_probabilities(self.probs, self.p, backend, self.encoding)
            self.probs.close()

    def place(self, out: Path) -> None:
        """Copy the finished files into COGs at ``out`` (and ``out``.probs.tif); both are made before
        either is in place."""
        with contextlib.ExitStack() as placed:
            to_cog(self.work / "map.tif", placed.enter_context(atomic_path(out, suffix=".tmp.tif")), "MODE")
            if self.probs is not None:
                probs_out = placed.enter_context(atomic_path(out.with_suffix(".probs.tif"), suffix=".tmp.tif"))
                to_cog(self.work / "probs.tif", probs_out, "AVERAGE")


def to_cog(src: Path, out: Path, overview_resampling: str) -> None:
    """Copy a finished GeoTIFF into a Cloud-Optimized GeoTIFF at ``out``. The copy is also what
    keeps the file compact: blocks that strip-wise writing rewrote are not carried over."""
    import rasterio.shutil

    try:
        rasterio.shutil.copy(src, out, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=COG_BLOCK,
                             OVERVIEW_RESAMPLING=overview_resampling, NUM_THREADS="ALL_CPUS")
    except Exception as err:  # GDAL's error classes (rasterio._err) are not public: any failure here is I/O
        raise OSError(f"making the COG {out.name} failed: {err}") from err
