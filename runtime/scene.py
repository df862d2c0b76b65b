"""Whole-scene GeoTIFF inference: tiled, blended, streamed, georeferenced.

Memory is bounded by one strip of tiles (tile height x scene width), whatever the scene's
height (it grows with the width only): input is read a strip at a time with windowed reads, logits are blended into a
rolling accumulator, and finished rows are written as soon as no later tile touches them.

Output bands by task (uint8, or uint16 when a from-to code needs it; nodata 255 / 65535):
- ss:  1 band, class index (single-class profiles: 1 = the class, 0 = not)
- bcd: T_out bands, 1 = change between dates t and t+1
- scd: T_in bands of class index per date, then T_in - 1 from-to change bands with
       0 = no change, else 1 + from * C_out + to.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stsun.atomic import atomic_path, atomic_write
from stsun.classmaps import CHANGE_COLOURS, class_colours, predicted_classes
from stsun.errors import SceneError

from .engine import Engine

@dataclass
class SceneOptions:
    overlap: int | None = None      # pixels shared by neighbouring tiles (default: tile / 4)
    align: bool = False             # reproject later dates onto the first date's grid
    dn_offset: float | None = None  # added to raw values before scaling (default: the profile's)
    probabilities: bool = False     # also write OUT.probs.tif (float32)
    progress: bool = True


def hann_weights(size: int) -> np.ndarray:
    """2-D blending weights: high in the tile centre, small but non-zero at its edges."""
    w = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.maximum(np.outer(w, w), 1e-3).astype(np.float32)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, length): regular steps, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def band_order(descriptions: tuple[str | None, ...], profile_bands: tuple[str, ...], path: str) -> list[int]:
    """Indexes of the file's bands in profile order: by band description when the file has
    descriptions for all bands, else by position."""
    if len(descriptions) != len(profile_bands):
        raise SceneError(f"{path}: has {len(descriptions)} bands, profile expects {len(profile_bands)} "
                         f"({', '.join(profile_bands)})")
    if all(descriptions):
        missing = [b for b in profile_bands if b not in descriptions]
        if missing:
            raise SceneError(f"{path}: band descriptions {list(descriptions)} lack the profile's bands {missing}")
        return [descriptions.index(b) for b in profile_bands]
    return list(range(len(profile_bands)))


def output_layout(engine: Engine) -> tuple[int, str, int]:
    """(band count, dtype, nodata) of the output raster."""
    p = engine.profile
    if p.task != "scd":
        return p.t_out, "uint8", 255
    big = 1 + p.c_out * p.c_out > 254
    return p.t_out + p.t_out - 1, "uint16" if big else "uint8", 65535 if big else 255


def encode(logits: np.ndarray, task: str, c_out: int) -> np.ndarray:
    """(T_out, C_out, h, w) blended logits -> output bands (n, h, w)."""
    cls = predicted_classes(logits[None])[0].astype(np.int64)
    if task != "scd":
        return cls
    change = np.where(cls[1:] != cls[:-1], 1 + cls[:-1] * c_out + cls[1:], 0)
    return np.concatenate([cls, change])


def probabilities(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def open_dates(paths: list[Path], engine: Engine, options: SceneOptions, stack: contextlib.ExitStack):
    """Open every date, check it against the profile and the first date, return readers."""
    import rasterio
    from rasterio.vrt import WarpedVRT

    p = engine.profile
    if len(paths) != p.t_in:
        raise SceneError(f"profile '{p.name}' needs {p.t_in} dates (T_in), got {len(paths)} files")
    readers = []
    for i, path in enumerate(paths):
        if not Path(path).is_file():
            raise SceneError(f"input not found: {path}")
        src = stack.enter_context(rasterio.open(path))
        order = band_order(src.descriptions, p.band_names, str(path))
        if i:
            first = readers[0][0]
            same = src.crs == first.crs and src.transform == first.transform and src.shape == first.shape
            if not same and not options.align:
                raise SceneError(f"{path} does not share the first date's grid (CRS {src.crs} vs {first.crs}, "
                                 f"size {src.shape} vs {first.shape}, transform differs: "
                                 f"{src.transform != first.transform}); pass --align to reproject it")
            if not same:
                src = stack.enter_context(WarpedVRT(src, crs=first.crs, transform=first.transform,
                                                    width=first.width, height=first.height))
        readers.append((src, order))
    return readers


def predict_scene(engine: Engine, dates: list[str | Path], out: str | Path, options: SceneOptions | None = None) -> Path:
    """Run ``engine`` over whole-scene GeoTIFFs (one per date) and write a GeoTIFF map."""
    import rasterio
    from rasterio.windows import Window

    options = options or SceneOptions()
    p = engine.profile
    out = Path(out)
    tile = p.tile_size
    overlap = tile // 4 if options.overlap is None else options.overlap
    if not 0 <= overlap < tile:
        raise SceneError(f"overlap must be in [0, {tile}), got {overlap}")
    stride = tile - overlap
    weights = hann_weights(tile)
    count, dtype, nodata = output_layout(engine)
    with contextlib.ExitStack() as stack:
        readers = open_dates([Path(d) for d in dates], engine, options, stack)
        ref = readers[0][0]
        # GDAL's block cache defaults to 5% of RAM. A strip spans two block rows, so three
        # block rows of every date avoid decompressing blocks twice, whatever the height.
        block_row = sum(src.width * src.block_shapes[0][0] * src.count * np.dtype(src.dtypes[0]).itemsize
                        for src, _ in readers)
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=max(64, 3 * block_row >> 20)))  # MB
        height, width = ref.shape
        rows, cols = tile_starts(height, tile, stride), tile_starts(width, tile, stride)
        pad_w = max(0, tile - width)  # scenes narrower than a tile (a short one is padded by the strip)
        meta = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
                "nodata": nodata, "crs": ref.crs, "transform": ref.transform, "tiled": True,
                "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
        tmp = stack.enter_context(atomic_path(out, suffix='.tmp.tif'))
        dst = stack.enter_context(rasterio.open(tmp, "w", **meta))
        probs_dst = None
        if options.probabilities:
            probs_path = out.with_suffix(".probs.tif")
            ptmp = stack.enter_context(atomic_path(probs_path, suffix='.tmp.tif'))
            probs_dst = stack.enter_context(rasterio.open(
                ptmp, "w", **{**meta, "count": p.t_out * p.c_out, "dtype": "float32", "nodata": np.nan}))
        bar = tqdm(total=len(rows) * len(cols), desc=f"{p.name} tiles", unit="tile", disable=not options.progress)
        acc = np.zeros((p.t_out, p.c_out, tile, width + pad_w), np.float32)
        wsum = np.zeros((tile, width + pad_w), np.float32)
        acc_top = 0  # scene row held by accumulator row 0
        for ri, y0 in enumerate(rows):
            dn_offset = p.scaling.dn_offset if options.dn_offset is None else options.dn_offset
            strip, valid = read_strip(readers, p, y0, tile, width, height, pad_w, dn_offset)
            shift = y0 - acc_top
            if shift:  # rows above y0 are final: roll the accumulator up
                acc[:, :, :-shift], acc[:, :, -shift:] = acc[:, :, shift:].copy(), 0
                wsum[:-shift], wsum[-shift:] = wsum[shift:].copy(), 0
                acc_top = y0
            todo = [x0 for x0 in cols if valid[:, x0:x0 + tile].any()]
            bar.update(len(cols) - len(todo))
            step = engine.max_batch or 8
            for i in range(0, len(todo), step):
                chunk = todo[i:i + step]
                logits = engine(np.stack([strip[:, :, :, x0:x0 + tile] for x0 in chunk]))
                for x0, lg in zip(chunk, logits):
                    acc[:, :, :tile, x0:x0 + tile] += lg * weights
                    wsum[:tile, x0:x0 + tile] += weights
                bar.update(len(chunk))
            n = (rows[ri + 1] if ri + 1 < len(rows) else height) - y0  # rows no later tile touches
            write_rows(dst, probs_dst, acc[:, :, :n, :width], wsum[:n, :width], valid[:n, :width],
                       p, nodata, Window(0, y0, width, n))
        bar.close()
        dst.update_tags(profile=p.name, task=p.task, classes=",".join(p.classes), backend=engine.backend,
                        encoding=__doc__.split("Output bands by task")[1].strip())
        if p.task != "bcd":
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(class_colours(p.c_out))})
        else:
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(CHANGE_COLOURS)})
        for b in range(count):
            dst.set_band_description(b + 1, band_name(p, b))
    return out


def band_name(p, b: int) -> str:
    if p.task == "ss":
        return "class"
    if p.task == "bcd":
        return f"change_date{b + 1}_to_date{b + 2}"
    return f"class_date{b + 1}" if b < p.t_out else f"fromto_date{b - p.t_out + 1}_to_date{b - p.t_out + 2}"


def read_strip(readers, p, y0: int, tile: int, width: int, height: int, pad_w: int, dn_offset: float) -> tuple[np.ndarray, np.ndarray]:
    """(T_in, C_in, tile, width+pad) scaled input for scene rows [y0, y0+tile), and a
    (tile, width+pad) mask that is True where every date has data."""
    from rasterio.windows import Window

    h = min(tile, height - y0)
    window = Window(0, y0, width, h)
    strip = np.zeros((p.t_in, p.c_in, tile, width + pad_w), np.float32)
    valid = np.zeros((tile, width + pad_w), bool)
    valid[:h, :width] = True
    for t, (src, order) in enumerate(readers):
        raw = src.read(indexes=[i + 1 for i in order], window=window, out_dtype="float32")
        mask = src.read_masks(window=window).min(axis=0) > 0
        valid[:h, :width] &= mask & np.isfinite(raw).all(axis=0)
        strip[t, :, :h, :width] = (raw + dn_offset) * p.scaling.scale + p.scaling.offset
    strip[:, :, ~valid] = 0.0  # nodata never reaches the engine (it would reject NaN)
    return strip, valid


def write_rows(dst, probs_dst, acc: np.ndarray, wsum: np.ndarray, valid: np.ndarray, p, nodata: int, window) -> None:
    logits = acc / np.maximum(wsum, 1e-12)[None, None]  # pixels no tile covered are nodata anyway
    bands = encode(logits, p.task, p.c_out)
    bands[:, ~valid] = nodata
    dst.write(bands.astype(dst.dtypes[0]), window=window)
    if probs_dst is not None:
        probs = probabilities(logits).reshape(-1, *logits.shape[-2:])
        probs[:, ~valid] = np.nan
        probs_dst.write(probs.astype(np.float32), window=window)


def preview(dates: list[str | Path], prediction: str | Path, path: str | Path, profile, max_px: int = 1024) -> Path:
    """A PNG overview: each date's RGB (the profile's ``rgb_bands``, when it names them), the
    predicted maps and, for SCD, the from-to change. Reads are decimated to ``max_px``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap

    with rasterio.open(prediction) as src:
        scale = max(1, -(-max(src.shape) // max_px))
        shape = (src.height // scale, src.width // scale)
        bands = src.read(out_shape=(src.count, *shape), resampling=rasterio.enums.Resampling.nearest)
        nodata = src.nodata
    panels = []
    for t, d in enumerate(dates):
        if profile.rgb_bands:
            with rasterio.open(d) as src:
                order = band_order(src.descriptions, profile.band_names, str(d))
                idx = [order[profile.band_names.index(b)] + 1 for b in profile.rgb_bands]
                rgb = src.read(idx, out_shape=(3, *shape)).astype(np.float32) * profile.scaling.scale + profile.scaling.offset
            panels.append((f"date {t + 1}: RGB", np.clip(rgb.transpose(1, 2, 0) * 3.5, 0, 1), None))
    n_maps = profile.t_out
    classes_cmap = ListedColormap([np.array(c) / 255 for c in class_colours(profile.c_out)])
    change_cmap = ListedColormap([np.array(c) / 255 for c in CHANGE_COLOURS])
    for b in range(n_maps):
        title = band_name(profile, b).replace("_", " ")
        cmap = change_cmap if profile.task == "bcd" else classes_cmap
        panels.append((title, np.ma.masked_equal(bands[b], nodata), cmap))
    if profile.task == "scd":
        for b in range(n_maps, len(bands)):
            changed = np.ma.masked_where(bands[b] == nodata, (bands[b] > 0).astype(np.uint8))
            panels.append((band_name(profile, b).replace("_", " ") + " (changed)", changed, change_cmap))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, img, cmap) in zip(np.atleast_1d(axes), panels):
        kwargs = {} if cmap is None else {"cmap": cmap, "vmin": 0, "vmax": cmap.N - 1, "interpolation": "nearest"}
        ax.imshow(img, **kwargs)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if profile.task != "bcd":
        handles = [plt.Rectangle((0, 0), 1, 1, color=classes_cmap(i)) for i in range(profile.c_out)]
        fig.legend(handles, profile.classes, loc="lower center", ncol=min(6, profile.c_out), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
    return path
