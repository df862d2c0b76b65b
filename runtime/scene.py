"""Whole-scene inference: tiled, blended, streamed, written as a Cloud-Optimized GeoTIFF.

Inputs per date are whatever ``stsun.runtime.scene_inputs`` resolves (a multi-band raster, a
directory of band files such as a SAFE or Landsat product, a STAC item). Memory is bounded by
a few strips of tiles (tile height x scene width: the one being read ahead, the one in the engine,
the one being written), whatever the scene's height: input is read a strip at a time with
windowed reads, logits are blended into a rolling accumulator, and finished rows are written as
soon as no later tile touches them. Reading, inference and writing overlap (a reader and a writer
thread; rasterio and the engines release the GIL).

Output bands: see ``ENCODING``. The map is written as a tiled GeoTIFF, then copied into a COG
with overviews made by MODE resampling (a class or change code survives, never an average of codes).
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stsun.atomic import atomic_path, atomic_write
from stsun.classmaps import CHANGE_COLOURS, class_colours, encode_maps, map_layout
from stsun.display import progress_bar, stretch
from stsun.errors import SceneError, StsunWarning

from .engine import Engine
from .readahead import read_ahead
from .remote import as_url, is_remote
from .scene_inputs import DateReader, Grid, io_failure, native_grid, resolve_date

ENCODING = """Output bands by task (uint8, or uint16 when a from-to code needs it; nodata 255 / 65535):
- ss:  1 band, class index (single-class profiles: 1 = the class, 0 = not)
- bcd: T_out bands, 1 = change between dates t and t+1
- scd: T_in bands of class index per date, then T_in - 1 from-to change bands with
       0 = no change, else 1 + from * C_out + to."""
PROBABILITY_ENCODINGS = ("float32", "uint8")  # uint8: round(p * 254), 255 = nodata, band scale 1/254
COG_BLOCK = 256  # also the tile size: maps of a few tiles still get overviews


@dataclass
class SceneOptions:
    overlap: int | None = None      # pixels shared by neighbouring tiles (default: tile / 4)
    align: bool = False             # reproject later dates onto the first date's grid
    dn_offset: float | None = None  # added to raw values before scaling (default: the product's, else the profile's)
    probabilities: bool = False     # also write OUT.probs.tif
    probabilities_encoding: str = "float32"
    mask_quality: bool = False      # the product's quality band (SCL / QA_PIXEL) masks cloud, shadow, no data
    progress: bool = True
    timings: dict | None = None     # if given, filled with seconds per stage (benchmarks/scene.py)
    summary: dict | None = None     # if given, filled with the map's areas (see ``Tally.summary``)


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


def probabilities(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_output(out: Path, dates: list[Path]) -> None:
    """Refuse, before any compute, an output that would overwrite an input or cannot be written."""
    if out.is_dir():
        raise SceneError(f"output {out} is a directory; give a file name such as {out / 'map.tif'}")
    target = out.resolve()
    for d in dates:
        if d.exists() and (target == d.resolve() or (d.is_dir() and d.resolve() in target.parents)):
            raise SceneError(f"output {out} would overwrite the input {d}; write it somewhere else")
    try:  # the output's folder must take a file: probe it now, not after the whole inference
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.probe"):
            pass
    except OSError as err:
        raise io_failure(err, out, writing=True) from None


def check_resources(p, grid: Grid, out: Path, count: int, dtype: str, options: SceneOptions, tile: int,
                    stride: int, block_rows: int) -> None:
    """Refuse, before any compute, a scene whose working files do not fit on the output's disk or
    whose strips do not fit in the memory available (both scale with the scene, the strips with
    its width)."""
    import shutil

    height, width = grid.shape
    pixels = height * width
    disk = pixels * count * np.dtype(dtype).itemsize  # the uncompressed working map, before its COG copy
    if options.probabilities:
        disk += pixels * p.t_out * p.c_out * (1 if options.probabilities_encoding == "uint8" else 4)
    free = shutil.disk_usage(out.parent).free
    size = f"{width} x {height} px"
    if disk > free:
        raise SceneError(f"the map of this {size} scene needs about {_gb(disk)} on disk while it is written "
                         f"(uncompressed{', probabilities included' if options.probabilities else ''}), and "
                         f"{out.parent} has {_gb(free)} free: write it to a larger disk, or split the scene")
    w = width + max(0, tile - width)
    strip = p.t_in * p.c_in * tile * w * 4
    logits = p.t_out * p.c_out * tile * w * 4
    # strips read ahead, in the engine and batched (tiles overlap: tile / stride), the accumulator,
    # logits in flight and the writer's temporaries, GDAL's block cache
    memory = int(strip * (2 + tile / stride) + logits * (3 + 2 * tile / stride) + tile * w * 4
                 + max(256 << 20, 3 * block_rows))
    available = available_memory()
    if available is not None and memory > available:
        raise SceneError(f"a {size} scene needs about {_gb(memory)} of memory (strips of {tile} x {width} px "
                         f"across {p.t_in} dates and {p.c_in} bands), and {_gb(available)} is available: "
                         f"split the scene into narrower pieces, or use a machine with more memory")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"


def available_memory() -> int | None:
    """Bytes this process may still allocate: the system's available memory, capped by a cgroup
    (container) limit; None where neither can be read."""
    found = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    return min(found) if found else None


def open_dates(paths: list[Path], engine: Engine, options: SceneOptions,
               stack: contextlib.ExitStack) -> tuple[Grid, list[DateReader]]:
    """Resolve every date, put them on the first date's grid, and open their readers."""
    p = engine.profile
    if len(paths) != p.t_in:
        raise SceneError(f"profile '{p.name}' needs {p.t_in} dates (T_in), got {len(paths)} inputs")
    dates = [resolve_date(path, p) for path in paths]
    grid = native_grid(dates[0], p)
    if grid.crs is None:
        warnings.warn(f"{dates[0].source} has no CRS: the dates are matched by pixel position only and the map "
                      f"carries no georeferencing (areas assume the profile's {p.gsd_m:g} m pixels)", StsunWarning)
    for date in dates[1:]:
        own = native_grid(date, p)
        if own == grid:
            continue
        if not options.align:
            raise SceneError(f"{date.source} does not share the first date's grid ({own.describe()} vs "
                             f"{grid.describe()}); pass --align to reproject it")
        if not _overlaps(own, grid):
            raise SceneError(f"{date.source} does not overlap the first date ({own.describe()} vs {grid.describe()}): "
                             f"nothing to compare")
    return grid, [DateReader(d, p, grid, stack, options.dn_offset, options.mask_quality) for d in dates]


def _overlaps(a: Grid, b: Grid) -> bool:
    from rasterio.warp import transform_bounds

    w, s, e, n = transform_bounds(a.crs, b.crs, *a.bounds) if a.crs != b.crs else a.bounds
    bw, bs, be, bn = b.bounds
    return w < be and e > bw and s < bn and n > bs


def predict_scene(engine: Engine, dates: list[str | Path], out: str | Path, options: SceneOptions | None = None) -> Path:
    """Run ``engine`` over a whole scene (one input per date) and write a COG map."""
    import rasterio
    from rasterio.windows import Window

    options = options or SceneOptions()
    if options.probabilities_encoding not in PROBABILITY_ENCODINGS:
        raise SceneError(f"probabilities encoding must be one of {', '.join(PROBABILITY_ENCODINGS)}, "
                         f"got {options.probabilities_encoding!r}")
    p = engine.profile
    out = Path(out)
    paths = [as_url(d) if is_remote(d) else Path(d) for d in dates]
    check_output(out, [d for d in paths if isinstance(d, Path)])
    tile = p.tile_size
    overlap = tile // 4 if options.overlap is None else options.overlap
    if not 0 <= overlap < tile:
        raise SceneError(f"overlap must be in [0, {tile}), got {overlap}")
    stride = tile - overlap
    weights = hann_weights(tile)
    count, dtype, nodata = map_layout(p.task, p.t_out, p.c_out)
    clock = Stopwatch()
    try:
        with contextlib.ExitStack() as stack:
            grid, readers = open_dates(paths, engine, options, stack)
            # GDAL's block cache defaults to 5 % of RAM and would fill with input blocks, so memory would
            # grow with the scene's height. Strips overlap and span two block rows: three block rows of
            # every input keep each block decoded once; the floor leaves room for the output's blocks.
            block_rows = sum(g.src.width * g.src.block_shapes[0][0] * len(g.indexes) * np.dtype(g.src.dtypes[0]).itemsize
                             for r in readers for g in r.groups)
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=max(256, 3 * block_rows >> 20)))  # MB
            height, width = grid.shape
            rows, cols = tile_starts(height, tile, stride), tile_starts(width, tile, stride)
            readers = read_ahead(readers, rows, tile, grid, stack)  # remote inputs: strips read ahead, in parallel
            pad_w = max(0, tile - width)  # scenes narrower than a tile (a short one is padded by the strip)
            check_resources(p, grid, out, count, dtype, options, tile, stride, block_rows)
            meta = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
                    "nodata": nodata, "crs": grid.crs, "transform": grid.transform, "tiled": True,
                    "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK,
                    "photometric": "MINISBLACK"}  # 3 uint8 bands would otherwise default to RGB
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None,
                                                                        prefix=f".{out.name}.")))
            dst = stack.enter_context(rasterio.open(work / "map.tif", "w", **meta))
            probs_dst = None
            if options.probabilities:
                u8 = options.probabilities_encoding == "uint8"
                probs_dst = stack.enter_context(rasterio.open(
                    work / "probs.tif", "w", **{**meta, "count": p.t_out * p.c_out, "dtype": "uint8" if u8 else "float32",
                                                "nodata": 255 if u8 else np.nan}))
            # closed on the way out too, so an error message starts on a line of its own
            bar = stack.enter_context(progress_bar(total=len(rows) * len(cols), desc=f"{p.name} tiles", unit="tile",
                                                   show=options.progress))
            tally = Tally(p, count)
            acc = np.zeros((p.t_out, p.c_out, tile, width + pad_w), np.float32)
            wsum = np.zeros((tile, width + pad_w), np.float32)
            acc_top = 0  # scene row held by accumulator row 0
            # Three stages overlap: the reader thread reads strip i+1, this thread runs the engine on
            # strip i, the writer thread blends and writes strip i-1 (it alone touches the accumulator).
            reader = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="stsun-read"))
            writer = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="stsun-write"))

            # Raw digital numbers travel when the engine serves them and they give the same model input
            raw = engine.serves_raw and p.nodata is not None and all(r.reads_raw for r in readers)

            def read(y: int) -> tuple[np.ndarray, np.ndarray]:
                with clock("read (reader thread)"):
                    return read_strip(readers, p, y, tile, width, height, pad_w, raw)

            def consume(ri: int, y0: int, chunks: list[list[int]], results: list[np.ndarray],
                        valid: np.ndarray) -> None:
                nonlocal acc_top
                with clock("blend, encode and write (writer thread)"):
                    shift = y0 - acc_top
                    if shift:  # rows above y0 are final: roll the accumulator up
                        acc[:, :, :-shift], acc[:, :, -shift:] = acc[:, :, shift:].copy(), 0
                        wsum[:-shift], wsum[-shift:] = wsum[shift:].copy(), 0
                        acc_top = y0
                    for chunk, logits in zip(chunks, results):
                        for x0, lg in zip(chunk, logits):
                            acc[:, :, :tile, x0:x0 + tile] += lg * weights
                            wsum[:tile, x0:x0 + tile] += weights
                        bar.update(len(chunk))
                    bar.update(len(cols) - sum(map(len, chunks)))  # tiles with no data: skipped
                    n = (rows[ri + 1] if ri + 1 < len(rows) else height) - y0  # rows no later tile touches
                    write_rows(dst, probs_dst, acc[:, :, :n, :width], wsum[:n, :width], valid[:n, :width],
                               p, nodata, Window(0, y0, width, n), tally)

            pending = reader.submit(read, rows[0])
            written = None
            for ri, y0 in enumerate(rows):
                with clock("waiting for reads"):
                    strip, valid = pending.result()
                if ri + 1 < len(rows):  # read the next strip while the engine works on this one
                    pending = reader.submit(read, rows[ri + 1])
                todo = [x0 for x0 in cols if valid[:, x0:x0 + tile].any()]
                step = engine.max_batch or 8
                chunks = [todo[i:i + step] for i in range(0, len(todo), step)]
                batches = [np.stack([strip[:, :, :, x0:x0 + tile] for x0 in chunk]) for chunk in chunks]
                with clock("engine"):
                    results = (engine.run_many_raw if raw else engine.run_many)(batches)
                with clock("waiting for writes"):
                    if written is not None:
                        written.result()  # one strip in flight at most: bounded memory, errors surface here
                written = writer.submit(consume, ri, y0, chunks, results, valid)
            written.result()
            dst.update_tags(profile=p.name, task=p.task, classes=",".join(p.classes), backend=engine.backend,
                            encoding=ENCODING, dn_offset=json.dumps([r.dn_offsets() for r in readers]))
            colours = CHANGE_COLOURS if p.task == "bcd" else class_colours(p.c_out)
            # TIFF palettes exist for single-band images only; every map also carries its colours as a tag
            dst.update_tags(colormap=json.dumps({i: c for i, c in enumerate(colours)}))
            if count == 1:
                dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(colours)})
            for b in range(count):
                dst.set_band_description(b + 1, band_name(p, b))
            dst.close()
            if probs_dst is not None:
                for b in range(p.t_out * p.c_out):
                    probs_dst.set_band_description(b + 1, f"p_date{b // p.c_out + 1}_{p.classes[b % p.c_out]}")
                if options.probabilities_encoding == "uint8":
                    probs_dst.scales = [1 / 254] * (p.t_out * p.c_out)
                probs_dst.update_tags(profile=p.name, task=p.task, classes=",".join(p.classes), backend=engine.backend,
                                      encoding=f"band p_dateT_CLASS: the probability of CLASS on date T "
                                               f"({options.probabilities_encoding}"
                                               f"{': round(p * 254), 255 = nodata' if u8 else ', NaN = nodata'})")
                probs_dst.close()
            with clock("COG copy"), contextlib.ExitStack() as placed:  # both made before either is in place
                to_cog(work / "map.tif", placed.enter_context(atomic_path(out, suffix=".tmp.tif")), "MODE")
                if probs_dst is not None:
                    probs_out = placed.enter_context(atomic_path(out.with_suffix(".probs.tif"), suffix=".tmp.tif"))
                    to_cog(work / "probs.tif", probs_out, "AVERAGE")
    except OSError as err:  # reads already became SceneErrors naming their file: this is the output
        raise io_failure(err, out, writing=True) from None
    if options.timings is not None:
        options.timings.update(clock.seconds)
    if options.summary is not None:
        options.summary.update(tally.summary())
    return out


class Stopwatch:
    """Seconds spent per named stage (cheap enough to keep on in production runs)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def to_cog(src: Path, out: Path, overview_resampling: str) -> None:
    """Copy a finished GeoTIFF into a Cloud-Optimized GeoTIFF at ``out``. The copy is also what
    keeps the file compact: blocks that strip-wise writing rewrote are not carried over."""
    import rasterio.shutil

    try:
        rasterio.shutil.copy(src, out, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=COG_BLOCK,
                             OVERVIEW_RESAMPLING=overview_resampling, NUM_THREADS="ALL_CPUS")
    except Exception as err:  # GDAL's error classes (rasterio._err) are not public: any failure here is I/O
        raise OSError(f"making the COG {out.name} failed: {err}") from err


def band_name(p, b: int) -> str:
    if p.task == "ss":
        return "class"
    if p.task == "bcd":
        return f"change_date{b + 1}_to_date{b + 2}"
    return f"class_date{b + 1}" if b < p.t_out else f"fromto_date{b - p.t_out + 1}_to_date{b - p.t_out + 2}"


def read_strip(readers: list[DateReader], p, y0: int, tile: int, width: int, height: int,
               pad_w: int, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(T_in, C_in, tile, width+pad) scaled input for scene rows [y0, y0+tile) (``raw``: the digital
    numbers, with the profile's nodata where a pixel is invalid), and a (tile, width+pad) mask that
    is True where every date has data."""
    from rasterio.windows import Window

    h = min(tile, height - y0)
    window = Window(0, y0, width, h)
    strip = np.zeros((p.t_in, p.c_in, tile, width + pad_w), p.scaling.dtype if raw else np.float32)
    valid = np.zeros((tile, width + pad_w), bool)
    valid[:h, :width] = True
    for t, reader in enumerate(readers):
        valid[:h, :width] &= reader.read_into(window, strip[t, :, :h, :width])
    if not valid.all():  # nodata (NaN included) never reaches the engine, which would reject NaN
        strip[..., ~valid] = p.nodata if raw else 0.0  # cast to the strip's dtype; a DN model zeroes nodata itself
    return strip, valid


def write_rows(dst, probs_dst, acc: np.ndarray, wsum: np.ndarray, valid: np.ndarray, p, nodata: int, window,
               tally: Tally | None = None) -> None:
    logits = acc / np.maximum(wsum, 1e-12)[None, None]  # pixels no tile covered are nodata anyway
    bands = encode_maps(logits[None], p.task, p.c_out)[0]
    if tally is not None:
        tally.add(bands, valid)
    bands[:, ~valid] = nodata
    dst.write(bands.astype(dst.dtypes[0]), window=window)
    if probs_dst is not None:
        probs = probabilities(logits).reshape(-1, *logits.shape[-2:])
        if probs_dst.dtypes[0] == "uint8":
            probs = np.round(probs * 254)
            probs[:, ~valid] = 255
        else:
            probs[:, ~valid] = np.nan
        probs_dst.write(probs.astype(probs_dst.dtypes[0]), window=window)


def preview(dates: list[str | Path], prediction: str | Path, path: str | Path, profile, max_px: int = 1024,
            dn_offset: float | None = None) -> Path:
    """A PNG overview: each date's RGB (the profile's ``rgb_bands``, when it names them), the
    predicted maps and, for SCD, the from-to change. Reads are decimated to ``max_px``."""
    try:
        import matplotlib
    except ImportError:
        raise SceneError("--preview needs matplotlib: pip install 'stsun[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    import rasterio.windows
    from matplotlib.colors import ListedColormap

    with rasterio.open(prediction) as src:
        scale = max(1, -(-max(src.shape) // max_px))
        shape = (src.height // scale, src.width // scale)
        bands = src.read(out_shape=(src.count, *shape), resampling=rasterio.enums.Resampling.nearest)
        nodata = src.nodata
    panels = []
    if profile.rgb_bands:
        from affine import Affine

        with contextlib.ExitStack() as stack:
            full = native_grid(resolve_date(dates[0], profile), profile)
            small = Grid(full.crs, full.transform * Affine.scale(full.width / shape[1], full.height / shape[0]),
                         shape[1], shape[0])
            for t, d in enumerate(dates):
                x, valid = DateReader(resolve_date(d, profile), profile, small, stack, dn_offset).read(
                    rasterio.windows.Window(0, 0, shape[1], shape[0]))
                rgb = x[[profile.band_names.index(b) for b in profile.rgb_bands]]
                panels.append((f"date {t + 1}: RGB", stretch(rgb, valid), None))
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
