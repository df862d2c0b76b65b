"""Wrap an exported graph so it takes raw digital numbers and returns class maps.

The served "DN" model does what every client otherwise repeats: ``(dn + dn_offset) * scale +
offset`` in float32 (the same operations, in the same order, as the scene reader, so the model
sees bit-identical input), pixels where any band of any date equals the profile's nodata zeroed,
then the argmax and the from-to change codes of ``stsun predict``'s map (nodata 255, or 65535 when
the codes need 16 bits). ``logits`` stays as a second output for callers that blend tiles.
A uint16 request is half the float32 one, and the uint8 maps a twenty-fourth of the logits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stsun.classmaps import map_layout
from stsun.errors import BuildError
from stsun.graph_io import CLASSES_OUTPUT_NAME, DN_INPUT_NAME, INPUT_NAME, OUTPUT_NAME
from stsun.profiles import Profile

from .onnx_export import META_PREFIX, save_onnx, set_metadata

PREFIX = "stsun_io/"


class _Nodes:
    """Appends nodes and constants with prefixed, unique names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph, self.count = graph, 0

    def const(self, value: np.ndarray) -> str:
        self.count += 1
        name = f"{PREFIX}c{self.count}"
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def __call__(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        self.count += 1
        out = output or f"{PREFIX}{op.lower()}{self.count}"
        self.graph.node.append(helper.make_node(op, inputs, [out], name=f"{PREFIX}{op}{self.count}", **attrs))
        return out


def add_raw_io(src: str | Path, dst: str | Path, profile: Profile, dn_offset: float | None = None) -> Path:
    """Write ``dst``: ``src`` (float input ``x``, output ``logits``) with input ``dn`` (raw
    digital numbers) and outputs ``classes`` and ``logits``."""
    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:  # ReduceMax takes its axes as an input from opset 18 on
        raise BuildError(f"{src} has opset {opset}; the DN graph needs 18 or later (re-export it)")
    g = model.graph
    (old_input,) = [i for i in g.input if i.name == INPUT_NAME]
    batch_dim = old_input.type.tensor_type.shape.dim[0]
    inner_x = PREFIX + INPUT_NAME
    for node in g.node:
        node.input[:] = [inner_x if i == INPUT_NAME else i for i in node.input]
    add = _Nodes(g)  # appended after the model's nodes: save_onnx sorts them into place
    s = profile.scaling
    dn_type = np.dtype(s.dtype)
    offset = s.dn_offset if dn_offset is None else dn_offset
    x = add("Cast", [DN_INPUT_NAME], to=TensorProto.FLOAT)
    if offset:
        x = add("Add", [x, add.const(np.float32(offset))])
    x = add("Mul", [x, add.const(np.float32(s.scale))])
    if s.offset:
        x = add("Add", [x, add.const(np.float32(s.offset))])
    invalid = None
    if profile.nodata is not None:
        eq = add("Equal", [DN_INPUT_NAME, add.const(np.array(profile.nodata).astype(dn_type))])
        # any date, any band: ReduceMax over (T, C) of the 0/1 mask, kept as (B, 1, 1, H, W)
        hit = add("ReduceMax", [add("Cast", [eq], to=TensorProto.UINT8), add.const(np.array([1, 2], np.int64))],
                  keepdims=1)
        invalid = add("Cast", [hit], to=TensorProto.BOOL)
        x = add("Where", [invalid, add.const(np.float32(0.0)), x])
    add("Identity", [x], inner_x)

    logits = OUTPUT_NAME
    if profile.c_out == 1:  # one channel: logit > 0, as stsun.classmaps.predicted_classes
        first = add("Squeeze", [logits, add.const(np.array([2], np.int64))])
        cls = add("Cast", [add("Greater", [first, add.const(np.float32(0.0))])], to=TensorProto.INT64)
    else:
        cls = add("ArgMax", [logits], axis=2, keepdims=0, select_last_index=0)
    bands = cls
    if profile.task == "scd":
        t = profile.t_out

        def dates(start: int, end: int) -> str:
            return add("Slice", [cls, add.const(np.array([start], np.int64)), add.const(np.array([end], np.int64)),
                                 add.const(np.array([1], np.int64))])

        before, after = dates(0, t - 1), dates(1, t)
        code = add("Add", [add("Add", [add("Mul", [before, add.const(np.int64(profile.c_out))]),
                                       add.const(np.int64(1))]), after])
        change = add("Where", [add("Equal", [before, after]), add.const(np.int64(0)), code])
        bands = add("Concat", [cls, change], axis=1)
    n_bands, dtype, nodata = map_layout(profile.task, profile.t_out, profile.c_out)
    classes_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if invalid is not None:
        mask = add("Squeeze", [invalid, add.const(np.array([2], np.int64))])  # (B, 1, H, W)
        bands = add("Where", [mask, add.const(np.int64(nodata)), bands])
    add("Cast", [bands], CLASSES_OUTPUT_NAME, to=classes_type)

    g.input.remove(old_input)
    shape = [batch_dim.dim_param or batch_dim.dim_value, *profile.input_shape]
    g.input.insert(0, helper.make_tensor_value_info(DN_INPUT_NAME, helper.np_dtype_to_tensor_dtype(dn_type), shape))
    g.output.insert(0, helper.make_tensor_value_info(CLASSES_OUTPUT_NAME, classes_type,
                                                     [shape[0], n_bands, profile.tile_size, profile.tile_size]))
    meta = {p.key: p.value for p in model.metadata_props}
    meta[META_PREFIX + "io"] = f"{DN_INPUT_NAME} {s.dtype} -> {CLASSES_OUTPUT_NAME} {dtype}, {OUTPUT_NAME} float32"
    set_metadata(model, meta)
    return save_onnx(model, Path(dst), full_check=True)
