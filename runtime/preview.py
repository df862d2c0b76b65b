"""A PNG overview of a scene's prediction, beside its dates' RGB (``stsun predict --preview``)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from stsun.atomic import atomic_write
from stsun.classmaps import CHANGE_COLOURS, class_colours
from stsun.display import stretch
from stsun.errors import SceneError

from .remote import gdal_env, is_remote
from .scene_inputs import DateReader, Grid, native_grid, resolve_date
from .scene_outputs import band_name


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
            if any(is_remote(d) for d in dates):  # reads with our timeouts and retries, not GDAL's defaults
                stack.enter_context(gdal_env())
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
