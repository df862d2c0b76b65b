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
    err = np.abs(out.astype(np.float64) - ref)
    agree = float((predicted_classes(out) == predicted_classes(ref)).mean())
    min_agree, max_err = GATES[precision]
    passed = agree >= min_agree and (max_err is None or float(err.max()) <= max_err)
    return {"max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()), "argmax_agreement": agree,
            "gate": {"min_argmax_agreement": min_agree, "max_abs_err": max_err, "passed": passed}}
