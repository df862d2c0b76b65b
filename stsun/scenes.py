"""Synthetic scenes as georeferenced GeoTIFFs: one multi-band file per date plus labels.

Needs the ``geo`` extra (rasterio). The scenes sit on a real projected grid (UTM by
default), with band descriptions, nodata and the profile's raw digital-number encoding, so
that scene-level tools can be tested exactly as they would run on real products.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from stsun.atomic import atomic_path
from stsun.profiles import Profile
from stsun.synthetic import synthetic_tiles

DEFAULT_CRS = "EPSG:32633"          # WGS 84 / UTM zone 33N
DEFAULT_ORIGIN = (500000.0, 5000000.0)  # upper-left corner, metres


def reflectance_to_dn(x: np.ndarray, profile: Profile, nodata: int) -> np.ndarray:
    """Invert the profile's scaling (x * scale + offset) into uint16 digital numbers."""
    dn = np.round((x - profile.scaling.offset) / profile.scaling.scale)
    dn = np.where(np.isnan(x), nodata, np.clip(dn, 1, 65535))
    return dn.astype(np.uint16)


def write_scene(profile: Profile, out_dir: str | Path, size: int, seed: int = 0, crs: str = DEFAULT_CRS,
                origin: tuple[float, float] = DEFAULT_ORIGIN, nodata_stripes: int = 0,
                cloud_cover: float = 0.0, block: int = 1024, height: int | None = None) -> dict[str, list[Path]]:
    """Write ``date{t}.tif`` (uint16 DN, one band per profile band, described by name) and
    ``labels_date{t}.tif`` (uint8 class index, 255 = nodata) for a scene ``size`` pixels wide
    and ``height`` (default ``size``) high.

    The scene is generated and written in independent ``block`` x ``block`` pieces, so memory
    stays bounded for scenes of any size (pieces do not continue each other's land cover)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    out_dir = Path(out_dir)
    transform = from_origin(origin[0], origin[1], profile.gsd_m, profile.gsd_m)
    nodata = int(profile.nodata) if profile.nodata is not None else 0
    height = height or size
    common = {"driver": "GTiff", "width": size, "height": height, "crs": crs, "transform": transform,
              "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    paths = {"dates": [out_dir / f"date{t + 1}.tif" for t in range(profile.t_in)],
             "labels": [out_dir / f"labels_date{t + 1}.tif" for t in range(profile.t_in)]}

    def write_all(tmps: list[Path]) -> None:
        with contextlib.ExitStack() as stack:
            images = [stack.enter_context(rasterio.open(tmp, "w", count=profile.c_in, dtype="uint16",
                                                        nodata=nodata, **common)) for tmp in tmps[:profile.t_in]]
            labels = [stack.enter_context(rasterio.open(tmp, "w", count=1, dtype="uint8", nodata=255, **common))
                      for tmp in tmps[profile.t_in:]]
            for k, (r, c) in enumerate((r, c) for r in range(0, height, block) for c in range(0, size, block)):
                h, w = min(block, height - r), min(block, size - c)
                piece = profile.model_copy(update={"tile_size": max(h, w)})
                x, lab = synthetic_tiles(piece, 1, seed=seed * 100003 + k, nodata_stripes=nodata_stripes,
                                         cloud_cover=cloud_cover)
                window = Window(c, r, w, h)
                for t in range(profile.t_in):
                    images[t].write(reflectance_to_dn(x[0, t, :, :h, :w], profile, nodata), window=window)
                    labels[t].write(np.where(lab[0, t, :h, :w] < 0, 255, lab[0, t, :h, :w]).astype(np.uint8),
                                    1, window=window)
            for t, dst in enumerate(images):
                dst.descriptions = profile.band_names
                dst.update_tags(profile=profile.name, date_days=str(profile.dates_days[t]))
            for dst in labels:
                dst.update_tags(classes=",".join(profile.classes))

    with contextlib.ExitStack() as stack:  # every file appears only if all were written
        write_all([stack.enter_context(atomic_path(p, suffix=".tmp.tif")) for p in paths["dates"] + paths["labels"]])
    return paths
