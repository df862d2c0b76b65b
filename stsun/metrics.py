"""Segmentation and change metrics from confusion matrices (ignore label -1)."""
from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    valid = target >= 0
    idx = target[valid].astype(np.int64) * n_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores(cm: np.ndarray) -> dict:
    """OA, mean IoU / F1 over classes present; for 2 classes also IoU / F1 of class 1."""
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = cm.sum(1) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    out = {"oa": float(tp.sum() / max(cm.sum(), 1)), "miou": float(iou[present].mean()),
           "mf1": float(f1[present].mean())}
    if len(cm) == 2:
        out.update(iou=float(iou[1]), f1=float(f1[1]))
    return out
