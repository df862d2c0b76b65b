"""Scenes as users get them: per-band products (10 m and 20 m bands, a SAFE tree, a Landsat set,
a STAC item) in, Cloud-Optimized GeoTIFF out. Every product here is written by the test itself
from one synthetic scene, so the pre-stacked equivalent is known exactly."""
import json

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")
from affine import Affine  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402
from rasterio.warp import reproject  # noqa: E402
from rio_cogeo.cogeo import cog_validate  # noqa: E402

from stsun import load_profile  # noqa: E402
from stsun.app.pipeline import build_artifacts  # noqa: E402
from stsun.data.synthetic import S2_20M_BANDS, coarsen, write_band_files, write_safe, write_scene  # noqa: E402
from stsun.errors import SceneError  # noqa: E402
from stsun.runtime import load_engine  # noqa: E402
from stsun.runtime.scene import SceneOptions, predict_scene  # noqa: E402
from stsun.runtime.scene_inputs import band_key, resolve_date  # noqa: E402

# baseline 03.01 (2021): digital numbers without the +1000 that baselines >= 04.00 add
SAFE_GRANULE = "S2B_MSIL2A_20210601T100559_N0301_R022_T33UUP_20210601T120000.SAFE/GRANULE/L2A_T33UUP_A032000/IMG_DATA"


def write_band(path, data, transform, crs, nodata=0, driver="GTiff"):
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"QUALITY": 100, "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {"tiled": True}
    with rasterio.open(path, "w", driver=driver, width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, **extra) as dst:
        dst.write(data, 1)


def split(date_file, profile, name, out_dir, coarse=S2_20M_BANDS, driver="GTiff", suffix=".tif"):
    """One file per band (``name(band, resolution_m) + suffix``); ``coarse`` bands at half the
    resolution. Returns {band: path}."""
    return write_band_files(date_file, profile, out_dir, lambda b, r: f"{name(b, round(r))}{suffix}", coarse, driver)


def prestack(paths, profile, grid_file, out):
    """What a user stacking by hand would make: every band warped bilinearly onto the 10 m grid."""
    with rasterio.open(grid_file) as ref:
        meta = {**ref.profile, "count": profile.c_in, "dtype": "float32", "nodata": 0}
        stack = np.zeros((profile.c_in, ref.height, ref.width), np.float32)
        for i, band in enumerate(profile.band_names):
            with rasterio.open(paths[band]) as src:
                reproject(rasterio.band(src, 1), stack[i], dst_transform=ref.transform, dst_crs=ref.crs,
                          resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0)
    with rasterio.open(out, "w", **{k: v for k, v in meta.items()
                                    if k not in ("blockxsize", "blockysize", "tiled")}) as dst:
        dst.write(stack)
        for i, band in enumerate(profile.band_names):
            dst.set_band_description(i + 1, band)
    return out


def read_map(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src


def agreement(a, b, nodata=255):
    ok = (a != nodata) & (b != nodata)
    return float((a[ok] == b[ok]).mean()), float(ok.mean())


@pytest.fixture(scope="module")
def s2(tmp_path_factory, scd_build):
    root = tmp_path_factory.mktemp("s2")
    profile = load_profile("sentinel2-scd")
    engine = load_engine(scd_build, backend="onnxruntime")
    scene = write_scene(profile, root / "scene", size=512, seed=11)
    return root, profile, engine, scene["dates"]


def test_band_ids_in_file_names():
    assert [band_key(n) for n in ("B02", "b2", "B8A", "B08", "B11", "Red")] == ["B2", "B2", "B8A", "B8", "B11", "red"]


def test_band_directories_match_the_prestacked_scene(s2, tmp_path):
    """Flat band directories (10 m + 20 m bands): the output is on the 10 m grid, keeps CRS and
    transform, is a valid COG, and agrees with the same bands stacked by hand."""
    _, profile, engine, dates = s2
    dirs, stacks = [], []
    for t, date in enumerate(dates):
        paths = split(date, profile, lambda b, r: f"T33UUP_2023060{t + 1}_B{b[1:].zfill(2)}_{r}m", tmp_path / f"d{t}")
        dirs.append(tmp_path / f"d{t}")
        stacks.append(prestack(paths, profile, paths["B2"], tmp_path / f"stack{t}.tif"))
    assert resolve_date(dirs[0], profile).kind == "band directory"
    out = predict_scene(engine, dirs, tmp_path / "dirs.tif", SceneOptions(progress=False))
    ref = predict_scene(engine, stacks, tmp_path / "stacked.tif", SceneOptions(progress=False))
    got, prof, _ = read_map(out)
    want, _, _ = read_map(ref)
    with rasterio.open(dirs[0] / "T33UUP_20230601_B02_10m.tif") as b02:
        assert (prof["crs"], prof["transform"], (prof["height"], prof["width"])) == (b02.crs, b02.transform, b02.shape)
    agree, covered = agreement(got, want)
    assert agree >= 0.99 and covered > 0.95, (agree, covered)
    valid, errors, _ = cog_validate(str(out))
    assert valid, errors
    with rasterio.open(out) as src:  # overviews by MODE keep class codes; colours and names are kept
        assert src.overviews(1) and json.loads(src.tags()["colormap"])["0"] == [214, 60, 60]
        assert src.descriptions[0] == "class_date1" and src.tags()["profile"] == "sentinel2-scd"
        assert set(np.unique(src.read(1, out_shape=(1, 128, 128)))) <= set(range(profile.c_out)) | {255}


def test_safe_product_prefers_the_finest_band_and_masks_clouds(s2, tmp_path):
    """A SAFE tree of JP2s: B02 exists at 10, 20 and 60 m (10 m is taken), SCL at 20 m masks a
    cloud block on request, and only then."""
    _, profile, engine, dates = s2
    safes = []
    for t, date in enumerate(dates):
        root = tmp_path / f"safe{t}" / SAFE_GRANULE
        paths = split(date, profile, lambda b, r: f"R{r}m/T33UUP_2023060{t + 1}T100559_B{b[1:].zfill(2)}_{r}m",
                      root, driver="JP2OpenJPEG", suffix=".jp2")
        with rasterio.open(paths["B2"]) as b02, rasterio.open(paths["B5"]) as b05:
            data = b02.read(1)
            write_band(root / "R20m" / "T33UUP_B02_20m.jp2", coarsen(data), b05.transform, b05.crs,
                       driver="JP2OpenJPEG")
            write_band(root / "R60m" / "T33UUP_B02_60m.jp2", coarsen(data, 4)[:64, :64],
                       b05.transform * Affine.scale(3), b05.crs, driver="JP2OpenJPEG")
            scl = np.full((256, 256), 4, np.uint8)  # 4 = vegetation
            if t == 1:
                scl[0:64, 0:64] = 9  # cloud, high probability: the top-left 128 x 128 px at 10 m
            write_band(root / "R20m" / "T33UUP_SCL_20m.jp2", scl, b05.transform, b05.crs, nodata=None,
                       driver="JP2OpenJPEG")
            # products carry per-band masks in QI_DATA (JP2 since baseline 04.00): they claim no band
            write_band(root.parent / "QI_DATA" / "MSK_DETFOO_B02.jp2", scl, b05.transform, b05.crs, nodata=None,
                       driver="JP2OpenJPEG")
        safes.append(tmp_path / f"safe{t}")
    date = resolve_date(safes[0], profile)
    assert date.kind == "Sentinel-2 SAFE product" and date.quality[1] == "scl"
    assert next(s.path for s in date.bands if s.band == "B2").endswith("R10m/T33UUP_20230601T100559_B02_10m.jp2")
    plain = read_map(predict_scene(engine, safes, tmp_path / "plain.tif", SceneOptions(progress=False)))[0]
    masked = read_map(predict_scene(engine, safes, tmp_path / "masked.tif", SceneOptions(mask_quality=True,
                                                                                          progress=False)))[0]
    assert (masked[:, :128, :128] == 255).all() and (plain[:, :128, :128] != 255).all()
    assert (masked[:, 128:, :] == plain[:, 128:, :]).mean() > 0.99  # elsewhere unchanged (blending aside)
    assert (masked != 255).mean() > 0.9


def test_baseline_offset_is_read_from_the_product(s2, tmp_path):
    """A baseline-05.10 SAFE stores DN + 1000 and says so in MTD_MSIL2A.xml (BOA_ADD_OFFSET -1000):
    it maps exactly like the same reflectances without offset, and the map records the offset used.
    Without the metadata it is refused (naming --dn-offset), and --dn-offset -1000 then reads it."""
    _, profile, engine, dates = s2
    safes = [write_safe(d, profile, tmp_path / f"s{t}", when=f"2023060{t + 1}T100559", coarse=())
             for t, d in enumerate(dates)]
    date = resolve_date(safes[0], profile)
    assert date.baseline == "05.10" and {b.dn_offset for b in date.bands} == {-1000.0}
    ref = read_map(predict_scene(engine, dates, tmp_path / "ref.tif", SceneOptions(progress=False)))[0]
    out = predict_scene(engine, safes, tmp_path / "safe.tif", SceneOptions(progress=False))
    assert (read_map(out)[0] == ref).all()
    with rasterio.open(out) as src:
        used = json.loads(src.tags()["dn_offset"])
    assert used[1]["B12"] == -1000 and used[0]["source"] == "MTD_MSIL2A.xml BOA_ADD_OFFSET"
    for safe in safes:
        (safe / "MTD_MSIL2A.xml").unlink()
    with pytest.raises(SceneError, match=r"baseline 05.10 .*--dn-offset"):
        predict_scene(engine, safes, tmp_path / "refused.tif", SceneOptions(progress=False))
    given = predict_scene(engine, safes, tmp_path / "given.tif", SceneOptions(dn_offset=-1000, progress=False))
    assert (read_map(given)[0] == ref).all()
    with rasterio.open(given) as src:
        assert json.loads(src.tags()["dn_offset"])[0]["source"] == "--dn-offset"


def test_stac_baseline_needs_an_offset(tmp_path):
    """A STAC item of baseline >= 04.00 takes its offset from raster:bands; without one it is refused."""
    profile = load_profile("sentinel2-scd")
    date = write_scene(profile, tmp_path / "scene", size=64, seed=2)["dates"][0]
    paths = split(date, profile, lambda b, r: b, tmp_path / "item", coarse=())
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_T33UUP", "geometry": None, "links": [],
            "properties": {"datetime": "2023-06-01T10:00:00Z", "s2:processing_baseline": "05.10"},
            "assets": {b: {"href": p.name} for b, p in paths.items()}}
    (tmp_path / "item" / "item.json").write_text(json.dumps(item))
    assert resolve_date(tmp_path / "item" / "item.json", profile).needs_dn_offset
    for asset in item["assets"].values():
        asset["raster:bands"] = [{"scale": 0.0001, "offset": -0.1}]
    (tmp_path / "item" / "item.json").write_text(json.dumps(item))
    resolved = resolve_date(tmp_path / "item" / "item.json", profile)
    assert not resolved.needs_dn_offset and resolved.bands[0].offset == -0.1


def test_landsat_set_with_qa_pixel(tmp_path):
    profile = load_profile("landsat8-ss")
    build_artifacts(profile, tmp_path / "build", precisions=("fp32",), max_batch=4, fidelity_tiles=1)
    engine = load_engine(tmp_path / "build", backend="onnxruntime")
    date = write_scene(profile, tmp_path / "scene", size=256, seed=3)["dates"][0]
    prefix = "LC09_L2SP_190027_20230601_20230603_02_T1"
    paths = split(date, profile, lambda b, r: f"{prefix}_SR_{b}", tmp_path / "ls", coarse=(), suffix=".TIF")
    with rasterio.open(paths["B1"]) as b1:
        qa = np.full((256, 256), 1 << 6, np.uint16)  # bit 6: clear
        qa[200:, 200:] = (1 << 3) | (1 << 1)  # cloud + dilated cloud
        write_band(tmp_path / "ls" / f"{prefix}_QA_PIXEL.TIF", qa, b1.transform, b1.crs, nodata=1)
        write_band(tmp_path / "ls" / f"{prefix}_ST_B10.TIF", b1.read(1), b1.transform, b1.crs)  # not a profile band
    assert resolve_date(tmp_path / "ls", profile).kind == "Landsat product"
    plain = read_map(predict_scene(engine, [tmp_path / "ls"], tmp_path / "ls.tif", SceneOptions(progress=False)))[0]
    ref = read_map(predict_scene(engine, [date], tmp_path / "ref.tif", SceneOptions(progress=False)))[0]
    assert (plain == ref).all()  # same data, same grid: the band files read exactly as the stacked file
    masked = read_map(predict_scene(engine, [tmp_path / "ls"], tmp_path / "m.tif",
                                    SceneOptions(mask_quality=True, progress=False)))[0]
    assert (masked[:, 200:, 200:] == 255).all() and (masked[:, :200] != 255).all()


def test_stac_item_with_scale_and_common_names(s2, tmp_path):
    """A STAC item matched by asset key, eo:bands name and common name; one band stored with a
    +1000 DN offset that its raster:bands scale/offset undo."""
    _, profile, engine, dates = s2
    items = []
    for t, date in enumerate(dates):
        d = tmp_path / f"stac{t}"
        paths = split(date, profile, lambda b, r: f"{b}", d)
        with rasterio.open(paths["B11"]) as src:
            shifted, tr, crs = src.read(1).astype(np.uint16) + 1000, src.transform, src.crs
        write_band(paths["B11"], shifted, tr, crs, nodata=None)
        common = {"B2": "blue", "B3": "green", "B4": "red", "B5": "rededge1", "B8": "nir"}
        assets = {}
        for band, path in paths.items():
            key = common.get(band, band.lower())
            asset = {"href": path.name, "type": "image/tiff; application=geotiff",
                     "eo:bands": [{"name": f"B{band[1:].zfill(2)}" if band != "B2" else "coastal-not-b2",
                                   "common_name": common.get(band, "")}]}
            if band == "B2":
                asset["eo:bands"] = [{"common_name": "blue"}]  # matched by key only
                key = "B02"
            if band == "B11":
                asset["raster:bands"] = [{"scale": profile.scaling.scale, "offset": -1000 * profile.scaling.scale}]
            assets[key] = asset
        item = {"type": "Feature", "stac_version": "1.0.0", "id": f"S2_{t}", "geometry": None,
                "properties": {"datetime": f"2023-06-0{t + 1}T10:00:00Z"}, "links": [], "assets": assets,
                "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                    "https://stac-extensions.github.io/raster/v1.1.0/schema.json"]}
        with rasterio.open(paths["B4"]) as r, rasterio.open(paths["B3"]) as g, rasterio.open(paths["B2"]) as b:
            rgb = np.stack([r.read(1), g.read(1), b.read(1)])
            with rasterio.open(d / "TCI.tif", "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3,
                               dtype=rgb.dtype, crs=r.crs, transform=r.transform) as dst:
                dst.write(rgb[::-1])  # a multi-band "visual" asset in another band order: never preferred
        item["assets"]["visual"] = {"href": "TCI.tif", "eo:bands": [{"name": "B04"}, {"name": "B03"}, {"name": "B02"}]}
        (d / "item.json").write_text(json.dumps(item))
        items.append(d / "item.json")
    resolved = resolve_date(items[0], profile)
    assert (resolved.kind == "STAC item"
            and next(s for s in resolved.bands if s.band == "B11").scale == profile.scaling.scale)
    out = predict_scene(engine, items, tmp_path / "stac.tif", SceneOptions(progress=False))
    flat = [tmp_path / f"stac{t}" for t in range(2)]
    for t in range(2):  # the same files as a band directory, B11 restored to plain DNs
        (flat[t] / "TCI.tif").unlink()
        with rasterio.open(flat[t] / "B11.tif") as src:
            data, tr, crs = src.read(1) - 1000, src.transform, src.crs
        write_band(flat[t] / "B11.tif", data.astype(np.uint16), tr, crs)
        (flat[t] / "item.json").unlink()
    ref = predict_scene(engine, flat, tmp_path / "flat.tif", SceneOptions(progress=False))
    agree, covered = agreement(read_map(out)[0], read_map(ref)[0])
    assert agree >= 0.999 and covered > 0.95


def test_product_errors_name_the_problem_and_write_nothing(s2, tmp_path):
    _, profile, engine, dates = s2
    a = split(dates[0], profile, lambda b, r: f"X_{b}", tmp_path / "a")
    b = split(dates[1], profile, lambda b, r: f"X_{b}", tmp_path / "b")
    out = tmp_path / "out.tif"
    a["B11"].unlink()
    with pytest.raises(SceneError, match=r"no file for the profile's band\(s\) B11"):
        predict_scene(engine, [tmp_path / "a", tmp_path / "b"], out, SceneOptions(progress=False))
    with rasterio.open(b["B3"]) as src:
        write_band(tmp_path / "b" / "copy_B03.tif", src.read(1), src.transform, src.crs)
    with pytest.raises(SceneError, match=r"2 files claim band B3"):
        predict_scene(engine, [dates[0], tmp_path / "b"], out, SceneOptions(progress=False))
    with pytest.raises(SceneError, match="quality band"):
        predict_scene(engine, dates, out, SceneOptions(mask_quality=True, progress=False))
    with pytest.raises(SceneError, match="would overwrite the input"):
        predict_scene(engine, dates, dates[1], SceneOptions(progress=False))
    assert not out.exists() and not list(tmp_path.glob(".out.tif*"))


def test_compact_probabilities(s2, tmp_path):
    _, profile, engine, dates = s2
    out = predict_scene(engine, dates, tmp_path / "p.tif", SceneOptions(probabilities=True, progress=False,
                                                                        probabilities_encoding="uint8"))
    with rasterio.open(out.with_suffix(".probs.tif")) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255 and src.scales[0] == pytest.approx(1 / 254)
        probs = src.read().astype(np.float64).reshape(2, profile.c_out, *src.shape)
    ok = (probs != 255).all(axis=1)
    np.testing.assert_allclose((probs * src.scales[0]).sum(axis=1)[ok], 1.0, atol=profile.c_out / 254)
    valid, errors, _ = cog_validate(str(out.with_suffix(".probs.tif")))
    assert valid, errors


def test_written_map_is_as_compact_as_a_fresh_copy(s2, tmp_path):
    """Strip-wise writing used to leave rewritten blocks behind (a map ~50 % larger than the same
    raster written afresh): the written COG is within 10 % of a fresh copy with the same options."""
    import rasterio.shutil

    _, profile, engine, dates = s2
    out = predict_scene(engine, dates, tmp_path / "m.tif", SceneOptions(probabilities=True, progress=False))
    for path in (out, out.with_suffix(".probs.tif")):
        with rasterio.open(path) as src:
            data, meta = src.read(), src.profile
        plain = tmp_path / f"plain-{path.name}"
        with rasterio.open(plain, "w", **{**meta, "driver": "GTiff"}) as dst:
            dst.write(data)
        fresh = tmp_path / f"fresh-{path.name}"
        rasterio.shutil.copy(plain, fresh, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=256,
                             OVERVIEW_RESAMPLING="MODE" if path == out else "AVERAGE")
        assert path.stat().st_size <= 1.10 * fresh.stat().st_size, (path.name, path.stat().st_size,
                                                                    fresh.stat().st_size)


def test_aligned_coarse_bands_are_read_like_warping(tmp_path):
    """A 20 m band whose pixel edges lie on the 10 m grid and which starts before it is read by
    RasterIO, with the values warping gives; one starting inside the grid is warped (its missing
    edge is nodata), never read with a negative window."""
    import contextlib

    from rasterio.transform import from_origin
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    from stsun.runtime.scene_inputs import BandSource, DateInput, DateReader, Grid, _aligned_factor

    profile = load_profile("sentinel2-scd").model_copy(update={"bands": load_profile("sentinel2-scd").bands[:1]})
    grid = Grid("EPSG:32633", from_origin(500000, 5000000, 10, 10), 100, 100)
    rng = np.random.default_rng(0)
    for name, origin, aligned in (("before", (499980, 5000020), (2, (-2, -2))), ("inside", (500020, 5000000), None)):
        data = rng.integers(1, 5000, (60, 60)).astype(np.uint16)
        path = tmp_path / f"{name}.tif"
        write_band(path, data, from_origin(*origin, 20, 20), "EPSG:32633")
        with rasterio.open(path) as src:
            assert _aligned_factor(src, grid) == aligned
            want = WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=100, height=100, src_nodata=0,
                             nodata=0, resampling=Resampling.bilinear).read(1, window=Window(0, 30, 100, 40))
        with contextlib.ExitStack() as stack:
            date = DateInput(path, "band directory", [BandSource("B2", str(path))])
            x, valid = DateReader(date, profile, grid, stack, 0.0).read(Window(0, 30, 100, 40))
        scaled = want.astype(np.float32) * np.float32(profile.scaling.scale)
        np.testing.assert_allclose(x[0][valid], scaled[valid], rtol=0, atol=1e-6)
        assert valid.mean() > (0.99 if aligned else 0.9)
