"""One interface for every backend: ``load_engine(build_dir, backend=...)``.

An engine takes a float32 numpy batch (B, T_in, C_in, H, W), already scaled as its profile
says, and returns float32 logits (B, T_out, C_out, H, W). Inputs are validated before any
compute; batches larger than the engine's max batch are split.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from stsun.errors import EngineError
from stsun.profiles import Profile, profile_from_dict
from stsun.validation import InputError, check_tiles

REPORT_NAME = "build_report.json"


class Engine(ABC):
    backend: ClassVar[str]

    def __init__(self, profile: Profile, max_batch: int | None = None) -> None:
        self.profile = profile
        self.max_batch = max_batch

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def precision(self) -> str:
        return "fp32"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outs = [self._run(b) for b in self.checked_batches(x)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def checked_batches(self, x: np.ndarray) -> list[np.ndarray]:
        """``x`` validated (shape, dtype, finite) and split into batches of at most ``max_batch``."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"{self.backend}[{self.profile.name}]: expected a numpy array, got {type(x).__name__}")
        check_tiles(x, t_in=self.profile.t_in, c_in=self.profile.c_in, tile_size=self.profile.tile_size,
                    allowed_dtypes=("float32",), context=f"{self.backend}[{self.profile.name}]",
                    band_names=self.profile.band_names)
        step = self.max_batch or len(x)
        return [np.ascontiguousarray(x[i:i + step]) for i in range(0, len(x), step)]

    def run_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Logits for several batches. Local engines run them one after another (each already
        uses every core); a remote engine overrides this to keep them in flight together."""
        return [self(b) for b in batches]

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray:
        """Logits for a validated batch of at most ``max_batch`` tiles."""


class BuildDir:
    """A directory written by ``build_engine.py``: artifacts plus ``build_report.json``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        report = self.path / REPORT_NAME
        if not report.is_file():
            raise EngineError(f"{self.path} is not a build directory (no {REPORT_NAME}); "
                              "create one with: python export/build_engine.py --profile NAME --out DIR")
        try:
            self.report = json.loads(report.read_text())
            self.profile = profile_from_dict(self.report["profile"], source=str(report))
        except (json.JSONDecodeError, KeyError) as err:
            raise EngineError(f"{report} is unreadable: {err}") from None
        self.max_batch: int = self.report["max_batch"]

    @property
    def checkpoint(self) -> Path:
        return self.path / self.report["checkpoint"]["file"]

    def artifact(self, kind: str, precision: str) -> Path:
        for a in self.report["artifacts"]:
            if a["format"] == kind and a["precision"] == precision and a.get("path"):
                return self.path / a["path"]
        built = sorted(f"{a['format']}/{a['precision']}" for a in self.report["artifacts"] if a.get("path"))
        raise EngineError(f"{self.path} has no {kind} {precision} artifact; it has {built}. "
                          f"Rebuild with --precision {precision}.")


def load_engine(path: str | Path, backend: str = "onnxruntime", precision: str | None = None, **options) -> Engine:
    """Open a build directory with one backend of ``stsun.runtime.backends.BACKENDS`` (eager,
    folded, compiled, onnxruntime, tensorrt, triton). ``precision`` picks the artifact or compute
    precision among the backend's (default: fp32; ``compiled``: bf16 on a GPU)."""
    from .backends import backend as find  # the table imports every backend module

    spec = find(backend)
    if precision is not None and precision not in spec.precisions:
        raise EngineError(f"the {backend} backend runs in {' / '.join(spec.precisions)} only, not {precision}")
    if precision is not None:
        options["precision"] = precision
    return spec.engine.open(BuildDir(path), **options)
