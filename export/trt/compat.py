"""Check an ONNX graph for TensorRT compatibility without TensorRT (runs on CPU).

Checks: opset within the parser's range, every op in TensorRT's supported list (custom-domain
ops must name a plugin), only the batch axis dynamic on inputs and outputs, tensor types
TensorRT handles, and Q/DQ zero points equal to zero (TensorRT's explicit-quantization rule).
"""
from __future__ import annotations

import collections
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

OPS_TABLE = Path(__file__).with_name("tensorrt_ops.toml")


@dataclass
class CompatReport:
    compatible: bool
    tensorrt: str
    opset: int
    op_counts: dict[str, int]
    problems: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_compat(model: onnx.ModelProto | str | Path, plugin_ops: tuple[str, ...] = ()) -> CompatReport:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    table = tomllib.loads(OPS_TABLE.read_text())
    supported = set(table["supported"]) | set(plugin_ops)
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not table["min_opset"] <= opset <= table["max_opset"]:
        problems.append(f"opset {opset} outside TensorRT {table['tensorrt']}'s range "
                        f"{table['min_opset']}..{table['max_opset']}")
    counts = collections.Counter(n.op_type for n in model.graph.node)
    plugins = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    for node_op in sorted(counts):
        if node_op not in supported:
            where = "custom-domain op without a registered plugin" if node_op in plugins else "not supported"
            problems.append(f"op {node_op} ({counts[node_op]}x): {where}")
    for io in list(model.graph.input) + list(model.graph.output):
        dims = _dims(io)
        dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int) or d <= 0]
        if dynamic != [0]:
            problems.append(f"{io.name} {dims}: only axis 0 (batch) may be dynamic, dynamic axes are {dynamic}")
    names = set(table["dtypes"])
    typed = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    for vi in typed:
        dt = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)
        if dt not in names:
            problems.append(f"tensor {vi.name} has type {dt}, which TensorRT does not support")
    inits = {i.name: i for i in model.graph.initializer}
    for init in inits.values():
        dt = onnx.TensorProto.DataType.Name(init.data_type)
        if dt not in names:
            problems.append(f"initializer {init.name} has type {dt}, which TensorRT does not support")
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in inits:
            if np.any(numpy_helper.to_array(inits[node.input[2]]) != 0):
                problems.append(f"{node.op_type} {node.name}: non-zero zero point "
                                "(TensorRT requires symmetric quantization)")
    return CompatReport(not problems, table["tensorrt"], opset, dict(counts), problems[:50], plugins)
