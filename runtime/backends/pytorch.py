"""PyTorch backends: ``eager`` (the research-style dynamic model) and ``folded``."""
from __future__ import annotations

import numpy as np
import torch

from stsun.model import STSUN, Metadata
from stsun.model.checkpoint import load_checkpoint
from stsun.model.folding import fold
from stsun.profiles import Profile

from ..engine import BuildDir, Engine


def checkpoint_model(build: BuildDir) -> STSUN:
    return load_checkpoint(build.checkpoint)[0]


class Fp32TorchEngine(Engine):
    """A PyTorch backend built from the build's checkpoint, in fp32 only."""

    @classmethod
    def open(cls, build: BuildDir, precision: str = "fp32") -> "Fp32TorchEngine":
        return cls(checkpoint_model(build), build.profile, build.max_batch)


class EagerEngine(Fp32TorchEngine):
    """The dynamic model as the research code runs it: every call evaluates the DUMs."""

    backend = "eager"

    def __init__(self, model: STSUN, profile: Profile, max_batch: int | None = None) -> None:
        super().__init__(profile, max_batch)
        self.model = model.eval()
        self.meta = Metadata.from_profile(profile)

    @torch.inference_mode()
    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x), self.meta).numpy()


class FoldedEngine(Fp32TorchEngine):
    """The folded static model in PyTorch (no hypernetwork at run time)."""

    backend = "folded"

    def __init__(self, model: STSUN, profile: Profile, max_batch: int | None = None) -> None:
        super().__init__(profile, max_batch)
        self.module = fold(model.eval(), profile)

    @torch.inference_mode()
    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(x)).numpy()
