"""Fidelity of an artifact against the eager reference, and the gates a build must pass."""
from __future__ import annotations

import numpy as np

# precision -> (minimum argmax agreement, maximum abs logit error or None)
GATES: dict[str, tuple[float, float | None]] = {"fp32": (0.9999, 1e-3), "fp16": (0.99, None), "int8": (0.99, None)}


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """(B, T, C, H, W) logits -> (B, T, H, W) decisions: argmax, or logit > 0 for one channel."""
    return logits[:, :, 0] > 0 if logits.shape[2] == 1 else logits.argmax(axis=2)


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
    min_agree, gate_err = GATES[precision]
    passed = agree >= min_agree and (gate_err is None or max_err <= gate_err)
    return {"max_abs_err": max_err, "mean_abs_err": err_sum / ref.size, "argmax_agreement": agree,
            "gate": {"min_argmax_agreement": min_agree, "max_abs_err": gate_err, "passed": passed}}
