"""Scene inputs as users get them: where each of a profile's bands comes from, for one date.

A date may be
- a multi-band raster (bands matched by description, else by order);
- a directory of single-band rasters (GeoTIFF/COG or JP2) matched by the band id in the file
  name (``B02`` is the profile's ``B2``, ``B8A`` stays ``B8A``), including the Sentinel-2 SAFE
  layout (``GRANULE/*/IMG_DATA/R10m|R20m|R60m``, the finest resolution of each band preferred)
  and Landsat Collection 2 (``*_SR_B<n>.TIF``);
- a STAC Item JSON (a file, or an ``https://``/``s3://`` URL) with local or remote asset hrefs,
  matched by asset key, band name or common name, with ``raster:bands`` scale/offset honoured;
- a raster by URL. Remote rasters are read through GDAL's network file systems (``remote.py``).
The product's quality band (Sentinel-2 ``SCL``, Landsat ``QA_PIXEL``) is found too, for masking.

Sentinel-2 products of processing baseline 04.00 and later store DN + 1000: the DN offset of each
band is read from the product (``BOA_ADD_OFFSET`` in a SAFE's ``MTD_MSIL2A.xml``, ``RADIO_ADD_OFFSET``
in ``MTD_MSIL1C.xml``, a STAC item's ``raster:bands`` offset); a product whose baseline needs one
that no metadata gives is refused rather than read 0.1 too bright.

``DateReader`` reads any window of a date onto one target grid, already scaled as the model
wants it, with its validity mask computed from the values read (nodata, NaN) rather than by
re-decoding per-band masks. Bands off the grid are warped onto it: bilinear when a coarser band
is upsampled (20 m onto 10 m: smooth, no block edges, never overshoots the neighbours the way
cubic can), average when a finer one is downsampled, nearest for quality bands (class codes and
bit fields must not be interpolated).
"""
from __future__ import annotations

import contextlib
import copy
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stsun.errors import SceneError
from stsun.profiles import Profile
from stsun.raw import S2_BAND_IDS, scale_into

from .remote import as_url, gdal_env, gdal_path, is_remote, read_text, redact, redact_text

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
# Sentinel-2 scene classes masked on request: no data, saturated/defective, cloud shadow,
# cloud (medium, high probability), thin cirrus.
SCL_MASKED = (0, 1, 3, 8, 9, 10)
# Landsat Collection 2 QA_PIXEL bits masked on request: fill, dilated cloud, cirrus, cloud, shadow.
QA_PIXEL_MASKED_BITS = (0, 1, 2, 3, 4)
_BAND_ID = re.compile(r"(?<![A-Za-z0-9])B0*(\d{1,2}A?)(?![A-Za-z0-9])", re.I)
_RES_DIR = re.compile(r"^R(\d+)m$")


def band_key(name: str) -> str:
    """A band name in a form files and profiles agree on: ``B02``/``b2`` -> ``B2``, ``B8A`` ->
    ``B8A``; any other name lower-cased (``Red`` -> ``red``)."""
    m = _BAND_ID.fullmatch(name.strip())
    return f"B{m.group(1).upper()}" if m else name.strip().lower()


@dataclass(frozen=True)
class BandSource:
    band: str                    # the profile's band name
    path: str                    # a file rasterio opens
    index: int = 1               # 1-based band index in that file
    scale: float | None = None   # STAC raster:bands: input = raw * scale + offset, instead of the profile's
    offset: float = 0.0
    dn_offset: float | None = None  # the product's own DN offset (SAFE metadata), instead of the profile's


@dataclass(frozen=True)
class BandScaling:
    """How one band's digital numbers become model input: ``(raw + dn_offset) * scale + offset``."""

    dn_offset: float
    scale: float
    offset: float
    source: str   # where the DN offset came from, recorded in the output's tags

    def dn_equivalent(self, profile_offset: float) -> float:
        """The DN offset that, with this scale and the profile's offset, gives the same input."""
        return self.dn_offset + (self.offset - profile_offset) / self.scale


@dataclass
class DateInput:
    """Where one date's bands (in profile order) and its quality band come from."""

    source: Path | str            # a path, or a URL (redacted: it appears in messages)
    kind: str
    bands: list[BandSource]
    quality: tuple[str, str] | None = None   # (path, "scl" | "qa_pixel")
    baseline: str | None = None   # Sentinel-2 processing baseline ("05.10"), when the product names one
    offset_source: str = ""       # the metadata the bands' dn_offset came from
    item_id: str | None = None    # a STAC item's id and datetime (for the results catalogue)
    datetime: str | None = None

    @property
    def remote(self) -> bool:
        """Whether any band is read over the network."""
        return any(is_remote(b.path) for b in self.bands)

    @property
    def needs_dn_offset(self) -> bool:
        """Whether the baseline (>= 04.00) adds a DN offset that some band's metadata does not give."""
        return (self.baseline is not None and float(self.baseline) >= 4.0
                and any(b.dn_offset is None and b.scale is None for b in self.bands))


def io_failure(err: Exception, path: str | Path, writing: bool = False) -> SceneError:
    """A raster read or write failure in plain words. GDAL puts the cause of a failed write
    (disk full, file-size limit) only into a logged warning, so it is diagnosed here instead."""
    import errno
    import os
    import resource
    import shutil

    chain, e = [], err
    while e is not None and len(chain) < 4:
        chain.append(str(e).strip())
        e = e.__cause__ or e.__context__
    detail = "; ".join(dict.fromkeys(c for c in chain if c))
    if is_remote(path) and not writing:
        return _remote_failure(detail, str(path))
    path = Path(path)
    if writing:
        where = path.parent if path.parent.exists() else Path(".")
        free = shutil.disk_usage(where).free
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        code = getattr(err, "errno", None)
        if code == errno.ENOSPC or free < 64 << 20:
            cause = f"the disk is full ({free >> 20} MB free on {where})"
        elif limit != resource.RLIM_INFINITY:
            cause = f"the file is too large for this process's file-size limit ({limit} bytes)"
        elif isinstance(err, PermissionError) or code in (errno.EACCES, errno.EROFS):
            cause = "permission denied" + (f" ({os.strerror(code)})" if code else "")
        else:
            cause = "write error"
        return SceneError(f"writing {path} failed: {cause} [{detail}]")
    if path.is_file() and path.stat().st_size == 0:
        cause = "the file is empty (0 bytes)"
    elif "not recognized as" in detail or "not a supported" in detail:
        cause = "not a raster GDAL can read (not a GeoTIFF, COG or JP2?)"
    elif any(k in detail for k in ("Read error", "Failed to read", "truncat", "TIFFRead", "IReadBlock")):
        cause = "the file is truncated or damaged"
    elif isinstance(err, PermissionError):
        cause = "permission denied"
    else:
        cause = "read error"
    return SceneError(f"{path}: {cause} [{detail}]")


def _remote_failure(detail: str, path: str) -> SceneError:
    """One line naming the URL (redacted) and what the server or the network said."""
    url = redact(path.removeprefix("/vsicurl/").replace("/vsis3/", "s3://", 1) if path.startswith("/vsi") else path)
    code = re.search(r"HTTP (?:response )?(?:code|status)[: ]+(\d{3})", detail) or re.search(r"\b([45]\d\d)\b", detail)
    if code:
        cause = f"HTTP {code.group(1)}"
    elif re.search(r"timed? ?out|Timeout", detail, re.I):
        cause = "timed out (the server did not answer in time)"
    elif "not recognized as" in detail or "not a supported" in detail:
        cause = "not a raster GDAL can read, or not reachable"
    else:
        cause = "read error"
    return SceneError(f"{url}: {cause} [{redact_text(detail)[:300]}]")


def resolve_date(path: str | Path, profile: Profile) -> DateInput:
    if is_remote(path):
        url = as_url(path)
        if url.split("?")[0].lower().endswith(RASTER_SUFFIXES):
            return _from_multiband(url, profile)
        return _from_stac(url, profile)  # .json, or a catalogue's item URL (``…/items/ID``)
    path = Path(path)
    if not path.exists():
        raise SceneError(f"input not found: {path}")
    if path.is_dir():
        return _from_directory(path, profile)
    if path.suffix.lower() == ".json":
        return _from_stac(path, profile)
    return _from_multiband(path, profile)


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


def _from_multiband(path: Path | str, profile: Profile) -> DateInput:
    remote = is_remote(path)
    opened = gdal_path(str(path)) if remote else str(path)
    with _open(opened) as src:
        order = band_order(src.descriptions, profile.band_names, redact(path))
    return DateInput(redact(path) if remote else path, "multi-band raster",
                     [BandSource(b, opened, i + 1) for b, i in zip(profile.band_names, order)])


def _resolution_dir(path: Path) -> int | None:
    m = _RES_DIR.match(path.parent.name)
    return int(m.group(1)) if m else None


def _ids(name: str) -> set[str]:
    """Every band id a file or asset name carries (``T33UUP_..._B02_10m`` -> ``B2``; ``SR_B4`` -> ``B4``),
    and the name itself (``red``)."""
    return {band_key(m.group(0)) for m in _BAND_ID.finditer(name)} | {band_key(name)}


def _from_directory(path: Path, profile: Profile) -> DateInput:
    try:
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
    except OSError as err:
        raise io_failure(err, path) from None
    in_img_data = [f for f in files if any(p.name == "IMG_DATA" for p in f.parents)]
    safe = bool(in_img_data) or path.suffix.upper() == ".SAFE"
    if in_img_data:  # a SAFE product: bands under IMG_DATA; QI_DATA holds per-band masks (MSK_*_B02.jp2)
        files = in_img_data
    wanted = {band_key(b): b for b in profile.band_names}
    claims: dict[str, list[Path]] = {}
    quality = None
    for f in files:
        stem = f.stem
        if re.search(r"(?<![A-Za-z0-9])SCL(?![A-Za-z0-9])", stem):
            quality = _finest(quality, (f, "scl"))
            continue
        if re.search(r"QA_PIXEL", stem, re.I):
            quality = _finest(quality, (f, "qa_pixel"))
            continue
        for key in _ids(stem) & set(wanted):
            claims.setdefault(key, []).append(f)
    landsat = any(re.search(r"_SR_B\d", f.name, re.I) for f in files)
    kind = "Sentinel-2 SAFE product" if safe else "Landsat product" if landsat else "band directory"
    missing = [wanted[k] for k in wanted if k not in claims]
    if missing:
        raise SceneError(f"{path} ({kind}): no file for the profile's band(s) {', '.join(missing)} "
                         f"(looked for the band id in the names of {len(files)} raster files)")
    bands = []
    for key, name in wanted.items():
        chosen = claims[key]
        if len(chosen) > 1:
            res = [_resolution_dir(f) for f in chosen]
            if None in res or len(set(res)) != len(res):  # only SAFE's R10m/R20m/R60m copies may repeat a band
                raise SceneError(f"{path}: {len(chosen)} files claim band {name}: "
                                 f"{', '.join(str(f.relative_to(path)) for f in chosen)}")
            chosen = [chosen[res.index(min(res))]]
        bands.append(BandSource(name, str(chosen[0])))
    q = (str(quality[0]), quality[1]) if quality else None
    if not safe:
        return DateInput(path, kind, bands, q)
    baseline, offsets, source = _safe_offsets(path, files)
    bands = [replace(b, dn_offset=offsets.get(band_key(b.band))) for b in bands]
    return DateInput(path, kind, bands, q, baseline, source)


_BASELINE_IN_NAME = re.compile(r"_N(\d{2})(\d{2})_")


def _safe_offsets(path: Path, files: list[Path]) -> tuple[str | None, dict[str, float], str]:
    """(processing baseline, {band key: DN offset}, the file they came from) of a SAFE product:
    from its ``MTD_MSIL2A.xml`` (``BOA_ADD_OFFSET``) or ``MTD_MSIL1C.xml`` (``RADIO_ADD_OFFSET``),
    the baseline from that file or else the product name (``_N0510_``)."""
    import xml.etree.ElementTree as ET

    baseline = None
    for f in [path, *files]:
        if m := _BASELINE_IN_NAME.search(str(f.relative_to(path.parent))):
            baseline = f"{m.group(1)}.{m.group(2)}"
            break
    metadata = sorted(path.rglob("MTD_MSIL[12][AC].xml"), key=lambda f: len(f.parts))
    if not metadata:
        return baseline, {}, ""
    try:
        root = ET.parse(metadata[0]).getroot()
    except (ET.ParseError, OSError) as err:
        raise SceneError(f"{metadata[0]}: unreadable product metadata ({err})") from None
    by_tag = {el.tag.rsplit("}", 1)[-1]: el for el in root.iter()}
    if "PROCESSING_BASELINE" in by_tag and by_tag["PROCESSING_BASELINE"].text:
        baseline = by_tag["PROCESSING_BASELINE"].text.strip()
    names = {el.get("bandId"): el.get("physicalBand") for el in root.iter()
             if el.tag.endswith("Spectral_Information") and el.get("bandId") is not None}
    offsets = {}
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET") and el.get("band_id") is not None:
            band_id = el.get("band_id")
            name = names.get(band_id) or (S2_BAND_IDS[int(band_id)] if int(band_id) < len(S2_BAND_IDS) else band_id)
            offsets[band_key(name)] = float(el.text)
    return baseline, offsets, f"{metadata[0].name} {'BOA' if 'L2A' in metadata[0].name else 'RADIO'}_ADD_OFFSET"


def _finest(current: tuple[Path, str] | None, new: tuple[Path, str]) -> tuple[Path, str]:
    if current is None:
        return new
    rc, rn = _resolution_dir(current[0]) or 10 ** 6, _resolution_dir(new[0]) or 10 ** 6
    return new if rn < rc else current


def _from_stac(path: Path | str, profile: Profile) -> DateInput:  # noqa: C901 -- one pass over the Item's parts, in order
    import pystac
    from pystac.errors import STACTypeError

    remote = is_remote(path)
    shown = redact(path)  # a remote Item's URL may carry a signature in its query string
    text = read_text(str(path)) if remote else None  # fetched with a timeout; a failure is one line
    try:
        if remote:  # asset hrefs resolve against the item's URL
            item = pystac.Item.from_dict(json.loads(text), href=str(path))
        else:
            item = pystac.Item.from_file(str(path))
    except STACTypeError:  # valid JSON, another STAC object or none (a Collection, a bare dict)
        raise SceneError(f"{shown}: not a STAC Item (its JSON has no \"type\": \"Feature\")") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, pystac.STACError) as err:
        raise SceneError(f"{shown}: not a STAC Item ({redact_text(str(err))[:200]})") from None
    except OSError as err:
        raise io_failure(err, path) from None
    path = shown if remote else path
    wanted = {band_key(b): b for b in profile.band_names}
    found: dict[str, list[BandSource]] = {}
    quality = None
    props = item.properties
    sentinel2 = any(k.startswith("s2:") for k in props) or \
        str(props.get("platform", props.get("constellation", ""))).lower().startswith("sentinel-2")
    baseline = props.get("s2:processing_baseline") or (props.get("processing:version") if sentinel2 else None)
    try:
        baseline = None if baseline is None else f"{float(baseline):05.2f}"
    except ValueError:
        baseline = None  # not a baseline number: nothing to infer from it
    offset_applies = baseline is not None and float(baseline) >= 4.0
    for key, asset in item.assets.items():
        if remote:
            href = _remote_asset_href(asset, key, shown)
            if href is None:
                continue  # a scheme GDAL is not given here (ftp, gs): not an asset this reads
        else:
            href = (asset.get_absolute_href() or asset.href).removeprefix("file://")
        if is_remote(href):
            href = gdal_path(href)
        elif "://" in href:
            continue  # a scheme GDAL is not given here (ftp, gs): not an asset this reads
        fields = asset.extra_fields
        bands = fields.get("eo:bands") or fields.get("bands") or [{}]
        raster = fields.get("raster:bands") or [{}]
        if band_key(key) in ("scl",) or key.lower() == "qa_pixel":
            quality = (href, "scl" if band_key(key) == "scl" else "qa_pixel")
            continue
        for i, b in enumerate(bands):
            names = _ids(key) if len(bands) == 1 else set()
            for k in ("name", "common_name", "eo:common_name"):
                names |= _ids(str(b[k])) if b.get(k) else set()
            r = raster[i] if i < len(raster) else {}
            scale = r.get("scale", b.get("scale"))
            given = r.get("offset", b.get("offset"))
            if scale is None and given is not None:  # an offset alone is in the profile's scaled units
                scale = profile.scaling.scale
            if offset_applies and given is None:
                # a scale without the offset the baseline adds: scaled as the profile says, offset asked for
                scale = None
            offset = float(given or 0.0)
            for k in names & set(wanted):
                # rank: a single-band asset before a band of a multi-band one (``visual``), an asset
                # named after the band before one matched by its band list
                rank = (len(bands) > 1, k not in _ids(key))
                found.setdefault(k, []).append((rank, BandSource(wanted[k], href, i + 1, scale, offset)))
    missing = [wanted[k] for k in wanted if k not in found]
    if missing:
        raise SceneError(f"{path}: the STAC item has no readable asset for the profile's band(s) {', '.join(missing)} "
                         f"(matched by asset key, eo:bands name or common name; assets: {', '.join(item.assets)})")
    chosen = {}
    for k, candidates in found.items():
        best = min(rank for rank, _ in candidates)
        top = list(dict.fromkeys(s for rank, s in candidates if rank == best))
        if len(top) > 1:
            raise SceneError(f"{path}: several assets claim band {wanted[k]} equally "
                             f"({', '.join(redact(s.path) for s in top)})")
        chosen[k] = top[0]
    for s in chosen.values():
        if not is_remote(s.path) and not Path(s.path).is_file():
            raise SceneError(f"{path}: asset file {s.path} for band {s.band} not found")
    warm([s.path for s in chosen.values()] + ([quality[0]] if quality else []))
    when = item.datetime.isoformat() if item.datetime else props.get("start_datetime")
    return DateInput(path, "STAC item", [chosen[k] for k in wanted], quality, baseline, "STAC raster:bands offset",
                     item.id, when)


def _remote_asset_href(asset, key: str, item: str) -> str | None:
    """The URL of an asset of a remote Item: an http(s):// or s3:// href, or a relative one
    resolved against the Item's URL. A local path, ``file://`` or ``/vsi...`` href is refused: a
    served Item must not make this machine read its own files (with the user's credentials)."""
    from urllib.parse import urlsplit

    try:
        scheme = urlsplit(asset.href).scheme.lower()
    except ValueError:
        scheme = "?"
    if scheme in ("http", "https", "s3"):
        return asset.href
    if scheme == "file" or (not scheme and asset.href.startswith(("/", "\\"))):
        raise SceneError(f"{item}: asset {key} points at a local file ({redact(asset.href)}); a remote STAC "
                         f"Item may only point at http(s):// or s3:// URLs or at hrefs relative to it")
    if scheme:
        return None
    href = asset.get_absolute_href() or ""
    return href if is_remote(href) and not href.startswith("/") else None


def warm(paths: list[str]) -> None:
    """Open the remote ones of ``paths`` at once: their headers land in GDAL's cache in one round
    trip rather than one per file, and a missing one fails here, before any compute."""
    from concurrent.futures import ThreadPoolExecutor

    remote = list(dict.fromkeys(p for p in paths if is_remote(p)))
    if len(remote) < 2:
        return

    def touch(path: str) -> None:
        with gdal_env(), _open(path):
            pass

    with ThreadPoolExecutor(max_workers=min(16, len(remote)), thread_name_prefix="stsun-open") as pool:
        for f in [pool.submit(touch, p) for p in remote]:
            f.result()


@dataclass(frozen=True)
class Grid:
    crs: object
    transform: object
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        from rasterio.transform import array_bounds

        return array_bounds(self.height, self.width, self.transform)  # west, south, east, north

    def describe(self) -> str:
        return f"CRS {self.crs}, {self.width} x {self.height} px, " \
               f"origin ({self.transform.c:g}, {self.transform.f:g}), " \
               f"pixel {self.transform.a:g} m"


def _open(path: str):
    """rasterio.open, its failure a SceneError that names the file in plain words."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        if is_remote(path):
            with gdal_env():
                return rasterio.open(path)
        return rasterio.open(path)
    except RasterioIOError as err:
        raise io_failure(err, path) from None


def native_grid(date: DateInput, profile: Profile) -> Grid:
    """The date's own grid: its finest band's grid, or, when that is not at the profile's GSD,
    a grid at the profile's GSD over the same area (projected CRS only)."""
    from rasterio.transform import from_origin

    grids = []
    for path in dict.fromkeys(s.path for s in date.bands):
        with _open(path) as src:
            grids.append(Grid(src.crs, src.transform, src.width, src.height))
    finest = min(grids, key=lambda g: abs(g.transform.a))
    res = abs(finest.transform.a)
    if (len(grids) == 1 or finest.crs is None or finest.crs.is_geographic
            or abs(res - profile.gsd_m) <= 0.01 * profile.gsd_m):
        return finest
    west, south, east, north = finest.bounds
    width, height = round((east - west) / profile.gsd_m), round((north - south) / profile.gsd_m)
    return Grid(finest.crs, from_origin(west, north, profile.gsd_m, profile.gsd_m), width, height)


@dataclass
class _BandGroup:
    """Bands of one file, read together."""

    src: object                  # the dataset, or a WarpedVRT of it onto the grid
    indexes: list[int]
    sources: list[BandSource]
    positions: list[int]         # where they go in profile order
    nodata: float | None
    needs_masks: bool            # validity only from GDAL masks (per-dataset mask, alpha)
    factor: int = 1              # > 1: a coarser band whose pixels align with the grid's, read by RasterIO
    origin: tuple[int, int] = (0, 0)  # grid (col, row) of the source's top-left corner, when factor > 1

    def _source(self, window):
        """The grid window in source pixels (fractional for coarser bands), and the output shape."""
        from rasterio.windows import Window

        k, (ox, oy) = self.factor, self.origin
        shape = (len(self.indexes), int(window.height), int(window.width))
        if k == 1:
            return window, shape
        return Window((window.col_off - ox) / k, (window.row_off - oy) / k, window.width / k, window.height / k), shape

    def read(self, window) -> np.ndarray:
        """The bands on the grid window: as stored when on the grid; a coarser aligned band
        resampled bilinearly by GDAL's RasterIO from a fractional source window, which gives the
        same values as warping (checked) a few times faster."""
        from rasterio.enums import Resampling

        src_window, shape = self._source(window)
        if self.factor == 1:
            return self.src.read(indexes=self.indexes, window=src_window)
        return self.src.read(indexes=self.indexes, window=src_window, out_shape=shape, out_dtype="float32",
                             resampling=Resampling.bilinear)

    def valid_from_masks(self, window) -> np.ndarray:
        from rasterio.enums import Resampling

        src_window, shape = self._source(window)
        masks = self.src.read_masks(indexes=self.indexes, window=src_window, out_shape=shape,
                                    resampling=Resampling.nearest)
        return masks.min(axis=0) > 0


def _aligned_factor(src, grid: Grid) -> tuple[int, tuple[int, int]] | None:
    """(k, origin) when ``src`` is ``grid`` coarsened k times with pixel edges on the grid's, and covers
    it; None otherwise (the band is then warped)."""
    a, g = src.transform, grid.transform
    if src.crs != grid.crs or a.b or a.d or g.b or g.d:
        return None
    k = a.a / g.a
    if round(k) < 2 or abs(k - round(k)) > 1e-9 or abs(a.e / g.e - k) > 1e-9:
        return None
    ox, oy = (a.c - g.c) / g.a, (a.f - g.f) / g.e
    # the source must start at or before the grid's first pixel (origin <= 0) on a pixel edge...
    if abs(ox - round(ox)) > 1e-6 or abs(oy - round(oy)) > 1e-6 or round(ox) > 0 or round(oy) > 0:
        return None
    k, ox, oy = round(k), round(ox), round(oy)
    if ox + src.width * k < grid.width or oy + src.height * k < grid.height:
        return None  # ...and reach past its last one; otherwise warp, which marks the rest as nodata
    return k, (ox, oy)


def band_scaling(s: BandSource, profile: Profile, dn_offset: float | None, metadata: str = "") -> BandScaling:
    """A band's scaling: a STAC item's raster:bands scale and offset (an override of the DN offset
    replaces its offset, offset / scale DN), else the profile's scale and offset after the DN offset
    given, else the product's, else the profile's."""
    p = profile.scaling
    if s.scale is not None:
        if dn_offset is not None:
            return BandScaling(dn_offset, s.scale, 0.0, "--dn-offset")
        return BandScaling(0.0, s.scale, s.offset, "STAC raster:bands")
    if dn_offset is not None:
        return BandScaling(dn_offset, p.scale, p.offset, "--dn-offset")
    if s.dn_offset is not None:
        return BandScaling(s.dn_offset, p.scale, p.offset, metadata or "product metadata")
    return BandScaling(p.dn_offset, p.scale, p.offset, "profile")


class DateReader:
    """Reads windows of one date onto ``grid``, scaled for the model, with a validity mask."""

    def __init__(self, date: DateInput, profile: Profile, grid: Grid, stack: contextlib.ExitStack,
                 dn_offset: float | None = None, mask_quality: bool = False) -> None:
        """``dn_offset``: added to every band's digital numbers, overriding the product's and the
        profile's (None: the product's metadata, else the profile's)."""
        self.date, self.profile = date, profile
        self._opening = (grid, dn_offset, mask_quality)
        self.scaling = [band_scaling(s, profile, dn_offset, date.offset_source) for s in date.bands]
        if dn_offset is None and date.needs_dn_offset:
            raise SceneError(f"{date.source}: Sentinel-2 processing baseline {date.baseline} adds a DN offset "
                             f"(-1000 for L2A) but the product's metadata does not give it (no MTD_MSIL2A.xml / "
                             f"MTD_MSIL1C.xml with BOA_ADD_OFFSET / RADIO_ADD_OFFSET, no STAC raster:bands offset); "
                             f"pass --dn-offset (for example --dn-offset -1000)")
        by_path: dict[str, list[tuple[int, BandSource]]] = {}
        for pos, s in enumerate(date.bands):
            by_path.setdefault(s.path, []).append((pos, s))
        self.groups: list[_BandGroup] = [self._open_group(path, items, stack) for path, items in by_path.items()]
        self.quality = None
        if mask_quality:
            if date.quality is None:
                raise SceneError(f"{date.source}: --mask-quality needs the product's quality band (Sentinel-2 SCL or "
                                 f"Landsat QA_PIXEL), and this {date.kind} has none")
            self.quality = self._open_quality(stack)

    def _open_group(self, path: str, items: list[tuple[int, BandSource]], stack: contextlib.ExitStack) -> _BandGroup:
        """The bands ``items`` (profile position, source) of the file at ``path``, on the grid."""
        from rasterio.enums import MaskFlags, Resampling
        from rasterio.vrt import WarpedVRT

        profile, grid = self.profile, self._opening[0]
        src = stack.enter_context(_open(path))
        indexes = [s.index for _, s in items]
        nodata = src.nodata if src.nodata is not None else profile.nodata
        # per-dataset masks and alpha bands are not expressible as a value: only then read masks
        flags = [src.mask_flag_enums[i - 1] for i in indexes]
        needs_masks = any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags)
        group = _BandGroup(src, indexes, [s for _, s in items], [pos for pos, _ in items], nodata, needs_masks)
        on_grid = (src.crs == grid.crs and src.transform == grid.transform and src.shape == grid.shape)
        aligned = None if on_grid else _aligned_factor(src, grid)
        if aligned:
            group.factor, group.origin = aligned
        elif not on_grid:
            finer = abs(src.transform.a) < abs(grid.transform.a) and src.crs == grid.crs
            # without a nodata value, an alpha band marks what lies outside the source
            group.src = stack.enter_context(WarpedVRT(
                src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=Resampling.average if finer else Resampling.bilinear,
                src_nodata=nodata, nodata=nodata, add_alpha=nodata is None))
            group.needs_masks = needs_masks or nodata is None
        return group

    def _open_quality(self, stack: contextlib.ExitStack) -> tuple[object, str]:
        """The date's quality band on the grid, and its kind."""
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        grid = self._opening[0]
        qpath, qkind = self.date.quality
        q = stack.enter_context(_open(qpath))
        if not (q.crs == grid.crs and q.transform == grid.transform and q.shape == grid.shape):
            q = stack.enter_context(WarpedVRT(q, crs=grid.crs, transform=grid.transform, width=grid.width,
                                              height=grid.height, resampling=Resampling.nearest))
        return q, qkind

    def reopen(self, stack: contextlib.ExitStack, part: int | None) -> DateReader:
        """This reader with its band group ``part`` (None: its quality band) on handles of its own
        (GDAL datasets serve one thread at a time); only that part may be read through it, so a
        thread reading one file opens that file alone."""
        twin = copy.copy(self)
        if part is None:
            twin.quality = self._open_quality(stack)
        else:
            g = self.groups[part]
            twin.groups = list(self.groups)
            twin.groups[part] = self._open_group(g.sources[0].path, list(zip(g.positions, g.sources)), stack)
        return twin

    @property
    def reads_raw(self) -> bool:
        """Whether every band arrives as stored digital numbers of the profile's dtype with the
        profile's scaling and DN offset, so the raw values can travel instead of the scaled ones
        with bit-identical model input (a coarser band resampled to float cannot)."""
        s = self.profile.scaling
        return all(b == BandScaling(s.dn_offset, s.scale, s.offset, b.source) for b in self.scaling) and all(
            g.factor == 1 and g.src.dtypes[0] == s.dtype and g.nodata == self.profile.nodata for g in self.groups)

    def read(self, window) -> tuple[np.ndarray, np.ndarray]:
        """(C_in, h, w) model input and a (h, w) validity mask (see ``read_into``)."""
        out = np.empty((self.profile.c_in, int(window.height), int(window.width)), np.float32)
        return out, self.read_into(window, out)

    def dn_offsets(self) -> dict[str, object]:
        """The DN offset each band was read with, and where it came from (for the output's tags)."""
        p = self.profile.scaling
        return {"source": ", ".join(dict.fromkeys(b.source for b in self.scaling)),
                **{s.band: round(b.dn_equivalent(p.offset), 6) for s, b in zip(self.date.bands, self.scaling)}}

    def read_into(self, window, out: np.ndarray) -> np.ndarray:
        """Write the window's model input into ``out`` (C_in, h, w; or the raw values when ``out`` is
        not float32, for a reader that ``reads_raw``) and return a (h, w) mask, True where every band has data (and the quality band, when masking, does not flag the pixel)."""  # noqa: E501
        valid = np.ones(out.shape[1:], bool)
        for i in range(len(self.groups)):
            valid &= self.read_group(i, window, out)
        if self.quality is not None:
            valid &= self.read_quality(window)
        return valid

    def read_group(self, i: int, window, out: np.ndarray) -> np.ndarray:
        """The bands of file ``i`` into their rows of ``out`` (see ``read_into``); their validity."""
        from rasterio.errors import RasterioError

        g = self.groups[i]
        # integers are read as they are stored: converting and scaling is one numpy pass below
        try:
            raw = g.read(window)
            valid = g.valid_from_masks(window) if g.needs_masks else np.ones(out.shape[1:], bool)
        except RasterioError as err:
            raise io_failure(err, g.sources[0].path) from None
        if not g.needs_masks and g.nodata is not None:
            valid &= ~(raw == np.asarray(g.nodata).astype(raw.dtype)).any(axis=0)
        if np.issubdtype(raw.dtype, np.floating):  # integer data cannot be NaN
            valid &= np.isfinite(raw).all(axis=0)
        for band, pos in zip(raw, g.positions):
            if out.dtype != np.float32:  # raw digital numbers, as stored (see reads_raw)
                out[pos] = band
            else:
                b = self.scaling[pos]
                scale_into(band, out[pos], b.dn_offset, b.scale, b.offset)
        return valid

    def read_quality(self, window) -> np.ndarray:
        """Where the quality band (read when masking) does not flag the pixel."""
        from rasterio.errors import RasterioError

        q, kind = self.quality
        try:
            code = q.read(1, window=window)
        except RasterioError as err:
            raise io_failure(err, self.date.quality[0]) from None
        if kind == "scl":
            return ~np.isin(code, SCL_MASKED)
        bits = sum(1 << b for b in QA_PIXEL_MASKED_BITS)
        return (code.astype(np.int64) & bits) == 0


__all__ = ["BandScaling", "BandSource", "DateInput", "DateReader", "Grid", "band_key", "band_order", "io_failure",
           "native_grid",
           "resolve_date"]
