"""``compiled``: the folded model under torch.compile, in fp16/bf16 with the fused window
attention kernel on a GPU (CUDA graphs via mode="reduce-overhead"); fp32 on CPU."""
from __future__ import annotations

import numpy as np
import torch

from stsun.errors import EngineError
from stsun.model import STSUN
from stsun.model.folding import fold
from stsun.precision import precision as precision_spec
from stsun.profiles import Profile

from ..engine import BuildDir, Engine
from .pytorch import checkpoint_model


class CompiledEngine(Engine):
    backend = "compiled"

    def __init__(self, model: STSUN, profile: Profile, max_batch: int | None = None, precision: str | None = None,
                 device: str | None = None) -> None:
        super().__init__(profile, max_batch)
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        precision = precision or ("bf16" if self._device == "cuda" else "fp32")
        dtype = precision_spec(precision).torch_dtype
        if dtype is None:
            raise EngineError(f"the compiled backend computes in a torch dtype; {precision} is not one")
        if self._device == "cpu" and precision != "fp32":
            raise EngineError("the compiled backend runs fp16/bf16 on a GPU only; use fp32 on CPU")
        self._precision = precision
        self.dtype = dtype
        module = fold(model.eval(), profile).to(device=self._device, dtype=self.dtype)
        mode = "reduce-overhead" if self._device == "cuda" else "default"
        self.module = torch.compile(module, mode=mode, dynamic=False)

    @classmethod
    def open(cls, build: BuildDir, precision: str | None = None, device: str | None = None) -> "CompiledEngine":
        return cls(checkpoint_model(build), build.profile, build.max_batch, precision, device)

    @property
    def device(self) -> str:
        return self._device

    @property
    def precision(self) -> str:
        return self._precision

    @torch.inference_mode()
    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.module(torch.from_numpy(x).to(self._device, self.dtype))
        return out.float().cpu().numpy()
