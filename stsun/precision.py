"""The precision table: one entry per numeric precision the project knows.

Everything that depends on a precision reads it from here: which ONNX artifacts a build can
produce, the fidelity gate each artifact must pass, the torch dtype of the ``compiled`` backend,
and the dtypes the fused kernel and its ahead-of-time build accept. Adding a precision is one
entry here plus the code that produces or runs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: str | None                # torch dtype name; None: a quantised format, not a torch compute dtype
    min_argmax_agreement: float      # fidelity gate against the eager fp32 model
    max_abs_err: float | None        # ... and on the logits, where the precision can hold one
    onnx: bool                       # a build can write model.<name>.onnx
    kernel: bool                     # the fused attention kernel (and its TensorRT PTX) runs in it
    # On labelled user tiles (build --data): the gate instead, in metric points (0.01 of change F1,
    # mIoU or the SCD score) below the fp32 model on the same tiles; None keeps the agreement gate.
    max_metric_drop: float | None = None
    note: str = ""

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """Imported on use: reading the table (the CLI, a build's options) loads no torch."""
        import torch

        return None if self.dtype is None else getattr(torch, self.dtype)

    @property
    def gate(self) -> dict:
        return {"min_argmax_agreement": self.min_argmax_agreement, "max_abs_err": self.max_abs_err}


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "float32", 0.9999, 1e-3, onnx=True, kernel=True),
    Precision("fp16", "float16", 0.99, None, onnx=True, kernel=True, max_metric_drop=0.5,
              note="normalisations and softmax stay fp32 in the ONNX"),
    Precision("bf16", "bfloat16", 0.99, None, onnx=False, kernel=True, max_metric_drop=0.5,
              note="compiled backend on a GPU"),
    Precision("int8", None, 0.99, None, onnx=True, kernel=False, max_metric_drop=1.0,
              note="onnxruntime CPU, static QDQ"),
)}
ONNX_PRECISIONS = tuple(n for n, p in PRECISIONS.items() if p.onnx)
KERNEL_PRECISIONS = tuple(n for n, p in PRECISIONS.items() if p.kernel)


def precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}") from None


__all__ = ["KERNEL_PRECISIONS", "ONNX_PRECISIONS", "PRECISIONS", "Precision", "precision"]
