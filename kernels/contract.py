"""The contract of the ``stsun::WindowAttention`` TensorRT plugin, defined once.

The exporter writes it into each plugin ONNX node (``stsun.model.lgwa``), TensorRT hands it to
the plugin (``stsun.export.trt.plugin``), and the ahead-of-time build specialises the kernel on
it (``stsun.kernels.aot``). Plain data, no triton: the model imports it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

PLUGIN_NAMESPACE, PLUGIN_NAME, PLUGIN_VERSION = "stsun", "WindowAttention", "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"


@dataclass(frozen=True)
class AttentionSpec:
    """One LGWA attention node of an exported model: what its plugin kernel is specialised on.

    The field order up to ``scale`` is the node's attribute order, which TensorRT passes to the
    plugin positionally; ``dtype`` comes from the tensor, not from an attribute."""

    grid_h: int
    grid_w: int
    win_h: int
    win_w: int
    num_heads: int
    head_dim: int
    scale: float
    dtype: str = "fp16"

    @classmethod
    def attribute_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "dtype")

    @classmethod
    def clipped(cls, grid_hw: tuple[int, int], window_hw: tuple[int, int], num_heads: int, head_dim: int,
                dtype: str = "fp16") -> "AttentionSpec":
        """The spec of a layer: a window larger than the grid is clipped to it (same keys)."""
        gh, gw = grid_hw
        return cls(gh, gw, min(window_hw[0], gh), min(window_hw[1], gw), num_heads, head_dim, head_dim ** -0.5, dtype)

    @classmethod
    def from_onnx_attributes(cls, attrs: dict, dtype: str) -> "AttentionSpec":
        # TensorRT passes the scale as float32: round it the same way so specs (and PTX) match
        import numpy as np

        values = {name: attrs[name] for name in cls.attribute_names()}
        return cls(**{**values, "scale": float(np.float32(values["scale"])), "dtype": dtype})

    @property
    def op_name(self) -> str:
        return PLUGIN_ID

    def onnx_attributes(self) -> dict:
        """Node attributes in the plugin's order; ``aot=1`` selects its ahead-of-time kernel, so
        the engine runs without Python."""
        return {**{name: getattr(self, name) for name in self.attribute_names()},
                "plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION, "aot": True}

    @property
    def tag(self) -> str:
        return f"g{self.grid_h}x{self.grid_w}_w{self.win_h}x{self.win_w}_h{self.num_heads}x{self.head_dim}_{self.dtype}"


__all__ = ["AttentionSpec", "PLUGIN_ID", "PLUGIN_NAME", "PLUGIN_NAMESPACE", "PLUGIN_VERSION"]
