"""Training targets from per-date class labels, per task (numpy only: datasets and the trainer share them)."""
from __future__ import annotations

import numpy as np

from stsun.profiles import Profile


def change_targets(labels: np.ndarray) -> np.ndarray:
    """(n, T, H, W) per-date labels -> (n, T-1, H, W): 1 where adjacent dates differ, 0 where
    they agree, -1 where either date is nodata."""
    changed = (labels[:, 1:] != labels[:, :-1]).astype(np.int64)
    return np.where((labels[:, 1:] < 0) | (labels[:, :-1] < 0), -1, changed)


def targets(labels: np.ndarray, profile: Profile) -> np.ndarray:
    """Per-task targets from per-date class labels (n, T_in, H, W): SS/SCD class per output
    date, BCD ``change_targets``."""
    if profile.task == "bcd":
        return change_targets(labels)
    return labels[:, :1] if profile.task == "ss" else labels
