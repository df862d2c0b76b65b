"""Whole-scene inference: tiled, blended, streamed, written as a Cloud-Optimized GeoTIFF.

Inputs per date are whatever ``stsun.runtime.scene_inputs`` resolves (a multi-band raster, a
directory of band files such as a SAFE or Landsat product, a STAC item). Memory is bounded by
a few strips of tiles (tile height x scene width: the one being read ahead, the one in the engine,
the one being written), whatever the scene's height: input is read a strip at a time with
windowed reads, logits are blended into a rolling accumulator (``stsun.runtime.blend``), and
finished rows are written as soon as no later tile touches them. Reading, inference and writing
overlap (a reader and a writer thread; rasterio and the engines release the GIL).

The parts: the tile grid (``stsun.tiling``), the strip pipeline (``StripPipeline`` here), the
outputs, their tags and band encoding (``stsun.runtime.scene_outputs``, see ``ENCODING``), the
PNG overview (``stsun.runtime.preview``).
"""
from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stsun.classmaps import map_layout
from stsun.display import progress_bar
from stsun.errors import SceneError, StsunWarning
from stsun.tiling import TileGrid, resolve_overlap

from .blend import StripBlender
from .engine import Engine
from .readahead import read_ahead
from .remote import as_url, is_remote
from .scene_inputs import DateReader, Grid, io_failure, native_grid, resolve_date
from .scene_outputs import PROBABILITY_ENCODINGS, SceneOutputs


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
    summary: dict | None = None     # if given, filled with the map's areas (see ``scene_outputs.Tally.summary``)


def check_output(out: Path, dates: list[Path]) -> None:
    """Refuse, before any compute, an output that would overwrite an input or cannot be written."""
    if out.is_dir():
        raise SceneError(f"output {out} is a directory; give a file name such as {out / 'map.tif'}")
    target = out.resolve()
    item = out.with_suffix(".json").resolve()  # the map's STAC Item goes beside it (stsun.app.catalogue)
    for d in dates:
        if d.exists() and (target == d.resolve() or (d.is_dir() and d.resolve() in target.parents)):
            raise SceneError(f"output {out} would overwrite the input {d}; write it somewhere else")
        if d.exists() and item == d.resolve():
            raise SceneError(f"output {out}: its STAC Item {out.with_suffix('.json')} would overwrite the input {d}; "
                             f"write the map somewhere else")
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
                      f"carries no georeferencing (areas assume the profile's {p.gsd_m:g} m pixels)",
                      StsunWarning, stacklevel=2)
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


def gdal_block_rows(readers: list[DateReader]) -> int:
    """Bytes of one block row of every input (every band group of every date)."""
    return sum(g.src.width * g.src.block_shapes[0][0] * len(g.indexes) * np.dtype(g.src.dtypes[0]).itemsize
               for r in readers for g in r.groups)


class StripPipeline:
    """One pass over a scene, a strip of tiles at a time, in three overlapping stages: the reader
    thread reads strip i+1 (``read``), the calling thread runs the engine on strip i (``infer``),
    the writer thread blends and writes strip i-1 (``blend_and_write``; it alone touches the
    blender)."""

    def __init__(self, engine: Engine, readers: list[DateReader], tiles: TileGrid, shape: tuple[int, int],
                 outputs: SceneOutputs, bar, clock: Stopwatch, stack: contextlib.ExitStack) -> None:
        p = self.p = engine.profile
        self.engine, self.readers, self.tiles, self.outputs, self.bar, self.clock = \
            engine, readers, tiles, outputs, bar, clock
        self.height, self.width = shape
        self.pad_w = max(0, tiles.tile - self.width)  # scenes narrower than a tile (a short one is padded by the strip)
        self.blender = StripBlender(p.t_out, p.c_out, tiles.tile, self.width + self.pad_w)
        # Raw digital numbers travel when the engine serves them and they give the same model input
        self.raw = engine.serves_raw and p.nodata is not None and all(r.reads_raw for r in readers)
        self.reader = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="stsun-read"))
        self.writer = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="stsun-write"))

    def read(self, y0: int) -> tuple[np.ndarray, np.ndarray]:
        """The inputs of the strip of tiles whose top row is scene row ``y0``, and where they are valid."""
        with self.clock("read (reader thread)"):
            return read_strip(self.readers, self.p, y0, self.tiles.tile, self.width, self.height, self.pad_w, self.raw)

    def infer(self, strip: np.ndarray, valid: np.ndarray) -> tuple[list[list[int]], list[np.ndarray]]:
        """The engine's logits for the strip's tiles that hold data, in batches: (tile columns per
        batch, logits per batch)."""
        tile = self.tiles.tile
        todo = [x0 for x0 in self.tiles.cols if valid[:, x0:x0 + tile].any()]
        step = self.engine.max_batch or 8
        chunks = [todo[i:i + step] for i in range(0, len(todo), step)]
        batches = [np.stack([strip[:, :, :, x0:x0 + tile] for x0 in chunk]) for chunk in chunks]
        with self.clock("engine"):
            return chunks, (self.engine.run_many_raw if self.raw else self.engine.run_many)(batches)

    def blend_and_write(self, ri: int, chunks: list[list[int]], results: list[np.ndarray], valid: np.ndarray) -> None:
        """Blend strip ``ri``'s logits and write the rows no later strip touches."""
        from rasterio.windows import Window

        rows, y0 = self.tiles.rows, self.tiles.rows[ri]
        with self.clock("blend, encode and write (writer thread)"):
            self.blender.start_strip(y0)
            for chunk, logits in zip(chunks, results):
                self.blender.add(chunk, logits)
                self.bar.update(len(chunk))
            self.bar.update(len(self.tiles.cols) - sum(map(len, chunks)))  # tiles with no data: skipped
            n = (rows[ri + 1] if ri + 1 < len(rows) else self.height) - y0  # rows no later tile touches
            self.outputs.write(self.blender.blended(n, self.width), valid[:n, :self.width],
                               Window(0, y0, self.width, n))

    def run(self) -> None:
        rows = self.tiles.rows
        pending = self.reader.submit(self.read, rows[0])
        written = None
        for ri in range(len(rows)):
            with self.clock("waiting for reads"):
                strip, valid = pending.result()
            if ri + 1 < len(rows):  # read the next strip while the engine works on this one
                pending = self.reader.submit(self.read, rows[ri + 1])
            chunks, results = self.infer(strip, valid)
            with self.clock("waiting for writes"):
                if written is not None:
                    written.result()  # one strip in flight at most: bounded memory, errors surface here
            written = self.writer.submit(self.blend_and_write, ri, chunks, results, valid)
        written.result()


def predict_scene(engine: Engine, dates: list[str | Path], out: str | Path,
                  options: SceneOptions | None = None) -> Path:
    """Run ``engine`` over a whole scene (one input per date) and write a COG map."""
    import rasterio

    options = options or SceneOptions()
    if options.probabilities_encoding not in PROBABILITY_ENCODINGS:
        raise SceneError(f"probabilities encoding must be one of {', '.join(PROBABILITY_ENCODINGS)}, "
                         f"got {options.probabilities_encoding!r}")
    p = engine.profile
    out = Path(out)
    paths = [as_url(d) if is_remote(d) else Path(d) for d in dates]
    check_output(out, [d for d in paths if isinstance(d, Path)])
    try:
        overlap = resolve_overlap(p.tile_size, options.overlap)
    except ValueError as err:
        raise SceneError(str(err)) from None
    count, dtype, _ = map_layout(p.task, p.t_out, p.c_out)
    clock = Stopwatch()
    try:
        with contextlib.ExitStack() as stack:
            grid, readers = open_dates(paths, engine, options, stack)
            # GDAL's block cache defaults to 5 % of RAM and would fill with input blocks, so memory would
            # grow with the scene's height. Strips overlap and span two block rows: three block rows of
            # every input keep each block decoded once; the floor leaves room for the output's blocks.
            block_rows = gdal_block_rows(readers)
            # bytes (rasterio passes an int to GDALSetCacheMax64); process-wide in GDAL, so set here once,
            # on this thread, never in the read-ahead threads' gdal_env
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=max(256 << 20, 3 * block_rows)))
            tiles = TileGrid(*grid.shape, p.tile_size, overlap)
            readers = read_ahead(readers, tiles.rows, tiles.tile, grid, stack)  # remote: strips read ahead, in parallel
            check_resources(p, grid, out, count, dtype, options, tiles.tile, tiles.stride, block_rows)
            outputs = SceneOutputs(out, p, grid, options.probabilities_encoding if options.probabilities else None,
                                   stack)
            # closed on the way out too, so an error message starts on a line of its own
            bar = stack.enter_context(progress_bar(total=len(tiles), desc=f"{p.name} tiles", unit="tile",
                                                   show=options.progress))
            StripPipeline(engine, readers, tiles, grid.shape, outputs, bar, clock, stack).run()
            outputs.finish(engine.backend, [r.dn_offsets() for r in readers])
            with clock("COG copy"):
                outputs.place(out)
    except OSError as err:  # reads already became SceneErrors naming their file: this is the output
        raise io_failure(err, out, writing=True) from None
    if options.timings is not None:
        options.timings.update(clock.seconds)
    if options.summary is not None:
        options.summary.update(outputs.tally.summary())
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


