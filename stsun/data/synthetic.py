"""Synthetic multi-sensor tiles: land-cover maps with per-class reflectance spectra.

Reflectance is a smooth function of wavelength per class, so the same scene can be sampled
by any sensor's band centres. Tiles come out already scaled (surface reflectance), which
is what a built engine takes. Used for fidelity checks, INT8 calibration and benchmarks.

``write_scene`` writes whole synthetic scenes as georeferenced GeoTIFFs (one multi-band file per
date plus labels; needs the ``geo`` extra, rasterio). They sit on a real projected grid (UTM by
default), with band descriptions, nodata and the profile's raw digital-number encoding, so that
scene-level tools are tested exactly as they would run on real products.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from stsun.atomic import atomic_path
from stsun.profiles import Profile
from stsun.raw import S2_BAND_IDS


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def class_spectrum(name: str, wavelength_nm: np.ndarray) -> np.ndarray:
    """Surface reflectance (0..1) of a land-cover class at the given wavelengths."""
    w = np.asarray(wavelength_nm, dtype=np.float64) / 1000.0  # micrometres
    red_edge = _sigmoid((w - 0.715) / 0.015)                  # vegetation: dark red, bright NIR
    swir_drop = np.exp(-((w - 1.45) / 0.9) ** 2)
    green_peak = 0.04 * np.exp(-((w - 0.55) / 0.03) ** 2)
    vegetation = 0.03 + green_peak + 0.40 * red_edge * swir_drop + 0.08 * (w > 1.3)
    spectra = {
        "water": 0.06 * np.exp(-((w - 0.49) / 0.12) ** 2) + 0.005,
        "forest": 0.8 * vegetation,
        "forest and other vegetation": 0.8 * vegetation,
        "grassland": vegetation + 0.03,
        "agriculture": 1.1 * vegetation + 0.02 * np.sin(8 * w),
        "wetlands": 0.5 * vegetation + 0.02,
        "soil": 0.10 + 0.18 * np.clip(w - 0.4, 0, None),
        "barren": 0.18 + 0.12 * np.clip(w - 0.4, 0, None),
        "impervious surface": 0.22 + 0.02 * w,
        "building": 0.28 + 0.04 * w,
        "road": 0.14 + 0.01 * w,
        "snow and ice": 0.9 - 0.35 * _sigmoid((w - 1.2) / 0.1),
        "cloud": 0.7 + 0.0 * w,
        "background": 0.12 + 0.05 * w,
    }
    if name not in spectra:
        # Unknown class names still get a distinct, deterministic smooth spectrum.
        seed = sum(map(ord, name))
        spectra[name] = 0.1 + 0.08 * np.sin(seed + 3 * w) ** 2
    return spectra[name]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Gaussian random field low-passed in Fourier space; ``scale`` is the feature size in pixels."""
    h, w = shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    filt = np.exp(-(fy ** 2 + fx ** 2) * (np.pi * scale) ** 2 / 2)
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * filt, s=(h, w))
    return field / (field.std(axis=(-2, -1), keepdims=True) + 1e-12)


def land_cover(rng: np.random.Generator, size: int, classes: list[str], feature_px: float) -> np.ndarray:
    """(size, size) map of indices into ``classes``: blob-shaped regions, then straight roads
    and rectangular buildings of varied size where those classes are asked for."""
    lc = smooth_noise(rng, (len(classes), size, size), feature_px).argmax(axis=0)
    urban = [classes.index(c) for c in ("road", "impervious surface") if c in classes]
    if urban:
        yy, xx = np.mgrid[:size, :size]
        for _ in range(rng.integers(1, 4)):
            angle, offset = rng.uniform(0, np.pi), rng.uniform(-size / 2, size / 2)
            dist = np.abs((xx - size / 2) * np.sin(angle) - (yy - size / 2) * np.cos(angle) - offset)
            lc[dist < max(1.0, 0.01 * size)] = urban[0]
    built = [classes.index(c) for c in ("building", "impervious surface") if c in classes]
    if built:
        for _ in range(rng.integers(0, max(2, size // 16))):
            h, w = rng.integers(max(2, size // 64), max(3, size // 10), size=2)
            r, c = rng.integers(0, size - h), rng.integers(0, size - w)
            lc[r:r + h, c:c + w] = built[0]
    return lc


def add_clouds(rng: np.random.Generator, img: np.ndarray, cover: float) -> np.ndarray:
    """Blend bright, spectrally flat clouds over ``cover`` of the image (C, H, W)."""
    field = smooth_noise(rng, img.shape[-2:], img.shape[-1] / 6)
    alpha = np.clip((field - np.quantile(field, 1 - cover)) * 2, 0, 1)
    return img * (1 - alpha) + 0.7 * alpha


def synthetic_tiles(profile: Profile, n: int, seed: int = 0, change_fraction: float = 0.25,
                    noise: float = 0.01, cloud_cover: float = 0.0,
                    nodata_stripes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` tiles for a profile: x (n, T_in, C_in, H, W) float32 reflectance and the class
    labels per date (n, T_in, H, W) int64 (indices into ``profile.classes``, or, for
    single-class profiles, 1 = that class, 0 = other). Change between dates is exactly
    where the labels differ. Optional clouds (labels unchanged: the ground is still there)
    and nodata stripes (x = NaN, label -1)."""
    rng = np.random.default_rng(seed)
    size, t_in = profile.tile_size, profile.t_in
    classes = list(profile.classes)
    if profile.c_out == 1:  # binary profiles: the class against generic background
        classes = ["background", "building" if classes[0] == "change" else classes[0]]
    spectra = np.stack([class_spectrum(c, np.array(profile.wavelengths_nm)) for c in classes])  # (K, C)
    feature_px = max(4.0, 600.0 / profile.gsd_m)  # land-cover patches of ~600 m, whatever the tile
    x = np.empty((n, t_in, profile.c_in, size, size), np.float32)
    labels = np.empty((n, t_in, size, size), np.int64)
    for i in range(n):
        lc = land_cover(rng, size, classes, min(feature_px, size / 4))
        for t in range(t_in):
            if t:
                field = smooth_noise(rng, (size, size), size / 8)
                changed = field > np.quantile(field, 1 - change_fraction)
                lc = np.where(changed, land_cover(rng, size, classes, feature_px / 2), lc)
            labels[i, t] = lc
            texture = 1.0 + 0.05 * smooth_noise(rng, (size, size), 2.0)
            img = spectra[lc].transpose(2, 0, 1) * texture
            img = img + noise * rng.standard_normal(img.shape)
            if cloud_cover > 0:
                img = add_clouds(rng, img, cloud_cover)
            x[i, t] = img
            for _ in range(nodata_stripes):
                r = rng.integers(0, size - 4)
                x[i, t, :, r:r + rng.integers(2, 6)] = np.nan
    nan = np.isnan(x).any(axis=2)
    labels[nan] = -1
    return x, labels


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


S2_20M_BANDS = ("B5", "B6", "B7", "B8A", "B11", "B12")  # Sentinel-2 bands distributed at 20 m


def coarsen(data: np.ndarray, factor: int = 2) -> np.ndarray:
    """``factor`` x ``factor`` block means, rounded to the input's dtype."""
    h, w = data.shape
    return data.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3)).round().astype(data.dtype)


def write_band_files(date_file: str | Path, profile: Profile, out_dir: str | Path, name, coarse: tuple[str, ...] = (),
                     driver: str = "GTiff", dn_add: int = 0) -> dict[str, Path]:
    """Split a multi-band date (as ``write_scene`` writes it) the way products are distributed: one
    single-band raster per profile band at ``out_dir / name(band, resolution_m)``, the ``coarse``
    bands at half resolution (2 x 2 means), ``dn_add`` added to every valid digital number.
    GTiff is tiled and deflated, JP2 lossless."""
    import rasterio

    out_dir = Path(out_dir)
    extra = {"QUALITY": 100, "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {"tiled": True, "compress": "deflate"}
    paths = {}
    with rasterio.open(date_file) as src:
        for i, band in enumerate(profile.band_names):
            data, transform, factor = src.read(i + 1), src.transform, 2 if band in coarse else 1
            if dn_add:
                data = np.where(data == src.nodata, data, data + dn_add).astype(data.dtype)
            if factor > 1:
                data, transform = coarsen(data, factor), transform * rasterio.Affine.scale(factor)
            path = paths[band] = out_dir / name(band, profile.gsd_m * factor)
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver=driver, width=data.shape[1], height=data.shape[0], count=1,
                               dtype=data.dtype, crs=src.crs, transform=transform, nodata=src.nodata,
                               **extra) as dst:
                dst.write(data, 1)
    return paths



def write_safe(date_file: str | Path, profile: Profile, out_dir: str | Path, baseline: str = "05.10",
               when: str = "20230601T100559", tile: str = "T33UUP", coarse: tuple[str, ...] = S2_20M_BANDS,
               driver: str = "GTiff", metadata: bool = True) -> Path:
    """A Sentinel-2 L2A SAFE product of a multi-band date (as ``write_scene`` writes it): bands under
    ``GRANULE/*/IMG_DATA/R10m|R20m``, named as ESA names them. From baseline 04.00 on the digital
    numbers carry +1000, and ``MTD_MSIL2A.xml`` (unless ``metadata`` is False) says so per band
    (``BOA_ADD_OFFSET`` -1000), as real products do. Returns the ``.SAFE`` directory."""
    import xml.etree.ElementTree as ET

    name = f"S2B_MSIL2A_{when}_N{baseline.replace('.', '')}_R022_{tile}_{when[:8]}T120000.SAFE"
    safe = Path(out_dir) / name
    img = safe / "GRANULE" / f"L2A_{tile}_A032000_{when}" / "IMG_DATA"
    offset = 1000 if float(baseline) >= 4.0 else 0
    suffix = ".jp2" if driver == "JP2OpenJPEG" else ".tif"
    write_band_files(date_file, profile, img,
                     lambda b, r: f"R{round(r)}m/{tile}_{when}_B{b[1:].zfill(2)}_{round(r)}m{suffix}",
                     coarse, driver, dn_add=offset)
    if metadata:
        root = ET.Element("n1:Level-2A_User_Product",
                          {"xmlns:n1": "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"})
        general = ET.SubElement(root, "n1:General_Info")
        info = ET.SubElement(general, "Product_Info")
        for tag, text in (("PRODUCT_TYPE", "S2MSI2A"), ("PROCESSING_BASELINE", baseline),
                          ("PROCESSING_LEVEL", "Level-2A")):
            ET.SubElement(info, tag).text = text
        chars = ET.SubElement(general, "Product_Image_Characteristics")
        quant = ET.SubElement(chars, "QUANTIFICATION_VALUES_LIST")
        ET.SubElement(quant, "BOA_QUANTIFICATION_VALUE", unit="none").text = "10000"
        if offset:
            offsets = ET.SubElement(chars, "BOA_ADD_OFFSET_VALUES_LIST")
            for i in range(len(S2_BAND_IDS)):
                ET.SubElement(offsets, "BOA_ADD_OFFSET", band_id=str(i)).text = str(-offset)
        spectral = ET.SubElement(chars, "Spectral_Information_List")
        for i, band in enumerate(S2_BAND_IDS):
            ET.SubElement(spectral, "Spectral_Information", bandId=str(i), physicalBand=band)
        ET.ElementTree(root).write(safe / "MTD_MSIL2A.xml", encoding="UTF-8", xml_declaration=True)
    return safe
