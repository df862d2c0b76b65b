"""Evaluate a model on held-out synthetic scenes, per task and profile, against trivial baselines."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from stsun.classmaps import class_colours, predicted_classes
from stsun.metrics import confusion, scores
from stsun.model import STSUN, Metadata
from stsun.profiles import Profile, load_profile
from stsun.synthetic import synthetic_tiles
from stsun.train import calibrate_batchnorm, change_targets, targets

EVAL_SEED = 987654  # never drawn in training (training seeds come from its own generator)


def default_settings() -> list[tuple[str, Profile, bool]]:
    """(label, profile, calibrate BatchNorm first): the trained profiles, an unseen band set
    (as shipped, and after unlabeled BatchNorm calibration on that sensor) and an unseen
    class subset."""
    s2ss = load_profile("sentinel2-ss")
    l8 = load_profile("landsat8-ss")
    return [
        ("sentinel2-ss", s2ss, False),
        ("sentinel2-bcd", load_profile("sentinel2-bcd"), False),
        ("sentinel2-scd", load_profile("sentinel2-scd"), False),
        ("landsat8-ss (unseen bands)", l8, False),
        ("landsat8-ss (unseen bands, BN calibrated)", l8, True),
        ("sentinel2-ss, unseen class subset", s2ss.model_copy(update={"classes": ("agriculture", "water", "soil")}), False),
    ]


@torch.inference_mode()
def predict(model: STSUN, profile: Profile, x: np.ndarray, batch: int = 4) -> np.ndarray:
    meta = Metadata.from_profile(profile)
    return np.concatenate([predicted_classes(model(torch.from_numpy(x[i:i + batch]), meta).numpy())
                           for i in range(0, len(x), batch)]).astype(np.int64)


def evaluate_setting(model: STSUN, profile: Profile, tiles: int, calibrate: bool = False) -> dict:
    if calibrate:  # unlabeled tiles of the new sensor, never the evaluation tiles
        model = copy.deepcopy(model)
        calibrate_batchnorm(model, [profile])
        model.eval()
    x, labels = synthetic_tiles(profile, tiles, seed=EVAL_SEED)
    target = targets(labels, profile)
    pred = predict(model, profile, x)
    n = 2 if profile.c_out == 1 else profile.c_out
    result = {"task": profile.task, "tiles": tiles, "model": scores(confusion(pred, target, n))}
    if profile.task == "bcd":
        result["baseline"] = {"no change": scores(confusion(np.zeros_like(target), target, 2)),
                              "all change": scores(confusion(np.ones_like(target), target, 2))}
    else:
        majority = np.bincount(target[target >= 0].ravel(), minlength=n).argmax()
        result["baseline"] = {"majority class": scores(confusion(np.full_like(target, majority), target, n))}
    if profile.task == "scd":  # from-to change derived from the per-date maps
        derived = (pred[:, 1:] != pred[:, :-1]).astype(np.int64)
        result["derived_change"] = scores(confusion(derived, change_targets(labels), 2))
    return result


def evaluate(model: STSUN, tiles: int = 8, settings: list[tuple[str, Profile, bool]] | None = None) -> dict:
    return {label: evaluate_setting(model, prof, tiles, cal) for label, prof, cal in settings or default_settings()}


def markdown_table(results: dict) -> str:
    rows = ["| setting | task | metric | model | trivial baseline |", "|---|---|---|---|---|"]
    for label, r in results.items():
        m = r["model"]
        if r["task"] == "bcd":
            base = max(r["baseline"].values(), key=lambda s: s["f1"])
            rows += [f"| {label} | bcd | change F1 | {m['f1']:.3f} | {base['f1']:.3f} (all change) |",
                     f"| {label} | bcd | change IoU | {m['iou']:.3f} | {base['iou']:.3f} |",
                     f"| {label} | bcd | OA | {m['oa']:.3f} | {r['baseline']['no change']['oa']:.3f} (no change) |"]
            continue
        base = r["baseline"]["majority class"]
        rows += [f"| {label} | {r['task']} | mean F1 | {m['mf1']:.3f} | {base['mf1']:.3f} (majority) |",
                 f"| {label} | {r['task']} | mIoU | {m['miou']:.3f} | {base['miou']:.3f} |",
                 f"| {label} | {r['task']} | OA | {m['oa']:.3f} | {base['oa']:.3f} |"]
        if "derived_change" in r:
            rows.append(f"| {label} | scd | from-to change F1 | {r['derived_change']['f1']:.3f} | 0.000 (no change) |")
    return "\n".join(rows)


def demo_figure(model: STSUN, path: Path, profile_name: str = "sentinel2-scd") -> Path:
    """A PNG: RGB composite, label and prediction for each date of one held-out tile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    profile = load_profile(profile_name)
    x, labels = synthetic_tiles(profile, 1, seed=EVAL_SEED + 1)
    pred = predict(model, profile, x)
    rgb_idx = [profile.band_names.index(b) for b in profile.rgb_bands]
    cmap = ListedColormap([np.array(c) / 255 for c in class_colours(profile.c_out)[: profile.c_out]])
    fig, axes = plt.subplots(profile.t_in, 3, figsize=(9, 3 * profile.t_in))
    for t in range(profile.t_in):
        rgb = np.clip(x[0, t, rgb_idx].transpose(1, 2, 0) * 3.5, 0, 1)
        for ax, img, title in zip(axes[t], (rgb, labels[0, t], pred[0, t]),
                                  (f"date {t + 1}: RGB", "label", "demo model")):
            ax.imshow(img, cmap=None if img is rgb else cmap, vmin=0, vmax=profile.c_out - 1, interpolation="nearest")
            ax.set_title(title)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(profile.c_out)]
    fig.legend(handles, profile.classes, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
