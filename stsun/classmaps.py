"""From logits to class decisions, and the colours class and change maps are drawn with.

Shared by evaluation, fidelity checks, scene inference and previews, so it sits at the bottom.
"""
from __future__ import annotations

import numpy as np

# Change masks: no change black, change red.
CHANGE_COLOURS = [(0, 0, 0), (230, 30, 30)]
# Colours for class maps (RGB), in class order.
PALETTE = [(214, 60, 60), (240, 208, 80), (46, 139, 58), (127, 200, 192), (160, 120, 90), (44, 95, 191),
           (150, 150, 150), (230, 140, 30), (120, 60, 160), (30, 200, 90), (250, 250, 250), (90, 90, 30)]


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """(B, T, C, H, W) logits -> (B, T, H, W) decisions: argmax, or logit > 0 for one channel."""
    return logits[:, :, 0] > 0 if logits.shape[2] == 1 else logits.argmax(axis=2)


def class_colours(n_classes: int) -> list[tuple[int, int, int]]:
    """One RGB colour per class (at least two, so a one-class map has a background)."""
    return [PALETTE[i % len(PALETTE)] for i in range(max(n_classes, 2))]


__all__ = ["CHANGE_COLOURS", "PALETTE", "class_colours", "predicted_classes"]
