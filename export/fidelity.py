"""Fidelity of an artifact against the eager reference, judged by its precision's gate
(``stsun.precision``)."""
from __future__ import annotations

import numpy as np

from stsun.classmaps import predicted_classes
from stsun.precision import precision as precision_spec


def fidelity(out: np.ndarray, ref: np.ndarray, precision: str) -> dict:
    if out.shape != ref.shape:
        raise ValueError(f"artifact output shape {out.shape} differs from the reference {ref.shape}")
    # one tile at a time: whole float64 copies of multi-date 1024 px logits do not fit in memory
    max_err, err_sum, agree_sum = 0.0, 0.0, 0
    for o, r in zip(out, ref):
        err = np.abs(o.astype(np.float64) - r)
        max_err, err_sum = max(max_err, float(err.max())), err_sum + float(err.sum())
        agree_sum += int((predicted_classes(o[None]) == predicted_classes(r[None])).sum())
    agree = agree_sum / (ref.size / ref.shape[2])
    spec = precision_spec(precision)
    passed = agree >= spec.min_argmax_agreement and (spec.max_abs_err is None or max_err <= spec.max_abs_err)
    return {"max_abs_err": max_err, "mean_abs_err": err_sum / ref.size, "argmax_agreement": agree,
            "gate": {**spec.gate, "passed": passed}}
