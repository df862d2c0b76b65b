"""Segmentation and change metrics from confusion matrices (ignore label -1)."""
from __future__ import annotations

import math

import numpy as np


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n) counts, rows the target class, columns the predicted one; targets < 0 are skipped."""
    valid = target >= 0
    idx = target[valid].astype(np.int64) * n_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores(cm: np.ndarray) -> dict:
    """OA, mean IoU / F1 over classes present; for 2 classes also precision, recall, IoU and
    F1 of class 1 (the change class)."""
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = cm.sum(1) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    out = {"oa": float(tp.sum() / max(cm.sum(), 1)), "miou": float(iou[present].mean()) if present.any() else 0.0,
           "mf1": float(f1[present].mean()) if present.any() else 0.0}
    if len(cm) == 2:
        out.update(precision=float(tp[1] / max(tp[1] + fp[1], 1)), recall=float(tp[1] / max(tp[1] + fn[1], 1)),
                   iou=float(iou[1]), f1=float(f1[1]))
    return out


def majority_confusion(cm: np.ndarray, label: int | None = None) -> np.ndarray:
    """The confusion matrix of predicting one class everywhere (default: the most frequent
    target class) on the pixels ``cm`` counted: a trivial baseline from the same counts."""
    rows = cm.sum(1)
    out = np.zeros_like(cm)
    out[:, int(rows.argmax()) if label is None else label] = rows
    return out


def semantic_change_scores(hist: np.ndarray) -> dict:
    """Semantic change metrics of SECOND (Yang et al., "Asymmetric Siamese Networks for Semantic
    Change Detection", 2021), as its benchmark code computes them.

    ``hist`` is the (K+1, K+1) confusion over both dates of each pair (rows target, columns
    prediction), class 0 meaning "no change" and class k >= 1 meaning "changed, and this date
    shows class k-1". With N = sum(hist) and q_ij its entries:

    - IoU_nc = q_00 / (q_0+ + q_+0 - q_00); IoU_c = sum_{i,j>=1} q_ij / (N - q_00);
      mIoU = (IoU_nc + IoU_c) / 2 (binary change read from the semantic maps);
    - SeK = kappa_hat * exp(IoU_c - 1), where kappa_hat is Cohen's kappa of hist with q_00
      set to 0 (the many agreeing no-change pixels do not inflate it):
      rho = trace / N', eta = sum_i q_i+ q_+i / N'^2, kappa_hat = (rho - eta) / (1 - eta);
    - Fscd: precision and recall of the changed pixels whose class is right,
      sum_{i>=1} q_ii over the predicted (sum_{j>=1} q_+j) and true (sum_{i>=1} q_i+) changes;
    - score = 0.3 mIoU + 0.7 SeK (the SECOND benchmark's ranking score).
    """
    q = hist.astype(np.float64)
    n = q.sum()
    q00 = q[0, 0]
    nc_union = q[0].sum() + q[:, 0].sum() - q00
    iou_nc = q00 / nc_union if nc_union else 0.0
    iou_c = q[1:, 1:].sum() / (n - q00) if n - q00 else 0.0
    q_hat = q.copy()
    q_hat[0, 0] = 0
    n_hat = q_hat.sum()
    kappa = 0.0
    if n_hat:
        rho = np.trace(q_hat) / n_hat
        eta = float(q_hat.sum(1) @ q_hat.sum(0)) / n_hat ** 2
        kappa = (rho - eta) / (1 - eta) if eta != 1 else 0.0
    sc_tp = np.trace(q[1:, 1:])
    precision = sc_tp / q[:, 1:].sum() if q[:, 1:].sum() else 0.0
    recall = sc_tp / q[1:].sum() if q[1:].sum() else 0.0
    fscd = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    miou = (iou_nc + iou_c) / 2
    sek = kappa * math.exp(iou_c - 1)
    return {"miou": float(miou), "iou_nc": float(iou_nc), "iou_c": float(iou_c), "kappa_hat": float(kappa),
            "sek": float(sek), "fscd": float(fscd), "score": float(0.3 * miou + 0.7 * sek)}
