"""The user's tiles a build draws with --data: from a scene's dates, a manifest and a labelled
dataset; disjoint, reproducible, nodata-heavy windows skipped, rare classes represented."""
import json

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from stsun.app.user_tiles import _spread_classes, draw_user_tiles
from stsun.data.datasets import open_dataset
from stsun.data.demo import aerial_bcd_profile, write_change_pairs
from stsun.data.synthetic import write_scene
from stsun.errors import DatasetError
from stsun.profiles import load_profile

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 1024 x 256 two-date Sentinel-2 scene (four 256 px windows), the first window without data."""
    profile = load_profile("sentinel2-bcd")
    dates = write_scene(profile, tmp_path_factory.mktemp("scene"), 1024, seed=2, height=256)["dates"]
    with rasterio.open(dates[0], "r+") as dst:
        dst.write(np.full((profile.c_in, 256, 256), dst.nodata, np.uint16), window=Window(0, 0, 256, 256))
    return profile, dates


def test_a_scenes_dates_give_disjoint_tiles_without_the_window_lacking_data(scene):
    profile, dates = scene
    tiles = draw_user_tiles(dates, profile, calibration=2, heldout=2, seed=0)
    r = tiles.record
    assert r["kind"] == "scene" and not tiles.labelled and r["images"] == 1
    assert r["calibration"]["skipped_nodata"] + r["heldout"]["skipped_nodata"] == 1
    windows = tiles.calibration.windows + tiles.heldout.windows
    assert len(windows) == 3 and len(set(windows)) == 3 and all(w[1:] != (0, 0) for w in windows)
    assert tiles.calibration.x.shape[1:] == profile.input_shape and tiles.calibration.x.dtype == np.float32
    # scaled to reflectance as the profile says, as `stsun predict` reads the same files
    assert 0.0 < float(np.median(tiles.heldout.x)) < 1.0
    again = draw_user_tiles(dates, profile, calibration=2, heldout=2, seed=0)
    assert again.record["tiles_sha256"] == r["tiles_sha256"]
    np.testing.assert_array_equal(again.heldout.x, tiles.heldout.x)
    other = draw_user_tiles(dates, profile, calibration=2, heldout=2, seed=1)
    assert other.record["tiles_sha256"] != r["tiles_sha256"]


def test_a_manifest_reads_the_same_pixels_as_its_scene(scene, tmp_path):
    profile, dates = scene
    manifest = tmp_path / "jobs.json"
    manifest.write_text(json.dumps([{"id": "aoi", "dates": [str(d) for d in dates]}]))
    tiles = draw_user_tiles([manifest], profile, calibration=2, heldout=2, seed=0)
    direct = draw_user_tiles(dates, profile, calibration=2, heldout=2, seed=0)
    assert tiles.record["kind"] == "predict-many manifest (1 scenes)"
    assert [w[1:] for w in tiles.heldout.windows] == [w[1:] for w in direct.heldout.windows]
    np.testing.assert_array_equal(tiles.heldout.x, direct.heldout.x)


def test_a_labelled_dataset_splits_by_image_and_bad_inputs_say_what_to_give(tmp_path):
    profile = load_profile(aerial_bcd_profile(tmp_path / "p.toml"))
    data = write_change_pairs(tmp_path / "levir", 5, size=256)
    tiles = draw_user_tiles([data], profile, calibration=3, heldout=2, seed=0)
    r = tiles.record
    assert tiles.labelled and r["kind"] == "dataset: binary change detection (A/, B/, label/)"
    assert len(r["calibration"]["images"]) == 3 and len(r["heldout"]["images"]) == 2
    assert not set(r["calibration"]["images"]) & set(r["heldout"]["images"])
    assert tiles.heldout.target.shape == (2, profile.t_out, 256, 256) and (tiles.heldout.target == 1).any()
    ds = open_dataset(data, profile)  # the tiles are what the training reader reads
    x, target = ds.read(ds.sample(tiles.heldout.windows[0][0]))
    np.testing.assert_array_equal(tiles.heldout.x[0], x)
    np.testing.assert_array_equal(tiles.heldout.target[0], target)
    with pytest.raises(DatasetError, match="a scene is given as its 2 dates"):
        draw_user_tiles([tmp_path], profile, calibration=1, heldout=1)
    with pytest.raises(DatasetError, match="not found"):
        draw_user_tiles([tmp_path / "missing"], profile, calibration=1, heldout=1)


def test_each_next_tile_holds_the_class_the_set_has_fewest_pixels_of():
    profile = load_profile("levir-cd-bcd")
    target = np.zeros((5, 1, 8, 8), np.int64)
    target[3, :, :4] = 1  # only the fourth tile shows change
    pool = [((f"img{i}", 0, 0), None, target[i]) for i in range(5)]
    assert [c[0][0] for c in _spread_classes(pool, 2, profile)] == ["img0", "img3"]
    assert [c[0][0] for c in _spread_classes(pool, 3, profile)] == ["img0", "img3", "img1"]
