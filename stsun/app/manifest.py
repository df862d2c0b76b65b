"""Job manifests for ``stsun predict-many``: which scenes to run, each an id and its dates.

Three forms, all checked before any cluster starts:
- a JSON list ``[{"id": "T33UUP-2023", "dates": ["a/date1.tif", "b/date2.tif"]}, ...]``;
- a CSV with the header ``id,date1,date2,...``;
- a STAC ItemCollection (GeoJSON FeatureCollection of Items), grouped into jobs per tile (the
  ``grid:code``, ``s2:mgrs_tile``, ``mgrs:*`` or ``landsat:wrs_path/row`` property, or one the user
  names) by a time rule: ``consecutive`` (every run of T_in consecutive acquisition days) or one
  ``START/END`` date window per date (the least cloudy item in each window, then the earliest).

A date is anything ``stsun predict`` takes (a raster, a directory of band files, a STAC Item JSON,
a URL of an Item or a raster: ``https://``, ``s3://``); relative paths are relative to the manifest. STAC items become Item files (``write_items``) because
``stsun predict`` reads one Item file per date. Ids name the output files, so they must be safe
file names; STAC item ids and tile ids that are not get a safe name with a short hash of the
original (``S2A/T1`` and ``S2A:T1`` must not share a file).
"""  # noqa: E501
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from stsun.atomic import atomic_write
from stsun.errors import ManifestError
from stsun.runtime.remote import is_remote

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Tile id properties, tried in order (Sentinel-2 and Landsat items of the common catalogues).
TILE_PROPERTIES = (("grid:code",), ("s2:mgrs_tile",), ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"),
                   ("landsat:wrs_path", "landsat:wrs_row"))


@dataclass(frozen=True)
class Job:
    id: str
    dates: tuple[str, ...]   # absolute paths, one per date, in date order


@dataclass
class Manifest:
    source: Path
    jobs: list[Job]
    items: dict[Path, dict] = field(default_factory=dict)  # STAC Item files to write before the run
    unpaired: list[str] = field(default_factory=list)      # STAC tiles that made no job, and why

    def write_items(self) -> None:
        for path, item in self.items.items():
            text = json.dumps(item, indent=1) + "\n"
            if not (path.is_file() and path.read_text() == text):  # a re-run leaves them untouched
                atomic_write(path, lambda tmp: tmp.write_text(text))


def read_manifest(path: str | Path, t_in: int, item_dir: str | Path, pair_rule: str = "consecutive",
                  tile_property: str | None = None) -> Manifest:
    """The jobs of a manifest file, checked: ids present, unique and file-safe, T_in dates each.
    ``item_dir`` is where a STAC ItemCollection's Item files go."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        jobs = _csv_jobs(path)
        manifest = Manifest(path, jobs)
    elif suffix in (".json", ".geojson"):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ManifestError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict) and data.get("type") == "FeatureCollection":
            manifest = _stac_jobs(path, t_in, Path(item_dir), pair_rule, tile_property)
        elif isinstance(data, list):
            manifest = Manifest(path, _json_jobs(path, data))
        else:
            raise ManifestError(f"{path}: expected a JSON list of {{\"id\": ..., \"dates\": [...]}} or a STAC "
                                f"ItemCollection (a FeatureCollection), got a {type(data).__name__}")
    else:
        raise ManifestError(f"{path}: unknown manifest type '{path.suffix}': give a JSON job list (.json), a CSV "
                            f"(.csv, columns id,date1,date2,...) or a STAC ItemCollection (.json/.geojson)")
    check_jobs(manifest.jobs, t_in, path)
    return manifest


def check_jobs(jobs: list[Job], t_in: int, source: Path) -> None:
    if not jobs:
        raise ManifestError(f"{source}: no jobs")
    seen: set[str] = set()
    for job in jobs:
        if not _ID.fullmatch(job.id):
            raise ManifestError(f"{source}: job id {job.id!r} cannot name a file: use letters, digits, '.', '_' "
                                f"and '-', starting with a letter or digit (at most 200)")
        if job.id in seen:
            raise ManifestError(f"{source}: job id '{job.id}' appears more than once")
        seen.add(job.id)
        if len(job.dates) != t_in:
            raise ManifestError(f"{source}: job '{job.id}' has {len(job.dates)} date(s); "
                                f"the profile needs {t_in} (T_in)")


def _resolve(base: Path, date: str) -> str:
    if is_remote(date):  # a URL (https://, s3://) is read as it is
        return date
    return str((base / Path(date).expanduser()).resolve())


def _json_jobs(path: Path, data: list) -> list[Job]:
    jobs = []
    for i, entry in enumerate(data):
        where = f"{path}: entry {i + 1}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} is a {type(entry).__name__}, not an object with \"id\" and \"dates\"")
        if "id" not in entry:
            raise ManifestError(f"{where} has no \"id\"")
        if not isinstance(entry["id"], str):
            raise ManifestError(f"{where}: \"id\" must be a string, got {entry['id']!r}")
        dates = entry.get("dates")
        if not isinstance(dates, list) or not all(isinstance(d, str) and d for d in dates):
            raise ManifestError(f"{where} (job '{entry['id']}'): \"dates\" must be a list of paths")
        unknown = set(entry) - {"id", "dates"}
        if unknown:
            raise ManifestError(f"{where} (job '{entry['id']}'): unknown field(s) {', '.join(sorted(unknown))}")
        jobs.append(Job(entry["id"], tuple(_resolve(path.parent, d) for d in dates)))
    return jobs


def _csv_jobs(path: Path) -> list[Job]:
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    if not rows:
        raise ManifestError(f"{path}: empty")
    header = [h.strip() for h in rows[0]]
    expected = ["id"] + [f"date{i}" for i in range(1, len(header))]
    if header != expected or len(header) < 2:
        raise ManifestError(f"{path}: the header must be id,date1,date2,... (got {','.join(header)})")
    jobs = []
    for n, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row]
        if len(cells) > len(header):
            raise ManifestError(f"{path}: line {n} has {len(cells)} columns, the header {len(header)}")
        if not cells[0]:
            raise ManifestError(f"{path}: line {n} has no id")
        jobs.append(Job(cells[0], tuple(_resolve(path.parent, c) for c in cells[1:] if c)))
    return jobs


def safe_name(text: str) -> str:
    """``text`` as a file name: itself when safe, else its unsafe characters replaced and a short
    hash of the original appended, so names that sanitize alike stay apart."""
    if _ID.fullmatch(text) and len(text) <= 180:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', text)[:160].lstrip('.-_')}-{digest}".lstrip("-")


def tile_id(properties: dict, tile_property: str | None = None) -> str | None:
    """The tile an item belongs to: ``tile_property``, else the first of TILE_PROPERTIES it has."""
    for keys in [(tile_property,)] if tile_property else TILE_PROPERTIES:
        if all(properties.get(k) not in (None, "") for k in keys):
            return "".join(str(properties[k]) for k in keys)
    return None


def parse_pair_rule(rule: str, t_in: int) -> list[tuple[dt.date, dt.date]] | None:
    """None for ``consecutive``; else T_in (start, end) date windows, inclusive."""
    if rule == "consecutive":
        return None
    windows = []
    for part in rule.split(","):
        try:
            start, end = (dt.date.fromisoformat(s.strip()) for s in part.split("/"))
        except ValueError:
            raise ManifestError(f"pair rule {rule!r}: expected 'consecutive' or START/END windows such as "
                                f"2023-06-01/2023-08-31,2024-06-01/2024-08-31") from None
        if end < start:
            raise ManifestError(f"pair rule {rule!r}: window {part} ends before it starts")
        windows.append((start, end))
    if len(windows) != t_in:
        raise ManifestError(f"pair rule {rule!r} has {len(windows)} window(s); the profile needs {t_in} dates (T_in)")
    return windows


def _stac_jobs(path: Path, t_in: int, item_dir: Path, pair_rule: str, tile_property: str | None) -> Manifest:
    import pystac

    windows = parse_pair_rule(pair_rule, t_in)
    try:
        collection = pystac.ItemCollection.from_file(str(path))
    except (KeyError, ValueError, TypeError, pystac.STACError) as err:
        raise ManifestError(f"{path}: not a STAC ItemCollection ({err})") from None
    by_tile: dict[str, list[pystac.Item]] = {}
    for item in collection:
        tile = tile_id(item.properties, tile_property)
        if tile is None:
            looked = tile_property or ", ".join("+".join(k) for k in TILE_PROPERTIES)
            raise ManifestError(f"{path}: item '{item.id}' has no tile id (looked for {looked}); "
                                f"name the property with --tile-property")
        if item.datetime is None:
            raise ManifestError(f"{path}: item '{item.id}' has no datetime")
        by_tile.setdefault(safe_name(tile), []).append(item)
    jobs, unpaired, used = [], [], {}
    for tile, items in sorted(by_tile.items()):
        items.sort(key=lambda it: it.datetime)
        groups = _consecutive(path, tile, items, t_in) if windows is None else _windowed(items, windows)
        if not groups:
            unpaired.append(f"{tile}: {len(items)} item(s), " +
                            (f"fewer than {t_in} acquisition days" if windows is None else "a window without an item"))
        for group in groups:
            days = "_".join(f"{it.datetime:%Y%m%d}" for it in group)
            jobs.append(Job(f"{tile}_{days}", tuple(str(_item_file(it, item_dir, path, used)) for it in group)))
    return Manifest(path, jobs, used, unpaired)


def _consecutive(path: Path, tile: str, items: list, t_in: int) -> list[tuple]:
    days = [it.datetime.date() for it in items]
    for a, b, day in zip(items, items[1:], days[1:]):
        if day == a.datetime.date():
            raise ManifestError(f"{path}: tile {tile} has two items on {day} ('{a.id}', '{b.id}'): keep one per day "
                                f"(or pair by date windows)")
    return [tuple(items[i:i + t_in]) for i in range(len(items) - t_in + 1)]


def _windowed(items: list, windows: list[tuple[dt.date, dt.date]]) -> list[tuple]:
    chosen = []
    for start, end in windows:
        inside = [it for it in items if start <= it.datetime.date() <= end]
        if not inside:
            return []
        # least cloudy first (items without eo:cloud_cover after those with), then the earliest
        chosen.append(min(inside, key=lambda it: (it.properties.get("eo:cloud_cover") is None,
                                                  it.properties.get("eo:cloud_cover") or 0, it.datetime)))
    return [tuple(chosen)]


def _item_file(item, item_dir: Path, source: Path, used: dict[Path, dict]) -> Path:
    """Where the item's standalone Item file goes (its asset hrefs made absolute), recorded in ``used``."""
    target = (item_dir / f"{safe_name(item.id)}.json").resolve()
    data = _item_data(item, source)
    if used.setdefault(target, data) != data:  # an item in several jobs is fine, two items of one id are not
        raise ManifestError(f"{source}: two different items have the id '{item.id}'")
    return target


def _item_data(item, source: Path) -> dict:
    """The item as a standalone Item file: local asset hrefs absolute, no self link."""
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    for asset in data.get("assets", {}).values():
        href = asset.get("href", "")
        if not is_remote(href) and "://" not in href and not Path(href).is_absolute():
            asset["href"] = _resolve(source.parent, href)
    data["links"] = [link for link in data.get("links", []) if link.get("rel") != "self"]
    return data
