"""Labelled imagery on disk, in the layouts public benchmarks ship in and users copy.

``open_dataset(root, profile)`` detects which layout a folder is and pairs its files:

- binary change detection (LEVIR-CD, WHU-CD): ``A/``, ``B/``, ``label/`` of same-named images,
  labels 0/255 or 0/1 (with 0/1 labels, 255 marks pixels not labelled);
- semantic change detection (SECOND-style): ``im1/``, ``im2/``, ``label1/``, ``label2/``, labels
  as class-index images or as RGB colour images decoded with the profile's ``label_colours``;
- semantic segmentation: ``images/`` and ``labels/`` (class-index or colour labels);
- multi-date GeoTIFF stacks: a scene folder (the root, or each of its sub-folders) holding one
  multi-band raster per date, ``date1.tif``, ``date2.tif``, ..., as ``stsun predict`` reads them,
  with per-date class maps ``labels_date1.tif``, ... (the task's targets are derived as in
  training: change where adjacent dates differ) or one ``label.tif`` holding the task's
  target, one band per output date.

Images are PNG, JPEG or GeoTIFF (anything rasterio reads). Class-index labels use 255 for "not
labelled". Splits come from ``train/``, ``val/``, ``test/`` sub-folders, each in one layout, or
from list files (``train.txt``, ``val.txt``, ``test.txt`` beside the layout's folders or in
``list/``), one sample name per line. Every mismatch (a missing partner file, a label of
another size, a class index beyond the profile's classes, an unknown colour, an unreadable
file) is a ``DatasetError`` naming the file.

Tiles: training draws random crops of the profile's tile (with flips and transposes, the
paper's augmentation); evaluation covers each image with a regular grid whose last row and
column are shifted inward, so every pixel is scored once and nothing is padded unless the
image is smaller than a tile (then it is padded and the padding is not scored).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stsun.data.targets import change_targets
from stsun.errors import DatasetError
from stsun.profiles import IGNORE_COLOUR, NO_CHANGE_COLOUR, Profile
from stsun.tiling import TileGrid

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
IGNORE = -1         # target: not scored, no loss
NO_CHANGE = -2      # SCD target: unchanged between the dates, class not given (SECOND's white)
UNLABELLED = 255    # class-index label files: not labelled
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    inputs: tuple[str, ...]   # one folder per date (folder layouts)
    labels: tuple[str, ...]
    tasks: tuple[str, ...]    # the profile tasks it can train


CHANGE_PAIRS = Layout("change-pairs", "binary change detection (A/, B/, label/)", ("a", "b"), ("label",), ("bcd",))
SEMANTIC_CHANGE_PAIRS = Layout("semantic-change-pairs", "semantic change detection (im1/, im2/, label1/, label2/)",
                               ("im1", "im2"), ("label1", "label2"), ("scd",))
SEGMENTATION = Layout("segmentation", "semantic segmentation (images/, labels/)", ("images",), ("labels",), ("ss",))
STACKS = Layout("geotiff-stacks", "multi-date GeoTIFF stacks (date1.tif, ... with labels_date1.tif, ... or label.tif)",
                (), (), ("ss", "bcd", "scd"))
FOLDER_LAYOUTS = (CHANGE_PAIRS, SEMANTIC_CHANGE_PAIRS, SEGMENTATION)


@dataclass(frozen=True)
class Sample:
    """One labelled image set: an image per date and its label files, all of one size."""

    name: str                  # unique within the dataset: the first image's path from the root, no suffix
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    label_kind: str            # "change" (a 0/1 change mask), "classes" (a class map per date), "target"
    height: int
    width: int


@dataclass(frozen=True)
class Region:
    """Rows ``rows[0]:rows[1]`` of a sample (all of it, unless one image is split for validation)."""

    sample: Sample
    rows: tuple[int, int]

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0]

    def record(self) -> dict:
        return {"sample": self.sample.name, "rows": list(self.rows)}


def whole(samples: tuple[Sample, ...]) -> list[Region]:
    return [Region(s, (0, s.height)) for s in samples]


def _rasterio():
    try:
        import rasterio
    except ImportError:
        raise DatasetError("reading datasets needs rasterio: pip install 'stsun[train]'") from None
    return rasterio


@contextlib.contextmanager
def _open(path: Path):
    """A raster opened for reading; an unreadable file is a DatasetError naming it."""
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # PNG/JPEG carry no georeference
        try:
            with rasterio.open(path) as src:
                yield src
        except RasterioError as err:
            raise DatasetError(f"{path}: not a readable image ({err})") from None


def _files(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem; two files of one stem are an error."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
            if f.stem in found:
                raise DatasetError(f"{f}: {found[f.stem].name} has the same name; keep one file per sample")
            found[f.stem] = f
    return found


def _subfolders(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}


def _size(path: Path) -> tuple[int, int]:
    with _open(path) as src:
        return src.height, src.width


def _sample(name: str, images: list[Path], labels: list[Path], kind: str) -> Sample:
    """A sample whose files all exist, open, and have one size."""
    h, w = _size(images[0])
    for f in images[1:] + labels:
        if (size := _size(f)) != (h, w):
            what = "label" if f in labels else "image"
            raise DatasetError(f"{f}: {what} of another size: {size[0]} x {size[1]}, while {images[0]} "
                               f"is {h} x {w}")
    return Sample(name, tuple(images), tuple(labels), kind, h, w)


def _pair_folders(root: Path, layout: Layout, dirs: dict[str, Path]) -> list[Sample]:
    folders = [dirs[n] for n in layout.inputs + layout.labels]
    files = [_files(f) for f in folders]
    first = files[0]
    for folder, found in zip(folders[1:], files[1:]):
        if missing := sorted(set(first) - set(found)):
            raise DatasetError(f"{first[missing[0]]} has no partner in {folder}/ (expected {missing[0]}.*)"
                               + (f"; {len(missing) - 1} more like it" if len(missing) > 1 else ""))
        if extra := sorted(set(found) - set(first)):
            raise DatasetError(f"{found[extra[0]]} has no partner in {folders[0]}/"
                               + (f"; {len(extra) - 1} more like it" if len(extra) > 1 else ""))
    if not first:
        raise DatasetError(f"{folders[0]} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    kind = "change" if layout is CHANGE_PAIRS else "classes"
    n_in = len(layout.inputs)
    return [_sample(str(first[stem].relative_to(root).with_suffix("")),
                    [f[stem] for f in files[:n_in]], [f[stem] for f in files[n_in:]], kind) for stem in first]


def _raster(folder: Path, stem: str) -> Path | None:
    for suffix in (".tif", ".tiff", ".TIF", ".TIFF"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _stack_scene(root: Path, scene: Path, profile: Profile) -> Sample:
    dates = [_raster(scene, f"date{t + 1}") for t in range(profile.t_in)]
    if None in dates:
        t = dates.index(None) + 1
        raise DatasetError(f"scene {scene}: missing date{t}.tif (profile '{profile.name}' has t_in={profile.t_in})")
    per_date = [_raster(scene, f"labels_date{t + 1}") for t in range(profile.t_in)]
    single = _raster(scene, "label")
    if any(per_date):
        if None in per_date:
            raise DatasetError(f"scene {scene}: missing labels_date{per_date.index(None) + 1}.tif "
                               "(labels_date<t>.tif are needed for every date)")
        labels, kind = per_date, "classes"
    elif single:
        labels, kind = [single], "target"
    else:
        raise DatasetError(f"scene {scene} has no labels: expected labels_date1.tif, ... (a class map per date) "
                           "or label.tif (the task's target)")
    name = "." if scene == root else str(scene.relative_to(root))
    return _sample(name, dates, labels, kind)


def _detect(root: Path, folder: Path, profile: Profile) -> tuple[Layout, list[Sample]] | None:
    """The layout of ``folder`` and its samples, or None when it is none of them."""
    dirs = _subfolders(folder)
    for layout in FOLDER_LAYOUTS:
        if all(n in dirs for n in layout.inputs + layout.labels):
            return layout, _pair_folders(root, layout, dirs)
    if _raster(folder, "date1"):
        return STACKS, [_stack_scene(root, folder, profile)]
    scenes = sorted(d for d in folder.iterdir() if d.is_dir() and _raster(d, "date1"))
    if scenes:
        return STACKS, [_stack_scene(root, d, profile) for d in scenes]
    return None


def _list_files(folder: Path) -> dict[str, Path]:
    found = {}
    for where in (folder, folder / "list"):
        for split in ("train", "val", "test"):
            if (where / f"{split}.txt").is_file() and split not in found:
                found[split] = where / f"{split}.txt"
    return found


def _split_by_lists(lists: dict[str, Path], samples: list[Sample]) -> dict[str, tuple[Sample, ...]]:
    by_stem = {Path(s.name).name: s for s in samples}
    splits = {}
    for split, path in lists.items():
        chosen = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            stem = Path(entry).stem if Path(entry).suffix.lower() in IMAGE_SUFFIXES else Path(entry).name
            if stem not in by_stem:
                raise DatasetError(f"{path}:{lineno}: '{entry}' is not a sample of this dataset")
            chosen.append(by_stem[stem])
        splits[split] = tuple(chosen)
    return splits


@dataclass
class UserDataset:
    """A detected dataset: its layout, its samples by split, and how to read them for a profile."""

    root: Path
    profile: Profile
    layout: Layout
    splits: dict[str, tuple[Sample, ...]]   # "train", "val", "test", or only "all"
    split_source: str

    def describe(self) -> str:
        counts = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        noun = "scenes" if self.layout is STACKS else "samples"
        return f"{self.root}: {self.layout.description}; {noun}: {counts} ({self.split_source})"

    def samples(self) -> tuple[Sample, ...]:
        return tuple(s for split in self.splits.values() for s in split)

    def sample(self, name: str) -> Sample:
        for s in self.samples():
            if s.name == name:
                return s
        raise DatasetError(f"{self.root} has no sample '{name}'")

    # -- reading -------------------------------------------------------------------------
    def read(self, sample: Sample, window: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """x (T_in, C_in, h, w) float32, scaled as the profile says (0 where any date has no
        data), and the task's target (T_out, h, w) int64: class index or 0/1 change, IGNORE
        where not labelled or without data, NO_CHANGE for SCD pixels labelled only as unchanged.
        ``window`` is (row, col, height, width); default the whole sample."""
        window = window or (0, 0, sample.height, sample.width)
        images = [self._image(p, window) for p in sample.images]
        x = np.stack([img for img, _ in images])
        valid = np.logical_and.reduce([v for _, v in images])
        target = self._target(sample, window)
        x[:, :, ~valid] = 0.0
        target[:, ~valid] = IGNORE
        return x, target

    def _image(self, path: Path, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        p = self.profile
        with _open(path) as src:
            if src.count != p.c_in:
                raise DatasetError(f"{path}: has {src.count} bands, profile '{p.name}' expects {p.c_in} "
                                   f"({', '.join(p.band_names)})")
            order = list(range(p.c_in))
            if all(src.descriptions) and set(p.band_names) <= set(src.descriptions):
                order = [src.descriptions.index(b) for b in p.band_names]
            raw = src.read(indexes=[i + 1 for i in order], window=Window(window[1], window[0], window[3], window[2]),
                           out_dtype="float32")
            nodata = src.nodata if src.nodata is not None else p.nodata
        valid = np.isfinite(raw).all(axis=0)
        if nodata is not None:
            valid &= ~(raw == np.float32(nodata)).any(axis=0)
        x = (raw + p.scaling.dn_offset) * p.scaling.scale + p.scaling.offset
        return x.astype(np.float32), valid

    def _label(self, path: Path, window: tuple[int, int, int, int], mode: str) -> np.ndarray:
        """(bands, h, w) decoded labels. ``mode``: "binary" (0/1 or 0/255), "classes" (class
        index, 255 not labelled, or RGB colours through the profile's label_colours, which may
        also give IGNORE and NO_CHANGE) or "codes" (any per-date land-cover code, 255 not labelled)."""
        from rasterio.windows import Window

        p = self.profile
        with _open(path) as src:
            raw = src.read(window=Window(window[1], window[0], window[3], window[2])).astype(np.int64)
            colormap = None
            if src.count == 1 and p.label_colours and mode == "classes":
                with contextlib.suppress(ValueError):  # the file has no palette
                    colormap = src.colormap(1)
        if colormap is not None:  # a paletted label: palette index -> its RGB colour
            lut = np.zeros((256, 3), np.int64)
            for k, rgba in colormap.items():
                if k < 256:
                    lut[k] = rgba[:3]
            raw = lut[raw[0].clip(0, 255)].transpose(2, 0, 1)
        if raw.shape[0] in (3, 4):
            if mode == "classes" and (p.label_colours or not (raw[1:3] == raw[0]).all()):
                return self._decode_colours(raw[:3], path)[None]
            if not (raw[1:3] == raw[0]).all():
                raise DatasetError(f"{path}: a colour label, but {mode} labels must be grey (one band, or equal RGB)")
            raw = raw[:1]  # grey stored as RGB
        if mode == "binary":
            return self._decode_binary(raw, path)
        if mode == "codes":
            return np.where(raw == UNLABELLED, IGNORE, raw)
        return np.stack([self._decode_classes(band, path) for band in raw])

    def _decode_classes(self, raw: np.ndarray, path: Path) -> np.ndarray:
        c = self.profile.c_out
        bad = ((raw >= c) & (raw != UNLABELLED)) | (raw < 0)
        if bad.any():
            v = int(raw[bad][0])
            raise DatasetError(f"{path}: class index {v} beyond the profile's {c} classes "
                               f"(0-{c - 1}; {UNLABELLED} = not labelled), {int(bad.sum())} pixels")
        return np.where(raw == UNLABELLED, IGNORE, raw)

    def _decode_binary(self, raw: np.ndarray, path: Path) -> np.ndarray:
        encoding = _binary_encoding(path.resolve(), path.stat().st_mtime_ns)
        if encoding == "0/255":
            return (raw == 255).astype(np.int64)
        return np.where(raw == UNLABELLED, IGNORE, raw)

    def _decode_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        table = self.profile.label_colours
        if not table:
            raise DatasetError(f"{path}: an RGB colour label; give profile '{self.profile.name}' a "
                               "[label_colours] table (class name = [r, g, b]) to decode it")
        codes = {IGNORE_COLOUR: IGNORE, NO_CHANGE_COLOUR: NO_CHANGE}
        codes.update({c: i for i, c in enumerate(self.profile.classes)})
        keys = np.array([(r << 16) | (g << 8) | b for r, g, b in table.values()])
        values = np.array([codes[name] for name in table])
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        packed = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
        pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
        known = keys[pos] == packed
        if not known.all():
            v = int(packed[~known][0])
            raise DatasetError(f"{path}: colour {[v >> 16, (v >> 8) & 255, v & 255]} is not in profile "
                               f"'{self.profile.name}' label_colours ({int((~known).sum())} pixels)")
        return values[pos]

    def _target(self, sample: Sample, window: tuple[int, int, int, int]) -> np.ndarray:
        p = self.profile
        if sample.label_kind == "change":
            mode = "binary"
        elif p.task == "bcd":  # per-date land cover ("classes") or the change itself ("target")
            mode = "codes" if sample.label_kind == "classes" else "binary"
        else:
            mode = "binary" if p.c_out == 1 else "classes"
        labels = np.concatenate([self._label(f, window, mode) for f in sample.labels])
        if sample.label_kind == "target" and len(labels) != p.t_out:
            raise DatasetError(f"{sample.labels[0]}: has {len(labels)} bands, the task's target for profile "
                               f"'{p.name}' has {p.t_out} (one per output date)")
        if sample.label_kind != "classes":
            return labels
        if p.task == "bcd":  # per-date maps: change where adjacent dates differ
            return change_targets(labels[None])[0]
        return labels[:1] if p.task == "ss" else labels


@functools.lru_cache(maxsize=4096)
def _binary_encoding(path: Path, mtime_ns: int) -> str:
    """How a binary label file encodes change/the class: "0/1" (255 = not labelled) or
    "0/255", judged from the whole file so that every window of it decodes alike (cached per
    file version)."""
    with _open(path) as src:
        values = set(np.unique(src.read()).tolist())
    if values <= {0, 1} or values <= {0, 1, UNLABELLED} and 1 in values:
        return "0/1"
    if values <= {0, 255}:
        return "0/255"
    raise DatasetError(f"{path}: label values {sorted(values)[:8]} are not binary (0/1, or 0/255)")


def open_dataset(root: str | Path, profile: Profile) -> UserDataset:
    """The dataset under ``root``, its layout detected, its files paired and checked."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    split_dirs = {SPLIT_FOLDERS[d.name.lower()]: d for d in sorted(root.iterdir())
                  if d.is_dir() and d.name.lower() in SPLIT_FOLDERS}
    found = {split: _detect(root, d, profile) for split, d in split_dirs.items()}
    if any(found.values()) and not all(found.values()):
        empty = next(split_dirs[k] for k, v in found.items() if v is None)
        raise DatasetError(f"{empty}: no dataset layout found, while the other split folders hold one")
    if found and all(found.values()):
        layouts = {f[0].name for f in found.values()}
        if len(layouts) > 1:
            raise DatasetError(f"{root}: the split folders hold different layouts ({', '.join(sorted(layouts))})")
        layout = next(iter(found.values()))[0]
        splits = {k: tuple(found[k][1]) for k in ("train", "val", "test") if k in found}
        source = f"splits from the folders {', '.join(d.name + '/' for d in split_dirs.values())}"
    elif detected := _detect(root, root, profile):
        layout, samples = detected
        lists = _list_files(root)
        splits = _split_by_lists(lists, samples) if lists else {"all": tuple(samples)}
        source = (f"splits from {', '.join(str(p.relative_to(root)) for p in lists.values())}" if lists
                  else "no split given")
    else:
        raise DatasetError(f"{root}: no dataset layout found; expected A/ B/ label/ (binary change), im1/ im2/ "
                           "label1/ label2/ (semantic change), images/ labels/ (segmentation), or date1.tif ... "
                           "with labels (GeoTIFF stacks), optionally inside train/ val/ test/")
    if profile.task not in layout.tasks:
        raise DatasetError(f"{root} is a {layout.description} dataset, but profile '{profile.name}' has task "
                           f"'{profile.task}' (this layout trains {', '.join(layout.tasks)})")
    if layout.inputs and len(layout.inputs) != profile.t_in:
        raise DatasetError(f"{root} has {len(layout.inputs)} dates per sample, profile '{profile.name}' "
                           f"expects t_in={profile.t_in}")
    return UserDataset(root, profile, layout, splits, source)


def holdout(dataset: UserDataset, fraction: float, seed: int) -> tuple[list[Region], list[Region], str]:
    """(training regions, validation regions, how they were chosen). The ``val`` split when
    there is one; else ``fraction`` of the training samples, chosen with ``seed``; a single
    image gives its bottom rows (at least one tile) instead."""
    train = dataset.splits.get("train", dataset.splits.get("all", ()))
    if not train:
        raise DatasetError(f"{dataset.root}: no training samples ({dataset.describe()})")
    if "val" in dataset.splits:
        return whole(train), whole(dataset.splits["val"]), "the val split"
    if fraction <= 0:
        return whole(train), [], "none (validation fraction 0)"
    if len(train) > 1:
        n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
        chosen = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
        val = tuple(s for i, s in enumerate(train) if i in chosen)
        rest = tuple(s for i, s in enumerate(train) if i not in chosen)
        return whole(rest), whole(val), f"{n_val} of {len(train)} samples held out (seed {seed})"
    s, tile = train[0], dataset.profile.tile_size
    val_rows = max(tile, round(fraction * s.height))
    if s.height - val_rows < tile:
        raise DatasetError(f"{s.images[0]}: one image of {s.height} rows cannot give a validation strip of "
                           f"{val_rows} rows and keep a {tile}-row tile to train on; add a val/ folder or "
                           "more images, or train without validation (validation fraction 0)")
    cut = s.height - val_rows
    return [Region(s, (0, cut))], [Region(s, (cut, s.height))], f"the bottom {val_rows} rows of the one image held out"


def _pad(x: np.ndarray, target: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = x.shape[-2:]
    if (h, w) == (tile, tile):
        return x, target
    xp = np.zeros((*x.shape[:-2], tile, tile), x.dtype)
    tp = np.full((*target.shape[:-2], tile, tile), IGNORE, target.dtype)
    xp[..., :h, :w] = x
    tp[..., :h, :w] = target
    return xp, tp


def random_crops(dataset: UserDataset, regions: list[Region], batch: int, rng: np.random.Generator,
                 augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A training batch: x (batch, T_in, C_in, tile, tile) and target (batch, T_out, tile, tile),
    each a random crop of a region drawn in proportion to its area, randomly flipped and transposed."""
    tile = dataset.profile.tile_size
    area = np.array([r.height * r.sample.width for r in regions], np.float64)
    xs, ts = [], []
    for k in rng.choice(len(regions), size=batch, p=area / area.sum()):
        r = regions[k]
        h, w = min(tile, r.height), min(tile, r.sample.width)
        row = r.rows[0] + int(rng.integers(0, r.height - h + 1))
        col = int(rng.integers(0, r.sample.width - w + 1))
        x, t = _pad(*dataset.read(r.sample, (row, col, h, w)), tile)
        if augment:
            flips = rng.random(3) < 0.5
            for axis in (-2, -1):
                if flips[axis]:
                    x, t = np.flip(x, axis), np.flip(t, axis)
            if flips[0]:
                x, t = x.swapaxes(-1, -2), t.swapaxes(-1, -2)
        xs.append(np.ascontiguousarray(x))
        ts.append(np.ascontiguousarray(t))
    return np.stack(xs), np.stack(ts)


def grid_tiles(dataset: UserDataset, regions: list[Region]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Evaluation tiles (x (T_in, C_in, tile, tile), target (T_out, tile, tile)) covering each
    region once: where a shifted edge tile overlaps its neighbour, and on padding, the target
    is IGNORE, so every pixel is scored exactly once. Reads one strip of tiles at a time."""
    tile = dataset.profile.tile_size
    for r in regions:
        w = r.sample.width
        grid = TileGrid(r.height, w, tile, overlap=0)
        rows, cols = grid.rows, grid.cols
        for i, row in enumerate(rows):
            h = min(tile, r.height - row)
            x, target = dataset.read(r.sample, (r.rows[0] + row, 0, h, w))
            own_row = 0 if i == 0 else rows[i - 1] + tile - row
            for j, col in enumerate(cols):
                own_col = 0 if j == 0 else cols[j - 1] + tile - col
                xt, tt = _pad(x[..., col:col + tile], target[..., col:col + tile].copy(), tile)
                tt[..., :own_row, :] = IGNORE
                tt[..., :, :own_col] = IGNORE
                yield xt, tt


def grid_tile_count(dataset: UserDataset, regions: list[Region]) -> int:
    tile = dataset.profile.tile_size
    return sum(len(TileGrid(r.height, r.sample.width, tile, overlap=0)) for r in regions)


__all__ = ["CHANGE_PAIRS", "FOLDER_LAYOUTS", "IGNORE", "NO_CHANGE", "SEGMENTATION", "SEMANTIC_CHANGE_PAIRS", "STACKS",
           "Layout", "Region", "Sample", "UserDataset", "grid_tile_count", "grid_tiles", "holdout", "open_dataset",
           "random_crops", "whole"]
