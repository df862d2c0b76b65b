"""``tensorrt``: a native TensorRT plan (built by the export step where TensorRT and a GPU exist)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stsun.export.trt.runner import PlanRunner
from stsun.profiles import Profile

from ..engine import BuildDir, Engine


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, plan_path: Path, profile: Profile, max_batch: int) -> None:
        super().__init__(profile, max_batch)
        self.runner = PlanRunner(plan_path, profile, max_batch)

    @classmethod
    def open(cls, build: BuildDir, precision: str = "fp32") -> "TensorRTEngine":
        return cls(build.artifact("tensorrt", precision), build.profile, build.max_batch)

    @property
    def device(self) -> str:
        return self.runner.device

    @property
    def precision(self) -> str:
        return self.runner.precision

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.runner(x)
