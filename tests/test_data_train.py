import numpy as np
import pytest
import torch

from stsun import load_model, load_profile
from stsun.data.synthetic import class_spectrum, synthetic_tiles
from stsun.data.targets import targets
from stsun.model.checkpoint import DEMO_CHECKPOINT
from stsun.training.metrics import confusion, scores
from stsun.training.train import task_loss


def test_spectra_are_physical():
    w = np.array([490.0, 665.0, 842.0, 1610.0, 2190.0])
    veg, water, soil = (class_spectrum(c, w) for c in ("forest and other vegetation", "water", "soil"))
    assert veg[2] > 3 * veg[1]            # red edge: NIR far above red
    assert water[2] < 0.02 and water[3] < 0.02  # water dark in NIR and SWIR
    assert soil[3] > soil[1] > soil[0]     # soil brightens into the SWIR


def test_labels_match_change_bookkeeping_and_pixels():
    p = load_profile("sentinel2-scd")
    x, labels = synthetic_tiles(p, 2, seed=4)
    assert x.shape == (2, 2, 10, 256, 256) and labels.shape == (2, 2, 256, 256)
    assert set(np.unique(labels)) <= set(range(p.c_out))
    changed = labels[:, 0] != labels[:, 1]
    assert 0.05 < changed.mean() < 0.5
    # every pixel's spectrum matches its label's class spectrum (up to noise and texture)
    spectra = np.stack([class_spectrum(c, np.array(p.wavelengths_nm)) for c in p.classes])
    expected = spectra[labels].transpose(0, 1, 4, 2, 3)
    assert np.median(np.abs(x - expected)) < 0.02
    # pixels whose label changed also changed spectrally
    diff = np.abs(x[:, 1] - x[:, 0]).mean(axis=1)
    assert diff[changed].mean() > 3 * diff[~changed].mean()
    bcd = targets(labels, load_profile("sentinel2-bcd"))
    np.testing.assert_array_equal(bcd[:, 0], changed.astype(np.int64))


def test_nodata_stripes_are_labelled_ignore_and_same_seed_reproduces():
    p = load_profile("sentinel2-bcd")
    x, labels = synthetic_tiles(p, 1, seed=9, nodata_stripes=2, cloud_cover=0.1)
    nan = np.isnan(x).any(axis=2)
    assert nan.any() and np.array_equal(nan, labels == -1)
    assert (targets(labels, p) == -1).any()
    x2, labels2 = synthetic_tiles(p, 1, seed=9, nodata_stripes=2, cloud_cover=0.1)
    np.testing.assert_array_equal(labels, labels2)


def test_metrics_on_known_confusion():
    target = np.array([0, 0, 1, 1, 1, -1])
    pred = np.array([0, 1, 1, 1, 0, 0])
    s = scores(confusion(pred, target, 2))
    assert s["oa"] == pytest.approx(3 / 5)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert s["iou"] == pytest.approx(2 / 4)


def test_loss_ignores_nodata_and_decreases_when_fitting():
    torch.manual_seed(0)
    logits = torch.zeros(1, 1, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (1, 1, 8, 8))
    target[..., :2] = -1
    opt = torch.optim.SGD([logits], lr=5.0)
    first = float(task_loss(logits, target))
    for _ in range(20):
        opt.zero_grad()
        task_loss(logits, target).backward()
        opt.step()
    assert float(task_loss(logits, target)) < first
    valid = target >= 0
    assert (logits.argmax(2)[valid] == target[valid]).all()
    assert logits.grad[..., :2].abs().max() == 0  # ignored pixels get no gradient


@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="demo checkpoint not committed")
def test_load_model_without_arguments_is_the_trained_demo():
    model = load_model()
    import json

    from stsun.model.checkpoint import config_path

    info = json.loads(config_path(DEMO_CHECKPOINT).read_text())
    assert info["training"]["steps_done"] > 100 and model.config.size == "tiny"
    from stsun.training.evaluate import evaluate_setting

    r = evaluate_setting(model, load_profile("sentinel2-ss"), tiles=2)
    assert r["model"]["miou"] > r["baseline"]["majority class"]["miou"] + 0.2
