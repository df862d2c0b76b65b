"""User datasets on disk: layout detection, pairing, label decoding, splits, tiling, the errors
that name the file, and the SCD metrics. No training here (see test_finetune.py)."""
import math

import numpy as np
import pytest

from stsun.data.datasets import (
    IGNORE,
    NO_CHANGE,
    Region,
    grid_tile_count,
    grid_tiles,
    holdout,
    open_dataset,
    random_crops,
    whole,
)
from stsun.data.demo import aerial_bcd_profile, write_change_pairs, write_profile, write_raster
from stsun.data.synthetic import write_scene
from stsun.errors import DatasetError, ProfileError
from stsun.profiles import load_profile, profile_from_dict
from stsun.training.evaluate import TaskCounts, scd_change_target, second_maps
from stsun.training.metrics import confusion, majority_confusion, scores, semantic_change_scores

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
SECOND_COLOURS = {"no change": [255, 255, 255], "low vegetation": [0, 128, 0], "tree": [0, 255, 0],
                  "water": [0, 0, 255], "building": [128, 0, 0], "ignore": [0, 0, 0]}


@pytest.fixture(scope="module")
def bcd_profile(tmp_path_factory):
    return load_profile(aerial_bcd_profile(tmp_path_factory.mktemp("profiles") / "aerial-bcd.toml"))


def second_profile(tmp_path):
    return load_profile(write_profile(tmp_path / "second.toml", "whu-cd-scd", name="second-like", tile_size=256,
                                      classes=["low vegetation", "tree", "water", "building"],
                                      label_colours=SECOND_COLOURS))


def test_change_pairs_are_detected_paired_scaled_and_decoded(tmp_path, bcd_profile):
    root = write_change_pairs(tmp_path / "levir", 3, size=64)
    ds = open_dataset(root, bcd_profile)
    assert ds.layout.name == "change-pairs" and list(ds.splits) == ["all"] and len(ds.samples()) == 3
    assert "binary change detection (A/, B/, label/)" in ds.describe() and "no split given" in ds.describe()
    s = ds.samples()[0]
    assert s.name == "A/0000" and (s.height, s.width) == (64, 64)
    x, target = ds.read(s)
    import rasterio

    with rasterio.open(s.images[1]) as src:
        raw_b = src.read()
    with rasterio.open(s.labels[0]) as src:
        raw_label = src.read(1)
    assert x.shape == (2, 3, 64, 64) and target.shape == (1, 64, 64)
    np.testing.assert_allclose(x[1], raw_b / 255.0, rtol=1e-6)          # the profile's 8-bit scaling
    assert set(np.unique(raw_label)) == {0, 255}
    np.testing.assert_array_equal(target[0], raw_label // 255)          # 0/255 -> 0/1
    # a window reads the same pixels
    xw, tw = ds.read(s, (10, 20, 16, 8))
    np.testing.assert_array_equal(xw, x[..., 10:26, 20:28])
    np.testing.assert_array_equal(tw, target[..., 10:26, 20:28])


def test_binary_labels_0_1_with_255_unlabelled(tmp_path, bcd_profile):
    root = write_change_pairs(tmp_path / "d", 1, size=32, label_scale=1)
    label = root / "label" / "0000.png"
    import rasterio

    with rasterio.open(label) as src:
        raw = src.read(1)
    raw[:4] = 255
    write_raster(label, raw)
    _, target = open_dataset(root, bcd_profile).read(open_dataset(root, bcd_profile).samples()[0])
    assert (target[0, :4] == IGNORE).all()
    np.testing.assert_array_equal(target[0, 4:], raw[4:])


def test_splits_from_folders_and_from_list_files(tmp_path, bcd_profile):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        write_change_pairs(tmp_path / "folders" / split, n, size=32, seed=n)
    ds = open_dataset(tmp_path / "folders", bcd_profile)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 3, "val": 1, "test": 2}
    assert ds.samples()[0].name == "train/A/0000" and "splits from the folders" in ds.describe()
    train, val, how = holdout(ds, 0.5, seed=0)
    assert len(train) == 3 and len(val) == 1 and how == "the val split"

    root = write_change_pairs(tmp_path / "lists", 4, size=32)
    (root / "list").mkdir()
    (root / "list" / "train.txt").write_text("0000.png\n0001\n\n# a comment\n0002.png\n")
    (root / "list" / "test.txt").write_text("0003.png\n")
    ds = open_dataset(root, bcd_profile)
    assert {k: [s.name for s in v] for k, v in ds.splits.items()} == {
        "train": ["A/0000", "A/0001", "A/0002"], "test": ["A/0003"]}
    (root / "list" / "test.txt").write_text("0003.png\n0009.png\n")
    with pytest.raises(DatasetError, match=r"test\.txt:2: '0009\.png' is not a sample"):
        open_dataset(root, bcd_profile)


def test_mismatches_are_errors_naming_the_file(tmp_path, bcd_profile):
    root = write_change_pairs(tmp_path / "d", 3, size=32)
    (root / "B" / "0001.png").unlink()
    with pytest.raises(DatasetError, match=r"A/0001\.png has no partner in .*B/"):
        open_dataset(root, bcd_profile)
    write_raster(root / "B" / "0001.png", np.zeros((3, 32, 32), np.uint8))
    write_raster(root / "label" / "0002.png", np.zeros((40, 32), np.uint8))
    with pytest.raises(DatasetError, match=r"label/0002\.png: label of another size: 40 x 32, "
                                           r"while .*A/0002\.png is 32 x 32"):
        open_dataset(root, bcd_profile)
    write_raster(root / "label" / "0002.png", np.full((32, 32), 7, np.uint8))
    ds = open_dataset(root, bcd_profile)
    with pytest.raises(DatasetError, match=r"label/0002\.png: label values \[7\] are not binary"):
        ds.read(ds.sample("A/0002"))
    (root / "label" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"label/0002\.png: not a readable image"):
        open_dataset(root, bcd_profile)
    (root / "label" / "0002.png").unlink()
    (root / "label" / "0002.tif").write_bytes(b"")  # same name as its partner, other format: fine if readable
    with pytest.raises(DatasetError, match=r"label/0002\.tif: not a readable image"):
        open_dataset(root, bcd_profile)
    write_raster(root / "label" / "0002.tif", np.zeros((32, 32), np.uint8))
    write_raster(root / "A" / "0002.png", np.zeros((4, 32, 32), np.uint8))
    ds = open_dataset(root, bcd_profile)
    with pytest.raises(DatasetError, match=r"A/0002\.png: has 4 bands, profile 'aerial-bcd-256' "
                                           r"expects 3 \(red, green, blue\)"):
        ds.read(ds.sample("A/0002"))
    with pytest.raises(DatasetError, match=r"is a binary change detection .* profile 'sentinel2-ss' has task 'ss'"):
        open_dataset(root, load_profile("sentinel2-ss"))
    with pytest.raises(DatasetError, match="no dataset layout found"):
        open_dataset(root / "A", bcd_profile)


def test_second_style_colour_labels_and_segmentation_class_indices(tmp_path):
    profile = second_profile(tmp_path)
    colours = np.array(list(SECOND_COLOURS.values()), np.uint8)
    codes = {"no change": NO_CHANGE, "low vegetation": 0, "tree": 1, "water": 2, "building": 3, "ignore": IGNORE}
    expected = np.array(list(codes.values()))
    rng = np.random.default_rng(0)
    root = tmp_path / "second"
    idx = rng.integers(0, len(colours), size=(2, 32, 32))
    for t in (1, 2):
        write_raster(root / f"im{t}" / "00001.png", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8))
        write_raster(root / f"label{t}" / "00001.png", colours[idx[t - 1]].transpose(2, 0, 1).copy())
    ds = open_dataset(root, profile)
    assert ds.layout.name == "semantic-change-pairs"
    _, target = ds.read(ds.samples()[0])
    np.testing.assert_array_equal(target, expected[idx])
    bad = colours[idx[0]].transpose(2, 0, 1).copy()
    bad[:, 0, 0] = (1, 2, 3)
    write_raster(root / "label1" / "00001.png", bad)
    with pytest.raises(DatasetError, match=r"label1/00001\.png: colour \[1, 2, 3\] is not in profile 'second-like' "
                                           r"label_colours \(1 pixels\)"):
        ds.read(ds.samples()[0])
    plain = profile.model_copy(update={"label_colours": None})
    with pytest.raises(DatasetError, match=r"00001\.png: an RGB colour label; "
                                           r"give profile 'second-like' a \[label_colours\]"):
        open_dataset(root, plain).read(ds.samples()[0])

    seg = load_profile("sentinel2-ss")
    root = tmp_path / "seg"
    labels = rng.integers(0, seg.c_out, size=(32, 32)).astype(np.uint8)
    labels[0] = 255
    write_raster(root / "images" / "tile_1.tif", rng.integers(1, 3000, (10, 32, 32), dtype=np.uint16))
    write_raster(root / "labels" / "tile_1.png", labels)
    ds = open_dataset(root, seg)
    assert ds.layout.name == "segmentation"
    _, target = ds.read(ds.samples()[0])
    assert (target[0, 0] == IGNORE).all() and (target[0, 1:] == labels[1:]).all()
    labels[5, 5] = seg.c_out
    write_raster(root / "labels" / "tile_1.png", labels)
    with pytest.raises(DatasetError, match=rf"tile_1\.png: class index {seg.c_out} beyond the profile's {seg.c_out} "
                                           rf"classes \(0-{seg.c_out - 1}; 255 = not labelled\), 1 pixels"):
        ds.read(ds.samples()[0])


def test_geotiff_stacks_derive_the_task_targets(tmp_path):
    bcd = load_profile("sentinel2-bcd")
    for k in (1, 2):
        write_scene(bcd, tmp_path / "aoi" / f"scene{k}", 96, seed=k, nodata_stripes=1)
    ds = open_dataset(tmp_path / "aoi", bcd)
    assert ds.layout.name == "geotiff-stacks" and [s.name for s in ds.samples()] == ["scene1", "scene2"]
    x, target = ds.read(ds.samples()[0])
    import rasterio

    with (rasterio.open(tmp_path / "aoi/scene1/labels_date1.tif") as a,
          rasterio.open(tmp_path / "aoi/scene1/labels_date2.tif") as b):
        la, lb = a.read(1).astype(np.int64), b.read(1).astype(np.int64)
    nodata = (la == 255) | (lb == 255)
    assert nodata.any() and (target[0][nodata] == IGNORE).all() and (x[:, :, nodata] == 0).all()
    np.testing.assert_array_equal(target[0][~nodata], (la != lb)[~nodata])
    with rasterio.open(tmp_path / "aoi/scene1/date2.tif") as src:
        dn = src.read([src.descriptions.index(b) + 1 for b in bcd.band_names]).astype(np.float64)
    np.testing.assert_allclose(x[1][:, ~nodata], dn[:, ~nodata] * bcd.scaling.scale, rtol=1e-6)

    (tmp_path / "aoi/scene2/labels_date1.tif").unlink()
    (tmp_path / "aoi/scene2/labels_date2.tif").rename(tmp_path / "aoi/scene2/label.tif")
    ds = open_dataset(tmp_path / "aoi", bcd)
    assert ds.sample("scene2").label_kind == "target"
    (tmp_path / "aoi/scene2/date2.tif").unlink()
    with pytest.raises(DatasetError, match=r"scene .*scene2: missing date2\.tif "
                                           r"\(profile 'sentinel2-bcd' has t_in=2\)"):
        open_dataset(tmp_path / "aoi", bcd)


def test_grid_scores_every_pixel_once_and_pads_small_images(tmp_path, bcd_profile):
    root = tmp_path / "d"
    rng = np.random.default_rng(1)
    sizes = {"big": (300, 520), "small": (100, 80)}
    for name, (h, w) in sizes.items():
        for f in ("A", "B"):
            write_raster(root / f / f"{name}.png", rng.integers(0, 255, (3, h, w), dtype=np.uint8))
        write_raster(root / "label" / f"{name}.png", (rng.random((h, w)) < 0.3).astype(np.uint8))
    ds = open_dataset(root, bcd_profile)
    regions = whole(ds.samples())
    tiles = list(grid_tiles(ds, regions))
    assert len(tiles) == grid_tile_count(ds, regions) == 2 * 3 + 1
    assert all(x.shape == (2, 3, 256, 256) and t.shape == (1, 256, 256) for x, t in tiles)
    scored = sum(int((t != IGNORE).sum()) for _, t in tiles)
    assert scored == sum(h * w for h, w in sizes.values())
    changed = sum(int((t == 1).sum()) for _, t in tiles)
    assert changed == sum(int((ds.read(s)[1] == 1).sum()) for s in ds.samples())
    x_small, t_small = next((x, t) for x, t in tiles if (t != IGNORE).sum() == 100 * 80)
    assert (t_small[:, 100:] == IGNORE).all() and (x_small[..., 100:, :] == 0).all()


def test_random_crops_keep_image_and_label_aligned(tmp_path, bcd_profile):
    root = tmp_path / "d"
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (3, 300, 280), dtype=np.uint8)
    write_raster(root / "A" / "x.png", img)
    write_raster(root / "B" / "x.png", img)
    write_raster(root / "label" / "x.png", (img[0] > 127).astype(np.uint8))  # the label is a function of the pixels
    ds = open_dataset(root, bcd_profile)
    x, t = random_crops(ds, whole(ds.samples()), 6, np.random.default_rng(0))
    assert x.shape == (6, 2, 3, 256, 256) and t.shape == (6, 1, 256, 256)
    np.testing.assert_array_equal(t[:, 0], (x[:, 0, 0] * 255 > 127.5).astype(np.int64))
    x2, _ = random_crops(ds, whole(ds.samples()), 6, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)


def test_holdout_by_samples_or_by_the_bottom_of_one_image(tmp_path, bcd_profile):
    ds = open_dataset(write_change_pairs(tmp_path / "many", 10, size=32), bcd_profile)
    train, val, how = holdout(ds, 0.3, seed=0)
    assert len(train) == 7 and len(val) == 3 and "3 of 10 samples held out" in how
    assert not {r.sample.name for r in train} & {r.sample.name for r in val}
    assert holdout(ds, 0.3, seed=0)[1] == val
    root = tmp_path / "one"
    for f in ("A", "B"):
        write_raster(root / f / "aoi.png", np.zeros((3, 700, 300), np.uint8))
    write_raster(root / "label" / "aoi.png", np.zeros((700, 300), np.uint8))
    ds = open_dataset(root, bcd_profile)
    train, val, _ = holdout(ds, 0.2, seed=0)
    assert [r.rows for r in train] == [(0, 444)] and [r.rows for r in val] == [(444, 700)]
    assert isinstance(val[0], Region) and val[0].height == 256
    with pytest.raises(DatasetError, match=r"aoi\.png: one image of 700 rows "
                                           r"cannot give a validation strip of 490 rows"):
        holdout(ds, 0.7, seed=0)


def test_profile_colour_table_is_validated_naming_the_field():
    base = load_profile("whu-cd-scd").model_dump()
    with pytest.raises(ProfileError, match=r"field 'label_colours': .*classes \['building'\] have no colour"):
        profile_from_dict({**base, "label_colours": {"no change": [255, 255, 255]}})
    with pytest.raises(ProfileError, match=r"field 'label_colours\.building\.0': "
                                           r"Input should be less than or equal to 255"):
        profile_from_dict({**base, "label_colours": {"building": [256, 0, 0]}})
    with pytest.raises(ProfileError, match=r"\['no change'\] are neither classes of this profile "
                                           r"nor one of \['ignore'\]"):
        profile_from_dict({**load_profile("levir-cd-bcd").model_dump(),
                           "label_colours": {"change": [255, 255, 255], "no change": [0, 0, 0]}})


def test_second_metrics_on_a_hand_computed_example():
    # rows: target (0 = no change, 1..2 = changed to class 0..1), columns: prediction
    hist = np.array([[6, 1, 1], [1, 3, 0], [1, 1, 2]])
    s = semantic_change_scores(hist)
    # IoU_nc = 6 / (8 + 8 - 6); IoU_c = (3 + 0 + 1 + 2) / (16 - 6)
    assert s["iou_nc"] == pytest.approx(0.6) and s["iou_c"] == pytest.approx(0.6) and s["miou"] == pytest.approx(0.6)
    # q_00 -> 0: N' = 10, rho = 5/10, eta = (2*2 + 4*5 + 4*3) / 100 = 0.36, kappa = 0.14 / 0.64
    assert s["kappa_hat"] == pytest.approx(0.21875)
    assert s["sek"] == pytest.approx(0.21875 * math.exp(-0.4))
    assert s["fscd"] == pytest.approx(0.625)  # 5 right of 8 predicted, 8 true changes
    assert s["score"] == pytest.approx(0.3 * 0.6 + 0.7 * 0.21875 * math.exp(-0.4))
    assert semantic_change_scores(majority_confusion(hist, 0))["sek"] == 0.0  # "no change" everywhere


def test_scd_targets_and_second_maps():
    target = np.array([[[[0, 1, NO_CHANGE, IGNORE]], [[0, 2, NO_CHANGE, 1]]]])  # (B=1, T=2, H=1, W=4)
    change = scd_change_target(target)
    np.testing.assert_array_equal(change, [[[[0, 1, 0, IGNORE]]]])
    maps = second_maps(np.maximum(target, 0), change)
    np.testing.assert_array_equal(maps, [[[[0, 2, 0, IGNORE]], [[0, 3, 0, IGNORE]]]])
    counts = TaskCounts(load_profile("sentinel2-scd"))
    pred = np.array([[[[0, 1, 3, 3]], [[0, 2, 4, 1]]]])
    counts.add(pred, target)
    r = counts.result()
    assert r["change"]["f1"] == pytest.approx(2 / 3)     # true change at x=1 found, false change at x=2
    assert r["second"]["fscd"] == pytest.approx(2 / 3)
    assert r["semantic"]["oa"] == pytest.approx(5 / 5)   # known classes: (0,1) at t1, (0,2,1) at t2


def test_scores_report_change_precision_and_recall():
    cm = confusion(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]), 2)
    s = scores(cm)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert scores(majority_confusion(cm, 1))["recall"] == 1.0
