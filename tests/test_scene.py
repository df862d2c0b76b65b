import numpy as np
import pytest

from stsun import load_profile
from stsun.classmaps import predicted_classes
from stsun.runtime import load_engine

rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")
from rasterio.warp import transform as reproject_points  # noqa: E402

from stsun.data.synthetic import write_scene  # noqa: E402
from stsun.runtime.scene import SceneError, SceneOptions, predict_scene  # noqa: E402


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.descriptions


def scaled_input(dates, profile):
    arrays = []
    for d in dates:
        with rasterio.open(d) as src:
            arrays.append(src.read().astype(np.float32) * profile.scaling.scale + profile.scaling.offset)
    return np.stack(arrays)


def test_single_tile_scene_equals_engine_and_keeps_georeference(scd_build, tmp_path):
    engine = load_engine(scd_build, backend="onnxruntime")
    files = write_scene(engine.profile, tmp_path / "in", size=256, seed=1)
    out = predict_scene(engine, files["dates"], tmp_path / "pred.tif", SceneOptions(progress=False))
    bands, prof, desc = read(out)
    with rasterio.open(files["dates"][0]) as src:
        assert prof["crs"] == src.crs and prof["transform"] == src.transform
        assert (prof["width"], prof["height"]) == (src.width, src.height)
    assert prof["nodata"] == 255 and bands.shape == (3, 256, 256)  # 2 class maps + 1 from-to band
    assert desc == ("class_date1", "class_date2", "fromto_date1_to_date2")
    direct = predicted_classes(engine(scaled_input(files["dates"], engine.profile)[None]))[0]
    np.testing.assert_array_equal(bands[:2], direct)
    c = engine.profile.c_out
    expected_change = np.where(direct[1] != direct[0], 1 + direct[0] * c + direct[1], 0)
    np.testing.assert_array_equal(bands[2], expected_change)


def test_tiled_scene_has_no_seams(scd_build, tmp_path):
    """Blended output agrees with each tile's own prediction in that tile's centre."""
    engine = load_engine(scd_build, backend="onnxruntime")
    files = write_scene(engine.profile, tmp_path / "in", size=600, seed=2)
    out = predict_scene(engine, files["dates"], tmp_path / "pred.tif", SceneOptions(overlap=96, progress=False))
    bands, _, _ = read(out)
    x = scaled_input(files["dates"], engine.profile)
    agree = []
    for y0, x0 in [(0, 0), (160, 160), (344, 344), (0, 344)]:
        direct = predicted_classes(engine(np.ascontiguousarray(x[None, :, :, y0:y0 + 256, x0:x0 + 256])))[0]
        core = (slice(None), slice(y0 + 64, y0 + 192), slice(x0 + 64, x0 + 192))
        agree.append((bands[:2][core] == direct[:, 64:192, 64:192]).mean())
    assert min(agree) > 0.97, agree


def test_nodata_stripes_become_nodata(scd_build, tmp_path):
    engine = load_engine(scd_build, backend="onnxruntime")
    files = write_scene(engine.profile, tmp_path / "in", size=300, seed=3, nodata_stripes=2)
    bands, _, _ = read(predict_scene(engine, files["dates"], tmp_path / "p.tif", SceneOptions(progress=False)))
    labels = np.stack([read(f)[0][0] for f in files["labels"]])
    nodata = (labels == 255).any(axis=0)
    assert nodata.any()
    assert (bands[:, nodata] == 255).all() and (bands[:, ~nodata] != 255).all()


def test_bad_inputs_give_clear_errors_and_no_output(scd_build, tmp_path):
    engine = load_engine(scd_build, backend="onnxruntime")
    p = engine.profile
    a = write_scene(p, tmp_path / "a", size=256, seed=4)["dates"]
    b = write_scene(p, tmp_path / "b", size=300, seed=4)["dates"]
    far = write_scene(p, tmp_path / "c", size=256, seed=4, crs="EPSG:32632")["dates"]  # same numbers, 6 degrees west
    # the same place in the neighbouring UTM zone: another grid that does overlap
    (x,), (y,) = reproject_points("EPSG:32633", "EPSG:32632", [500000.0], [5000000.0])
    shifted = write_scene(p, tmp_path / "e", size=256, seed=4, crs="EPSG:32632", origin=(x, y))["dates"]
    rgb = write_scene(load_profile("whu-ss").model_copy(update={"tile_size": 256}), tmp_path / "d", size=256)["dates"]
    out = tmp_path / "out.tif"
    cases = [([a[0], b[1]], "does not share the first date's grid"),
             ([a[0], shifted[1]], "does not share the first date's grid"),
             ([a[0], rgb[0]], "has 3 bands, profile expects 10"),
             ([a[0]], "needs 2 dates"),
             ([a[0], tmp_path / "missing.tif"], "input not found")]
    for dates, message in cases:
        with pytest.raises(SceneError, match=message):
            predict_scene(engine, dates, out, SceneOptions(progress=False))
        assert not out.exists() and not list(tmp_path.glob(".out.tif*"))
    with pytest.raises(SceneError, match="does not overlap the first date"):  # --align cannot help there
        predict_scene(engine, [a[0], far[1]], out, SceneOptions(align=True, progress=False))
    assert not out.exists()
    # --align reprojects instead of refusing
    predict_scene(engine, [a[0], shifted[1]], out, SceneOptions(align=True, progress=False))
    assert out.exists()


def test_interrupted_run_leaves_no_file(scd_build, tmp_path):
    engine = load_engine(scd_build, backend="onnxruntime")
    files = write_scene(engine.profile, tmp_path / "in", size=700, seed=5)
    calls = {"n": 0}
    real = engine._run

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure mid-scene")
        return real(x)

    engine._run = failing
    out = tmp_path / "pred.tif"
    with pytest.raises(RuntimeError, match="injected"):
        predict_scene(engine, files["dates"], out, SceneOptions(overlap=0, progress=False))
    assert not out.exists() and not list(tmp_path.glob(".pred.tif*"))


def test_every_local_backend_gives_the_same_map(scd_build, tmp_path):
    """Every backend of the table that runs here (the triton one is in test_triton_server.py)."""
    from stsun.runtime.backends import BACKENDS

    files = write_scene(load_profile("sentinel2-scd"), tmp_path / "in", size=320, seed=6)
    local = [b.name for b in BACKENDS.values() if b.artifact != "server" and b.unavailable_reason() is None]
    assert {"eager", "folded", "compiled", "onnxruntime"} <= set(local)
    maps = {}
    for backend in local:
        engine = load_engine(scd_build, backend=backend)
        maps[backend] = read(predict_scene(engine, files["dates"], tmp_path / f"{backend}.tif",
                                           SceneOptions(progress=False)))[0]
    for backend in local:
        assert (maps[backend] == maps["eager"]).mean() > 0.9999, backend


def test_probabilities_output(scd_build, tmp_path):
    engine = load_engine(scd_build, backend="onnxruntime")
    files = write_scene(engine.profile, tmp_path / "in", size=256, seed=7)
    summary = {}
    predict_scene(engine, files["dates"], tmp_path / "p.tif", SceneOptions(probabilities=True, progress=False,
                                                                           summary=summary))
    probs, prof, _ = read(tmp_path / "p.probs.tif")
    assert probs.shape == (2 * 6, 256, 256) and prof["dtype"] == "float32"
    np.testing.assert_allclose(probs.reshape(2, 6, 256, 256).sum(axis=1), 1.0, atol=1e-4)
    with rasterio.open(tmp_path / "p.probs.tif") as src:
        assert (src.tags()["profile"] == "sentinel2-scd"
                and src.tags()["classes"].split(",") == list(engine.profile.classes))
    # the summary counts what the map holds
    bands = read(tmp_path / "p.tif")[0]
    valid = bands[0] != 255
    assert (summary["km2"] == pytest.approx(valid.sum() * 1e-4)
            and summary["valid_share"] == pytest.approx(valid.mean(), abs=1e-4))
    water = engine.profile.classes.index("water")
    assert summary["bands"]["class_date2"]["water"] == pytest.approx((bands[1][valid] == water).mean(), abs=1e-4)
    assert summary["changed_km2"]["fromto_date1_to_date2"] == pytest.approx((bands[2][valid] > 0).sum() * 1e-4)


def test_cli_predict_with_preview(scd_build, tmp_path):
    from typer.testing import CliRunner

    from stsun.app.cli import app

    files = write_scene(load_profile("sentinel2-scd"), tmp_path / "in", size=300, seed=8)
    out, png = tmp_path / "pred.tif", tmp_path / "preview.png"
    args = ["predict", *map(str, files["dates"]), "-o", str(out), "--engine", str(scd_build),
            "--profile", "sentinel2-scd", "--preview", str(png)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert read(out)[0].shape == (3, 300, 300) and png.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {out}, {png}\narea with data: 9.00 km² (100.0% of the scene)\nclass_date1: " in res.output
    assert "fromto_date1_to_date2: changed " in res.output
    res = CliRunner().invoke(app, [*args[:-4], "--profile", "landsat8-ss"])
    assert res.exit_code == 2 and "built for profile 'sentinel2-scd', not 'landsat8-ss'" in " ".join(res.output.split())


def sparse_pair(root, width, height, profile):
    """Two dates of a huge scene that take almost no disk: tiled BigTIFFs whose blocks were never written."""
    from rasterio.transform import from_origin

    paths = []
    root.mkdir(exist_ok=True)
    for t in range(profile.t_in):
        paths.append(root / f"date{t + 1}.tif")
        with rasterio.open(paths[-1], "w", driver="GTiff", width=width, height=height, count=profile.c_in,
                           dtype="uint16", nodata=0, crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10),
                           tiled=True, blockxsize=256, blockysize=256, sparse_ok=True, BIGTIFF="YES"):
            pass
    return paths


def test_a_scene_larger_than_the_machine_is_refused_before_any_compute(scd_build, tmp_path):
    """200000 x 200000 px: the CLI refuses with the sizes it needs before reading a tile, and leaves
    nothing behind; a 200000 px wide strip is refused for memory when less is available."""
    from typer.testing import CliRunner

    import stsun.runtime.scene as scene
    from stsun.app.cli import app

    dates = sparse_pair(tmp_path, 200_000, 200_000, load_profile("sentinel2-scd"))
    assert sum(d.stat().st_size for d in dates) < 100 << 20
    out = tmp_path / "out" / "map.tif"
    res = CliRunner().invoke(app, ["predict", *map(str, dates), "-o", str(out), "--engine", str(scd_build),
                                   "--probabilities"])
    assert res.exit_code == 2, res.output
    assert "error: the map of this 200000 x 200000 px scene needs about 2,040.0 GB on disk" in res.output, res.output
    assert "tiles" not in res.output and not list(out.parent.iterdir())  # no progress bar, no working files
    wide = sparse_pair(tmp_path / "wide", 200_000, 300, load_profile("sentinel2-scd"))
    engine = load_engine(scd_build, backend="onnxruntime")
    scene.available_memory, real = (lambda: 8 << 30), scene.available_memory
    try:
        with pytest.raises(SceneError, match=r"200000 x 300 px scene needs about \d+\.\d GB of memory .* 8\.6 GB is "
                                             r"available"):
            predict_scene(engine, wide, tmp_path / "wide.tif", SceneOptions(progress=False))
    finally:
        scene.available_memory = real
    assert not list(tmp_path.glob(".wide.tif*"))


def test_error_text_with_square_brackets_is_printed_verbatim(scd_build, tmp_path):
    """GDAL's own words come in square brackets ("[map.tif: Free disk space ...]"): the CLI prints
    them as they are, never as markup."""
    from typer.testing import CliRunner

    from stsun.app.cli import app

    dates = [tmp_path / "[bold]date1.tif", tmp_path / "date2.tif"]
    dates[0].write_bytes(b"")
    write_scene(load_profile("sentinel2-scd"), tmp_path / "s", size=256)["dates"][1].rename(dates[1])
    with pytest.raises(SceneError) as err:
        predict_scene(load_engine(scd_build), dates, tmp_path / "m.tif", SceneOptions(progress=False))
    assert "[bold]" in str(err.value) and "] " not in str(err.value)[-1:]
    res = CliRunner().invoke(app, ["predict", *map(str, dates), "-o", str(tmp_path / "m.tif"), "--engine",
                                   str(scd_build)])
    assert res.exit_code == 2 and f"error: {err.value}\n" in res.output, res.output


def test_a_scene_without_crs_warns_and_the_cli_prints_one_line(scd_build, tmp_path, capsys):
    import warnings

    from stsun.app.cli import _show_warning
    from stsun.errors import StsunWarning

    files = write_scene(load_profile("sentinel2-scd"), tmp_path / "in", size=256, seed=9)
    bare = []
    for i, d in enumerate(files["dates"]):
        with rasterio.open(d) as src:
            data, prof = src.read(), src.profile
        prof.update(crs=None, transform=rasterio.Affine(10, 0, 0, 0, -10, 0))
        bare.append(tmp_path / f"bare{i}.tif")
        with rasterio.open(bare[-1], "w", **prof) as dst:
            dst.write(data)
    engine = load_engine(scd_build, backend="onnxruntime")
    with pytest.warns(StsunWarning, match="has no CRS: the dates are matched by pixel position only") as seen:
        out = predict_scene(engine, bare, tmp_path / "pred.tif", SceneOptions(progress=False))
    assert read(out)[1]["crs"] is None
    w = seen[0]
    _show_warning(w.message, w.category, w.filename, w.lineno)
    assert capsys.readouterr().err.startswith(f"warning: {bare[0]} has no CRS")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a scene with a CRS warns of nothing
        predict_scene(engine, files["dates"], tmp_path / "pred2.tif", SceneOptions(progress=False))


def test_the_block_cache_is_set_once_in_bytes(scd_build, tmp_path, monkeypatch):
    """rasterio passes an int GDAL_CACHEMAX to GDALSetCacheMax64, in bytes: 256 would be a
    256-byte cache. It is process-wide in GDAL, so only the scene's own thread sets it."""
    seen = []

    class Spy(rasterio.Env):
        def __init__(self, *args, **options):
            if "GDAL_CACHEMAX" in options:
                seen.append(options["GDAL_CACHEMAX"])
            super().__init__(*args, **options)

    monkeypatch.setattr(rasterio, "Env", Spy)
    engine = load_engine(scd_build, backend="onnxruntime")
    files = write_scene(engine.profile, tmp_path / "in", size=256, seed=1)
    predict_scene(engine, files["dates"], tmp_path / "pred.tif", SceneOptions(progress=False))
    assert len(seen) == 1 and seen[0] >= 256 << 20
