"""The tensor file format of the C++ example: int64 rank, int64 dims[rank], raw row-major data."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tensor(path: str | Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    with open(path, "wb") as f:
        np.array([array.ndim, *array.shape], np.int64).tofile(f)
        array.tofile(f)


def read_tensor(path: str | Path, dtype: type) -> np.ndarray:
    with open(path, "rb") as f:
        rank = int(np.fromfile(f, np.int64, 1)[0])
        shape = tuple(np.fromfile(f, np.int64, rank))
        return np.fromfile(f, dtype).reshape(shape)
