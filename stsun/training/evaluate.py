"""Evaluate a model against trivial baselines: on held-out synthetic scenes per task and
profile, or on a user's dataset (``evaluate_data``) with the paper's metrics for the task.

``evaluate_data`` takes predict functions (tiles -> logits), so a checkpoint and a built
artifact (run by a runtime backend, which the caller brings) are scored the same way. torch is
imported only where a checkpoint runs, so scoring a built engine works in the runtime install."""
from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stsun.classmaps import CHANGE_COLOURS, class_colours, predicted_classes
from stsun.data.datasets import IGNORE, NO_CHANGE, Region, UserDataset, grid_tile_count, grid_tiles
from stsun.data.synthetic import synthetic_tiles
from stsun.data.targets import change_targets, targets
from stsun.display import progress_bar, stretch
from stsun.profiles import Profile, load_profile
from stsun.training.metrics import confusion, majority_confusion, scores, semantic_change_scores

if TYPE_CHECKING:
    from stsun.model import STSUN

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
        ("sentinel2-ss, unseen class subset", s2ss.model_copy(update={"classes": ("agriculture", "water", "soil")}),
         False),
    ]


def predict(model: STSUN, profile: Profile, x: np.ndarray, batch: int = 4) -> np.ndarray:
    import torch

    from stsun.model import Metadata

    meta = Metadata.from_profile(profile)
    with torch.inference_mode():
        return np.concatenate([predicted_classes(model(torch.from_numpy(x[i:i + batch]), meta).numpy())
                               for i in range(0, len(x), batch)]).astype(np.int64)


def evaluate_setting(model: STSUN, profile: Profile, tiles: int, calibrate: bool = False) -> dict:
    if calibrate:  # unlabeled tiles of the new sensor, never the evaluation tiles
        from stsun.training.train import calibrate_batchnorm

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
    profile = load_profile(profile_name)
    x, labels = synthetic_tiles(profile, 1, seed=EVAL_SEED + 1)
    return prediction_figure(profile, x[0], labels[0], {"demo model": predict(model, profile, x)[0]}, path)


def prediction_figure(profile: Profile, x: np.ndarray, target: np.ndarray, predictions: dict[str, np.ndarray],
                      path: Path) -> Path:
    """A PNG of one tile: a row per date (its RGB; then, for each output map, the label and every
    predictor's map). ``x`` (T_in, C, H, W); ``target`` and each prediction (T_out, H, W), the
    label's IGNORE pixels blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    rgb_idx = [profile.band_names.index(b) for b in profile.rgb_bands] if profile.rgb_bands else []
    colours = CHANGE_COLOURS if profile.task == "bcd" else class_colours(profile.c_out)
    cmap = ListedColormap([np.array(c) / 255 for c in colours])
    rows, cols = max(profile.t_in, profile.t_out), bool(rgb_idx) + 1 + len(predictions)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for t in range(rows):
        panels = [(stretch(x[t, rgb_idx]), f"date {t + 1}: RGB", None)] if rgb_idx and t < profile.t_in else \
            [(None, "", None)] * bool(rgb_idx)
        if t < profile.t_out:
            panels.append((np.ma.masked_equal(target[t], IGNORE), f"label {t + 1}", cmap))
            panels += [(pred[t], f"{name} {t + 1}", cmap) for name, pred in predictions.items()]
        for ax, (img, title, cm) in zip(axes[t], panels):
            if img is not None:
                ax.imshow(img, cmap=cm, vmin=0, vmax=len(colours) - 1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
        for ax in axes[t]:
            ax.axis("off")
    names = ("no change", "change") if profile.task == "bcd" else profile.classes
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path



# -- user datasets ---------------------------------------------------------------------------
Predict = Callable[[np.ndarray], np.ndarray]  # (B, T_in, C_in, H, W) float32 -> logits (B, T_out, C_out, H, W)
# The metric a training run keeps its best checkpoint by: (key path in a result, label).
PRIMARY_METRIC = {"bcd": (("f1",), "change F1"), "ss": (("miou",), "mIoU"), "scd": (("second", "score"), "SCD score")}


def model_predictor(model: STSUN, profile: Profile) -> Predict:
    """Logits of ``model`` (in eval mode, on its device) for batches of the profile's tiles."""
    import torch

    from stsun.model import Metadata

    meta = Metadata.from_profile(profile)
    device = model.task_embed.device

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x).to(device), meta).float().cpu().numpy()

    return run


def scd_change_target(labels: np.ndarray) -> np.ndarray:
    """(B, T, H, W) SCD targets -> (B, T-1, H, W) change between adjacent dates: 1 where both
    classes are known and differ, 0 where they agree or either is NO_CHANGE, IGNORE where
    either is IGNORE."""
    a, b = labels[:, :-1], labels[:, 1:]
    out = np.where((a == NO_CHANGE) | (b == NO_CHANGE), 0, (a != b).astype(np.int64))
    return np.where((a == IGNORE) | (b == IGNORE), IGNORE, out)


def second_maps(classes: np.ndarray, change: np.ndarray) -> np.ndarray:
    """SECOND's maps, both dates of each adjacent pair: 0 where ``change`` is 0, class + 1
    where it is 1, IGNORE where it is IGNORE. classes (B, T, H, W), change (B, T-1, H, W)
    -> (B, 2 (T-1), H, W)."""
    maps = []
    for pair in range(change.shape[1]):
        c = change[:, pair]
        for t in (pair, pair + 1):
            maps.append(np.where(c == 1, classes[:, t] + 1, np.where(c == 0, 0, IGNORE)))
    return np.stack(maps, axis=1)


def primary_metric(task: str, result: dict) -> float:
    keys, _ = PRIMARY_METRIC[task]
    for k in keys:
        result = result[k]
    return float(result)


class TaskCounts:
    """Confusion counts of one predictor over a dataset, per the profile's task: BCD the change
    confusion; SS the class confusion; SCD the per-date class confusion, the change derived from
    the two maps, and SECOND's (K+1)-class from-to histogram."""

    def __init__(self, profile: Profile) -> None:
        self.task = profile.task
        self.n = 2 if profile.c_out == 1 else profile.c_out
        self.cm = np.zeros((self.n, self.n), np.int64)
        if self.task == "scd":
            self.change = np.zeros((2, 2), np.int64)
            self.hist = np.zeros((self.n + 1, self.n + 1), np.int64)

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        self.cm += confusion(pred, target, self.n)
        if self.task == "scd":
            changed = (pred[:, 1:] != pred[:, :-1]).astype(np.int64)
            truth = scd_change_target(target)
            self.change += confusion(changed, truth, 2)
            self.hist += confusion(second_maps(pred, changed), second_maps(target, truth), self.n + 1)

    def result(self) -> dict:
        if self.task != "scd":
            return scores(self.cm)
        return {"semantic": scores(self.cm), "change": scores(self.change), "second": semantic_change_scores(self.hist)}

    def baselines(self) -> dict:
        """Trivial predictions scored on the same pixels: BCD all change / no change; SS the
        majority class; SCD the majority class on every date (hence no change anywhere)."""
        if self.task == "bcd":
            return {"all change": scores(majority_confusion(self.cm, 1)),
                    "no change": scores(majority_confusion(self.cm, 0))}
        if self.task == "ss":
            return {"majority class": scores(majority_confusion(self.cm))}
        return {"majority class": {"semantic": scores(majority_confusion(self.cm)),
                                   "change": scores(majority_confusion(self.change, 0)),
                                   "second": semantic_change_scores(majority_confusion(self.hist, 0))}}


def evaluate_data(predictors: dict[str, Predict], dataset: UserDataset, regions: list[Region], batch: int = 4,
                  progress: bool = True, figure: Path | None = None) -> dict:
    """Score every predictor on the regions' grid tiles, with trivial baselines and each
    predictor's pixel agreement with the first one (on the scored pixels); ``figure``: a PNG of
    the first tile's label and predictions (``prediction_figure``)."""
    profile = dataset.profile
    counts = {name: TaskCounts(profile) for name in predictors}
    agree = dict.fromkeys(predictors, 0)
    scored = 0
    tiles = grid_tiles(dataset, regions)
    bar = progress_bar(total=grid_tile_count(dataset, regions), desc="evaluate", unit="tile", show=progress)
    while chunk := list(itertools.islice(tiles, batch)):
        x = np.stack([c[0] for c in chunk])
        target = np.stack([c[1] for c in chunk])
        mask = target != IGNORE
        first = None
        preds = {}
        for name, predict in predictors.items():
            pred = preds[name] = predicted_classes(predict(x)).astype(np.int64)
            counts[name].add(pred, target)
            first = pred if first is None else first
            agree[name] += int((pred == first)[mask].sum())
        if figure is not None and not scored:
            prediction_figure(profile, x[0], target[0], {n: p[0] for n, p in preds.items()}, figure)
        scored += int(mask.sum())
        bar.update(len(chunk))
    bar.close()
    reference = next(iter(counts.values()))
    return {"profile": profile.name, "task": profile.task, "data": str(dataset.root), "layout": dataset.layout.name,
            "regions": [r.record() for r in regions], "tiles": grid_tile_count(dataset, regions),
            "scored_pixels": scored, "results": {name: c.result() for name, c in counts.items()},
            "baselines": reference.baselines(),
            "agreement_with_first": {name: agree[name] / max(scored, 1) for name in predictors}}


# (label, key path) rows of the markdown table, per task.
DATA_ROWS = {
    "bcd": [("change precision", ("precision",)), ("change recall", ("recall",)), ("change F1", ("f1",)),
            ("change IoU", ("iou",)), ("OA", ("oa",))],
    "ss": [("mIoU", ("miou",)), ("mean F1", ("mf1",)), ("OA", ("oa",))],
    "scd": [("SeK", ("second", "sek")), ("mIoU (no change / change)", ("second", "miou")),
            ("Fscd", ("second", "fscd")), ("score (0.3 mIoU + 0.7 SeK)", ("second", "score")),
            ("semantic mIoU", ("semantic", "miou")), ("semantic OA", ("semantic", "oa")),
            ("change F1", ("change", "f1"))],
}


def data_markdown(report: dict) -> str:
    """One table: a row per metric, a column per predictor, then the baselines."""
    def get(result: dict, keys: tuple[str, ...]) -> float:
        for k in keys:
            result = result[k]
        return result

    names, bases = list(report["results"]), list(report["baselines"])
    rows = [f"| metric | {' | '.join(names)} | {' | '.join(f'baseline: {b}' for b in bases)} |",
            "|---" * (1 + len(names) + len(bases)) + "|"]
    for label, keys in DATA_ROWS[report["task"]]:
        values = [get(report["results"][n], keys) for n in names] + [get(report["baselines"][b], keys) for b in bases]
        rows.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    if len(names) > 1:
        rows.append("| pixel agreement with " + names[0] + " | "
                    + " | ".join(f"{report['agreement_with_first'][n]:.6f}" for n in names)
                    + " |" * len(bases) + " |")
    return "\n".join(rows)
