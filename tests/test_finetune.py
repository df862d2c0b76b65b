"""Training on a user's dataset: fine-tuning raises change F1 on held-out data, the checkpoint
builds and its ONNX scores what it does, resume is exact, Ctrl-C leaves a usable checkpoint,
every layout trains, and the command lines report bad data in one line."""
import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from stsun.app.cli import app
from stsun.data.datasets import open_dataset
from stsun.data.demo import aerial_bcd_profile, write_change_pairs, write_profile, write_raster
from stsun.data.synthetic import write_scene
from stsun.errors import DatasetError
from stsun.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from stsun.profiles import load_profile
from stsun.training.evaluate import evaluate_data, model_predictor
from stsun.training.finetune import FineTuneOptions, fine_tune, paths, validation_regions

pytestmark = [pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="demo checkpoint not committed"),
              pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]
FAST = {"calibration_batches": 2, "eval_batch": 4}


@pytest.fixture(scope="module")
def bcd(tmp_path_factory):
    """10 generated LEVIR-style pairs and a checkpoint fine-tuned on 7 of them from the demo
    checkpoint: 36 steps of 2 tiles (3 epochs of 12), lr 2e-3."""
    tmp = tmp_path_factory.mktemp("bcd")
    profile_path = aerial_bcd_profile(tmp / "aerial-bcd.toml")
    data = write_change_pairs(tmp / "levir", 10, size=256)
    out = tmp / "run" / "model.safetensors"
    record = fine_tune(open_dataset(data, load_profile(profile_path)), out,
                       options=FineTuneOptions(epochs=3, epoch_steps=12, batch=2, lr=2e-3, val_fraction=0.3, **FAST),
                       progress=False)
    return {"profile": profile_path, "data": data, "out": out, "record": record, "tmp": tmp}


def test_fine_tuning_raises_heldout_change_f1_well_above_the_trivial_baseline(bcd):
    record, profile = bcd["record"], load_profile(bcd["profile"])
    ds = open_dataset(bcd["data"], profile)
    regions = validation_regions(ds, record)
    assert len(regions) == 3 and record["validation"]["how"] == "3 of 10 samples held out (seed 0)"
    demo, _ = load_checkpoint(DEMO_CHECKPOINT)
    before = evaluate_data({"demo": model_predictor(demo, profile)}, ds, regions, progress=False)
    res = CliRunner().invoke(app, ["evaluate", "--data", str(bcd["data"]), "--profile", str(bcd["profile"]),
                                   "--checkpoint", str(bcd["out"]), "--out", str(bcd["tmp"] / "eval.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((bcd["tmp"] / "eval.json").read_text())
    assert report["split"] == "heldout" and report["regions"] == record["validation"]["regions"]
    f1 = report["results"]["checkpoint model.safetensors"]["f1"]
    baseline = report["baselines"]["all change"]["f1"]
    demo_f1 = before["results"]["demo"]["f1"]
    print(f"\nheld-out change F1: fine-tuned {f1:.3f}, demo checkpoint {demo_f1:.3f}, all-change baseline "
          f"{baseline:.3f}; {record['steps_per_second']:.2f} steps/s ({record['steps_done']} steps of "
          f"{record['batch']} tiles, {record['train_seconds']} s)")
    assert f1 > baseline + 0.3 and f1 > demo_f1 + 0.3 and f1 > 0.5
    assert f1 == pytest.approx(record["final_metric"])  # the command scores what training reported
    assert "| change F1 |" in (bcd["tmp"] / "eval.md").read_text()
    log = json.loads(paths(bcd["out"])["log"].read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3] and all(np.isfinite(e["loss"]) for e in log["epochs"])
    assert log["epochs"][-1]["loss"] < log["epochs"][0]["loss"]
    assert paths(bcd["out"])["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert log["batchnorm_calibration"]["task"] == "bcd" and log["stopped_early"] is None


def test_the_trained_checkpoint_builds_and_its_onnx_scores_the_same(bcd):
    from stsun.app.pipeline import build_artifacts

    build = bcd["tmp"] / "build"
    report = build_artifacts(load_profile(bcd["profile"]), build, checkpoint=bcd["out"], precisions=("fp32",),
                             fidelity_tiles=1)
    assert report["passed"] and {a["name"] for a in report["artifacts"]} >= {"folded", "onnx-fp32"}
    res = CliRunner().invoke(app, ["evaluate", "--data", str(bcd["data"]), "--profile", str(bcd["profile"]),
                                   "--checkpoint", str(bcd["out"]), "--engine", str(build),
                                   "--out", str(bcd["tmp"] / "eval_onnx.json"),
                                   "--figure", str(bcd["tmp"] / "eval.png")])
    assert res.exit_code == 0, res.output
    # a figure of the user's first tile: both dates, the label and both predictors' maps
    assert (bcd["tmp"] / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote " in res.output
    report = json.loads((bcd["tmp"] / "eval_onnx.json").read_text())
    ckpt, onnx = report["results"]["checkpoint model.safetensors"], report["results"]["onnxruntime fp32"]
    assert report["agreement_with_first"]["onnxruntime fp32"] > 0.9999
    assert onnx["f1"] == pytest.approx(ckpt["f1"], abs=1e-3)
    res = CliRunner().invoke(app, ["evaluate", "--data", str(bcd["data"]), "--profile", "levir-cd-bcd",
                                   "--engine", str(build)])
    assert res.exit_code == 2 and "was built for profile 'aerial-bcd-256'" in res.output


def test_resume_continues_exactly_and_ctrl_c_leaves_a_usable_checkpoint(tmp_path, monkeypatch):
    profile = load_profile(aerial_bcd_profile(tmp_path / "p.toml"))
    ds = open_dataset(write_change_pairs(tmp_path / "d", 3, size=256, seed=5), profile)
    options = FineTuneOptions(epochs=2, epoch_steps=2, batch=1, val_fraction=0.34, **FAST)
    straight = tmp_path / "straight" / "m.safetensors"
    fine_tune(ds, straight, options=options, progress=False)

    import stsun.training.finetune as ft

    calls = {"n": 0}
    crops = ft.random_crops

    def ctrl_c_on_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C: the step finishes, then training stops
        return crops(*args, **kwargs)

    monkeypatch.setattr(ft, "random_crops", ctrl_c_on_third_step)
    stopped = tmp_path / "stopped" / "m.safetensors"
    record = fine_tune(ds, stopped, options=options, progress=False)
    assert record["stopped_early"] == "Ctrl-C" and record["steps_done"] == 3
    model, meta = load_checkpoint(stopped)  # usable: it loads and scores
    assert meta["training"]["steps_done"] == 3 and meta["training"]["final_metric"] is not None
    monkeypatch.setattr(ft, "random_crops", crops)

    with pytest.raises(DatasetError, match=r"m\.state\.pt exists from an earlier run: resume it"):
        fine_tune(ds, stopped, options=options, progress=False)
    record = fine_tune(ds, stopped, options=options, resume=True, progress=False)
    assert record["steps_done"] == 4 and record["stopped_early"] is None
    a = torch.load(paths(straight)["state"], weights_only=True)
    b = torch.load(paths(stopped)["state"], weights_only=True)
    assert a["step"] == b["step"] == 4 and a["history"] == pytest.approx(b["history"], abs=1e-6)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6)
    wa, wb = load_file(str(straight)), load_file(str(stopped))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


def test_every_layout_trains_and_evaluates(tmp_path):
    rng = np.random.default_rng(0)
    # SECOND-style semantic change with RGB colour labels and classes the demo model never saw
    colours = {"no change": [255, 255, 255], "low vegetation": [0, 128, 0], "playground": [255, 0, 0],
               "building": [128, 0, 0]}
    scd = load_profile(write_profile(tmp_path / "second.toml", "whu-cd-scd", name="second-like", tile_size=256,
                                     classes=["low vegetation", "playground", "building"], label_colours=colours))
    palette = np.array(list(colours.values()), np.uint8)
    for i in range(3):
        base = rng.integers(0, 4, (256, 256))
        for t in (1, 2):
            lab = np.where(rng.random((256, 256)) < 0.2, 0, base if t == 1 else (base + 1) % 4)
            write_raster(tmp_path / "scd" / f"im{t}" / f"{i}.png", rng.integers(0, 255, (3, 256, 256), dtype=np.uint8))
            write_raster(tmp_path / "scd" / f"label{t}" / f"{i}.png", palette[lab].transpose(2, 0, 1).copy())
    # segmentation: class-index labels
    ss = load_profile("sentinel2-ss")
    for i in range(2):
        write_raster(tmp_path / "ss" / "images" / f"{i}.tif", rng.integers(1, 4000, (10, 256, 256), dtype=np.uint16))
        write_raster(tmp_path / "ss" / "labels" / f"{i}.png", rng.integers(0, ss.c_out, (256, 256), dtype=np.uint8))
    # a Sentinel-2 AOI as multi-date GeoTIFFs (one scene, so validation is its bottom strip)
    bcd = load_profile("sentinel2-bcd")
    write_scene(bcd, tmp_path / "aoi", 560, seed=3)
    cases = [(scd, tmp_path / "scd", ("second", "sek")), (ss, tmp_path / "ss", ("miou",)),
             (bcd, tmp_path / "aoi", ("f1",))]
    for profile, data, metric in cases:
        out = tmp_path / "runs" / f"{profile.name}.safetensors"
        record = fine_tune(open_dataset(data, profile), out, progress=False,
                           options=FineTuneOptions(epochs=1, epoch_steps=2, batch=1, val_fraction=0.34, **FAST))
        assert record["steps_done"] == 2 and record["final_validation"] is not None
        value = record["final_validation"]
        for k in metric:
            value = value[k]
        assert -1.0 <= value <= 1.0  # SeK is a kappa: below 0 when worse than chance
        model, meta = load_checkpoint(out)
        assert set(profile.classes) <= set(model.config.class_vocabulary)
    assert meta["training"]["validation"]["how"] == "the bottom 256 rows of the one image held out"


def test_commands_report_bad_data_in_one_line(tmp_path):
    profile = aerial_bcd_profile(tmp_path / "p.toml")
    data = write_change_pairs(tmp_path / "d", 2, size=32)
    (data / "label" / "0001.png").unlink()
    runner = CliRunner()
    for command in (["train", "--data", str(data), "--profile", str(profile), "--out", str(tmp_path / "m")],
                    ["evaluate", "--data", str(data), "--profile", str(profile)]):
        res = runner.invoke(app, command, terminal_width=400)
        assert res.exit_code == 2, res.output
        assert res.output.count("error:") == 1 and "0001.png has no partner in" in res.output
    write_raster(data / "label" / "0001.png", np.zeros((32, 32), np.uint8))
    res = runner.invoke(app, ["train", "--data", str(data), "--profile", str(profile), "--resume",
                              "--out", str(tmp_path / "m")], terminal_width=400)
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "nothing to resume" in res.output
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--profile", str(profile), "--split", "val"],
                        terminal_width=400)
    assert res.exit_code == 2 and "has no 'val' split (it has: all; or heldout, all)" in res.output
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--profile", str(profile), "--split", "heldout"],
                        terminal_width=400)
    assert res.exit_code == 2 and "the checkpoint records no validation part of" in res.output
    res = runner.invoke(app, ["train", "--profile", "sentinel2-bcd"], terminal_width=400)
    assert res.exit_code == 2 and "--profile can only be used with --data" in res.output


def test_a_build_on_the_users_data_gates_every_artifact_on_their_held_out_tiles(bcd, monkeypatch):
    """--data: int8 calibrated on the user's tiles with the calibrator chosen by measurement, every
    artifact judged on held-out user tiles (per class, and on change F1), and a calibration on
    tiles that never went through the profile's scaling (raw 8-bit numbers) fails the int8 gate."""
    from stsun.app.pipeline import ArtifactBuild, build_artifacts

    profile = load_profile(bcd["profile"])
    build = bcd["tmp"] / "build-data"
    report = build_artifacts(profile, build, checkpoint=bcd["out"], precisions=("fp32", "fp16", "int8"),
                             fidelity_tiles=2, calibration_tiles=4, data=(bcd["data"],))
    data = report["data"]
    assert data["data"] == str(bcd["data"]) and data["labelled"] and data["images"] == 10
    assert data["calibration"]["tiles"] == 4 and data["heldout"]["tiles"] == 2 and len(data["tiles_sha256"]) == 64
    assert not set(data["calibration"]["images"]) & set(data["heldout"]["images"])  # disjoint
    assert report["int8_calibration"]["data"] == str(bcd["data"])
    assert set(report["int8_calibration"]["candidates"]) == {"MinMax", "Entropy", "Percentile"}
    for a in report["artifacts"]:
        f = a["fidelity"]
        assert f["data"] == str(bcd["data"]) and f["tiles"] == 2
        assert set(f["per_class_agreement"]) == {"no change", "change"}
        assert f["worst_class_agreement"] == min(f["per_class_agreement"].values())
    int8 = next(a for a in report["artifacts"] if a["name"] == "onnx-int8")["fidelity"]
    assert int8["metric"]["name"] == "change F1" and int8["gate"]["max_metric_drop_points"] == 1.0
    assert int8["gate"]["passed"] == (int8["metric"]["delta_points"] >= -1.0)
    assert int8["metric"]["fp32"] > 0.5 and report["passed"], int8

    monkeypatch.setattr(ArtifactBuild, "_calibration", lambda self: self.user.calibration.x * 255)
    res = CliRunner().invoke(app, ["build", "--profile", str(bcd["profile"]), "--checkpoint", str(bcd["out"]),
                                   "--precision", "int8", "--data", str(bcd["data"]),
                                   "--out", str(bcd["tmp"] / "build-broken")], terminal_width=400)
    assert res.exit_code == 1, res.output
    assert "fidelity gate failed: onnx-int8: change F1" in res.output and "points below the fp32 model's" in res.output
    broken = json.loads((bcd["tmp"] / "build-broken" / "build_report.json").read_text())
    assert broken["artifacts"][-1]["fidelity"]["metric"]["delta_points"] < -1.0
