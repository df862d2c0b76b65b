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


def map_layout(task: str, t_out: int, c_out: int) -> tuple[int, str, int]:
    """(band count, dtype, nodata) of the maps ``stsun predict`` writes and DN models serve."""
    if task != "scd":
        return t_out, "uint8", 255
    big = 1 + c_out * c_out > 254
    return 2 * t_out - 1, "uint16" if big else "uint8", 65535 if big else 255


def encode_maps(logits: np.ndarray, task: str, c_out: int) -> np.ndarray:
    """(B, T_out, C_out, h, w) logits -> (B, bands, h, w) int64 map bands (see ``map_layout``):
    ss / bcd the decisions; scd the class per date, then from-to codes 1 + from * C_out + to
    (0 = no change) between consecutive dates."""
    cls = predicted_classes(logits).astype(np.int64)
    if task != "scd":
        return cls
    change = np.where(cls[:, 1:] != cls[:, :-1], 1 + cls[:, :-1] * c_out + cls[:, 1:], 0)
    return np.concatenate([cls, change], axis=1)


def class_colours(n_classes: int) -> list[tuple[int, int, int]]:
    """One RGB colour per class (at least two, so a one-class map has a background)."""
    return [PALETTE[i % len(PALETTE)] for i in range(max(n_classes, 2))]


__all__ = ["CHANGE_COLOURS", "PALETTE", "class_colours", "encode_maps", "map_layout", "predicted_classes"]
