"""Fidelity of an artifact against the eager reference, judged by its precision's gate
(``stsun.precision``): argmax agreement overall and per class, and on labelled user tiles the
task metric of the artifact next to the reference's."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stsun.classmaps import predicted_classes
from stsun.precision import precision as precision_spec
from stsun.profiles import Profile
from stsun.training.evaluate import PRIMARY_METRIC, TaskCounts, primary_metric


@dataclass(frozen=True)
class FidelityTiles:
    """What the held-out tiles are: ``data`` "generated" or the user's source; ``target`` the
    task's targets (N, T_out, H, W) where the user's data is labelled."""

    profile: Profile
    data: str = "generated"
    target: np.ndarray | None = None

    def class_names(self) -> list[str]:
        p = self.profile
        return [f"no {p.classes[0]}", p.classes[0]] if p.c_out == 1 else list(p.classes)


def _metric(fid: FidelityTiles, logits: np.ndarray) -> float:
    counts = TaskCounts(fid.profile)
    for i in range(len(logits)):
        counts.add(predicted_classes(logits[i:i + 1]).astype(np.int64), fid.target[i:i + 1])
    return primary_metric(fid.profile.task, counts.result())


def fidelity(out: np.ndarray, ref: np.ndarray, precision: str, tiles: FidelityTiles) -> dict:
    if out.shape != ref.shape:
        raise ValueError(f"artifact output shape {out.shape} differs from the reference {ref.shape}")
    names = tiles.class_names()
    # one tile at a time: whole float64 copies of multi-date 1024 px logits do not fit in memory
    max_err, err_sum, agree_sum = 0.0, 0.0, 0
    per_class, per_class_agree = np.zeros(len(names), np.int64), np.zeros(len(names), np.int64)
    for o, r in zip(out, ref):
        err = np.abs(o.astype(np.float64) - r)
        max_err, err_sum = max(max_err, float(err.max())), err_sum + float(err.sum())
        ref_cls = predicted_classes(r[None]).astype(np.int64).ravel()
        same = predicted_classes(o[None]).astype(np.int64).ravel() == ref_cls
        agree_sum += int(same.sum())
        per_class += np.bincount(ref_cls, minlength=len(names))
        per_class_agree += np.bincount(ref_cls, weights=same, minlength=len(names)).astype(np.int64)
    agree = agree_sum / (ref.size / ref.shape[2])
    by_class = {n: (float(a / c) if c else None) for n, a, c in zip(names, per_class_agree, per_class)}
    spec = precision_spec(precision)
    result = {"data": tiles.data, "tiles": len(out), "max_abs_err": max_err, "mean_abs_err": err_sum / ref.size,
              "argmax_agreement": agree, "per_class_agreement": by_class,
              "worst_class_agreement": min((v for v in by_class.values() if v is not None), default=None)}
    on = f"{len(out)} held-out {'generated' if tiles.data == 'generated' else 'user'} tile(s)"
    if tiles.target is not None and spec.max_metric_drop is not None:
        label = PRIMARY_METRIC[tiles.profile.task][1]
        target = tiles.target[:len(out)]
        ref_value = _metric(FidelityTiles(tiles.profile, tiles.data, target), ref)
        value = _metric(FidelityTiles(tiles.profile, tiles.data, target), out)
        drop = 100 * (ref_value - value)
        passed = drop <= spec.max_metric_drop
        result["metric"] = {"name": label, "fp32": ref_value, "artifact": value, "delta_points": -drop}
        gate = {"max_metric_drop_points": spec.max_metric_drop, "basis": f"{label} on {on}", "passed": passed}
        if not passed:
            gate["reason"] = (f"{label} {value:.4f} is {drop:.2f} points below the fp32 model's {ref_value:.4f} "
                              f"on {on} (at most {spec.max_metric_drop} allowed)")
    else:
        err_ok = spec.max_abs_err is None or max_err <= spec.max_abs_err
        passed = agree >= spec.min_argmax_agreement and err_ok
        gate = {**spec.gate, "basis": f"argmax agreement on {on}", "passed": passed}
        if not passed:
            gate["reason"] = (f"argmax agreement {agree:.6f} below {spec.min_argmax_agreement} on {on}"
                              if agree < spec.min_argmax_agreement else
                              f"max |error| {max_err:.2e} above {spec.max_abs_err} on {on}")
    result["gate"] = gate
    return result
