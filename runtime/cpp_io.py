"""The C++ example (``runtime/cpp``) from Python: its tensor file format (int64 rank, int64
dims[rank], raw row-major data) and its CMake build against the installed torch."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("cpp")


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


def build_example(build_dir: Path, jobs: int = 2) -> Path:
    """Configure and build ``runtime/cpp`` in ``build_dir`` (Release) with the torch wheel's
    headers and libraries; returns the ``stsun_example`` executable. Raises CalledProcessError
    (with CMake's output) when a step fails."""
    import torch.utils

    subprocess.run(["cmake", "-S", str(SOURCE), "-B", str(build_dir),
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(jobs)], check=True, capture_output=True, text=True)
    return build_dir / "stsun_example"
