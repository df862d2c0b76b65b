"""A results catalogue: a STAC Item beside each map (``X.tif`` -> ``X.json``), and for
``predict-many`` an ItemCollection of them all (``catalogue.json``).

Each Item carries what a user needs to find and trust a map: geometry and bbox (WGS84) and the
``proj:`` fields of the output grid; the input items' ids and datetimes (the first input's
datetime, the span in ``start_datetime``/``end_datetime``); the ``classification`` extension on
each band (class values, names, colours, the nodata value); and provenance under ``stsun:``
(profile, build report sha256, backend, precision, software version).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path, PurePosixPath

from stsun.atomic import atomic_write
from stsun.build_report import REPORT_NAME as BUILD_REPORT
from stsun.classmaps import CHANGE_COLOURS, class_colours
from stsun.digest import file_sha256
from stsun.errors import SceneError

STSUN_FIELDS = ("stsun:profile", "stsun:task", "stsun:build_report_sha256", "stsun:backend", "stsun:precision",
                "stsun:version", "stsun:inputs")


def _classes(task: str, classes: tuple[str, ...], band: str, nodata: int) -> list:
    from pystac.extensions.classification import Classification

    def hexcolour(c: tuple[int, int, int]) -> str:
        return "".join(f"{v:02X}" for v in c)

    if task == "bcd" or band.startswith("fromto"):
        values = [Classification.create(0, "no change", name="no_change", color_hint=hexcolour(CHANGE_COLOURS[0])),
                  Classification.create(1, "change", name="change", color_hint=hexcolour(CHANGE_COLOURS[1]))]
        if band.startswith("fromto"):  # 1 + from * C + to: the change codes are named by their pair
            c = len(classes)
            values = [values[0]] + [Classification.create(1 + a * c + b, f"{classes[a]} to {classes[b]}",
                                                          name=f"{_name(classes[a])}_to_{_name(classes[b])}")
                                    for a in range(c) for b in range(c) if a != b]
    else:
        labels = classes if len(classes) > 1 else (f"not {classes[0]}", classes[0])
        colours = class_colours(len(classes))
        values = [Classification.create(i, label, name=_name(label), color_hint=hexcolour(colours[i]))
                  for i, label in enumerate(labels)]
    return values + [Classification.create(nodata, "no data", name="nodata", nodata=True)]


def _name(label: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "_", label).strip("_") or "class"


def result_item(map_path: Path, href: str, dates: list, engine, build_dir: str | Path) -> dict:
    """The STAC Item (a dict) of the map at ``map_path`` (``href``: its URL or file name), made
    from ``dates`` (``DateInput``s) by ``engine`` from the build at ``build_dir``."""
    import datetime as dt

    import pystac
    import rasterio
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from rasterio.warp import transform_bounds

    import stsun

    p = engine.profile
    with rasterio.open(map_path) as src:
        crs, transform, shape, bounds = src.crs, src.transform, (src.height, src.width), src.bounds
        bands, nodata = list(src.descriptions), int(src.nodata)
        dtype = src.dtypes[0]
    west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds) if crs else bounds
    geometry = {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                    [west, south]]]}
    times = sorted(dt.datetime.fromisoformat(d.datetime.replace("Z", "+00:00")) for d in dates if d.datetime)
    stem = PurePosixPath(href).stem  # x.tif, x.TIFF -> x
    item = pystac.Item(stem, geometry, [west, south, east, north],
                       times[0] if times else dt.datetime.now(dt.timezone.utc),
                       {"start_datetime": times[0].isoformat(), "end_datetime": times[-1].isoformat()} if times else {})
    sha = file_sha256(Path(build_dir) / BUILD_REPORT)
    item.properties.update({
        "stsun:profile": p.name, "stsun:task": p.task, "stsun:build_report_sha256": sha,
        "stsun:backend": engine.backend, "stsun:precision": getattr(engine, "precision", None),
        "stsun:version": stsun.__version__,
        "stsun:inputs": [{"source": str(d.source), "id": d.item_id, "datetime": d.datetime} for d in dates]})
    asset = pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"], title=f"{p.name} {p.task} map",
                         extra_fields={"nodata": nodata, "data_type": dtype})
    item.add_asset("map", asset)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    if crs is not None:
        proj.code = crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"
    proj.shape, proj.transform, proj.bbox = list(shape), list(transform)[:6], list(bounds)
    ClassificationExtension.ext(asset, add_if_missing=True)  # declares the extension; classes per band below
    asset.extra_fields["bands"] = [{"name": b or f"band{i + 1}", "classification:classes": [
        c.to_dict() for c in _classes(p.task, tuple(p.classes), b or "", nodata)]} for i, b in enumerate(bands)]
    return item.to_dict(include_self_link=False)


def check_item_path(map_path: Path) -> Path:
    """Where the map's Item goes (``X.tif`` -> ``X.json``), refused when a file there is not a
    result Item of ours (an input STAC Item, a user's file): it would be overwritten."""
    path = map_path.with_suffix(".json")
    if path.exists():
        try:
            ours = "stsun:version" in json.loads(path.read_text()).get("properties", {})
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise SceneError(f"{path} exists and is not a result Item of stsun's: writing the map's STAC Item "
                             f"there would overwrite it; choose another output name")
    return path


def write_item(map_path: Path, href: str, dates: list, engine, build_dir: str | Path) -> Path:
    """The map's Item, written beside it (``X.tif`` -> ``X.json``)."""
    path = check_item_path(map_path)
    data = result_item(map_path, href, dates, engine, build_dir)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))
    return path


def item_collection(items: list[dict]) -> dict:
    """An ItemCollection (a GeoJSON FeatureCollection) of result Items."""
    import pystac

    return pystac.ItemCollection([pystac.Item.from_dict(i) for i in items]).to_dict()


def write_collection(outdir: Path, store: str | None, job_ids: list[str]) -> Path:
    """``catalogue.json`` in ``outdir``: an ItemCollection of the Items of ``job_ids``' maps
    (read from the store when ``store`` is given), hrefs relative to it."""
    import pystac

    from .outputs import get_text, join

    items = []
    for job_id in job_ids:
        name = join(store, f"{job_id}.json") if store else outdir / f"{job_id}.json"
        text = get_text(name) if store else (name.read_text() if name.is_file() else None)
        if not text:
            continue
        try:  # a corrupt Item leaves its map out of the catalogue, not the others
            item = json.loads(text)
            pystac.Item.from_dict(item)
            items.append(item)
        except (ValueError, KeyError, TypeError, AttributeError, pystac.STACError, pystac.errors.STACTypeError) as err:
            warnings.warn(f"{name}: not a STAC Item, left out of the catalogue ({err})", stacklevel=2)
    path = outdir / "catalogue.json"
    data = item_collection(items)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))
    return path


__all__ = ["STSUN_FIELDS", "check_item_path", "item_collection", "result_item", "write_collection", "write_item"]
