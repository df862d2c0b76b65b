"""ONNX export of a folded STSUN: fp32, fp16 and int8 variants with provenance metadata."""
from __future__ import annotations

import collections
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx

from stsun.atomic import atomic_write
from stsun.graph_io import INPUT_NAME, OUTPUT_NAME
from stsun.profiles import Profile

if TYPE_CHECKING:  # torch only where a model is traced: the rest edits ONNX files (the serving repository)
    from stsun.model.folding import FoldedSTSUN

OPSET = 18
META_PREFIX = "stsun."
# Kept in fp32 in the fp16 model: their reductions lose too much in half precision.
# Quantised in the int8 model: the transformer's weight MatMuls. Softmax, normalisations and
# convolutions stay fp32: on the tiny demo model quantising the convs too dropped argmax
# agreement from 0.991 to 0.990 for no speed gain on CPU.
INT8_OPS = ["MatMul", "Gemm"]
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "BatchNormalization"]


def model_metadata(profile: Profile, extra: dict) -> dict[str, str]:
    """The metadata_props every artifact carries; values are strings (JSON where structured)."""
    meta = {
        "profile": profile.model_dump_json(),
        "profile_name": profile.name,
        "task": profile.task,
        "band_names": json.dumps(list(profile.band_names)),
        "wavelengths_nm": json.dumps(list(profile.wavelengths_nm)),
        "classes": json.dumps(list(profile.classes)),
        "input_scaling": profile.scaling.model_dump_json(),
        "input_shape": json.dumps(["batch", *profile.input_shape]),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()},
    }
    return {META_PREFIX + k: v for k, v in meta.items()}


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    """The stsun.* metadata_props of an ONNX file, without the prefix."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Replace the model's metadata_props with ``meta`` (keys as given)."""
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)


def _unshare_fp32_initializers(model: onnx.ModelProto) -> None:
    """Give every kept-fp32 node its own copy of a shared initializer. The exporter merges
    identical initializers, and the fp16 converter then inserts one identically named Cast
    per reader, which ORT rejects as a duplicate definition."""
    inits = {i.name: i for i in model.graph.initializer}
    readers: collections.Counter[str] = collections.Counter(
        name for n in model.graph.node for name in n.input if name in inits)
    copies = 0
    for node in model.graph.node:
        if node.op_type not in FP16_KEEP_FP32:
            continue
        for idx, name in enumerate(node.input):
            if name in inits and readers[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copies += 1
                copy.name = f"{name}__fp32_copy{copies}"
                model.graph.initializer.append(copy)
                node.input[idx] = copy.name
                readers[name] -= 1


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Producers before consumers, as ONNX requires and TensorRT's parser enforces: the fp16
    converter appends the input casts it inserts at the end of the node list (onnxruntime
    tolerates that, the ONNX checker and TensorRT do not). Stable for nodes already in order."""
    available = {v.name for v in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, remaining = [], list(graph.node)
    while remaining:
        rest = []
        for node in remaining:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(remaining):
            raise ValueError(f"ONNX graph has a cycle or a dangling input at node {rest[0].name}")
        remaining = rest
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def save_onnx(model: onnx.ModelProto, path: Path, full_check: bool = False) -> Path:
    """Write ``model`` atomically, its nodes in topological order and without source paths (the
    same build from any checkout is the same file), checked by the ONNX checker (``full_check``:
    with strict shape inference too)."""
    _sort_topologically(model.graph)
    for node in model.graph.node:  # the exporter's stack traces name the building machine's paths
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    # Single file while it fits protobuf's 2 GB limit; larger models keep external data.
    external = model.ByteSize() > 1_800_000_000

    def write(tmp: Path) -> None:
        onnx.save_model(model, str(tmp), save_as_external_data=external, location=path.name + ".data")
        onnx.checker.check_model(str(tmp), full_check=full_check)  # by path: also works for external data

    atomic_write(path, write)
    return path


def export_fp32(folded: FoldedSTSUN, profile: Profile, path: Path, meta: dict[str, str],
                attention_plugin: bool = False) -> Path:
    """Trace the folded model (dynamic batch, static tile) to ONNX at opset ``OPSET``.

    ``attention_plugin`` emits each LGWA attention as one ``stsun::WindowAttention`` node (for a
    TensorRT plugin running the fused kernel) instead of pad/partition/MatMul/Softmax/MatMul."""
    import torch

    from stsun.model.lgwa import WindowAttention

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # silence unrelated torchvision notes
    example = torch.rand(2, *profile.input_shape)
    batch = torch.export.Dim("batch", min=1, max=1024)
    attentions = [m for m in folded.modules() if isinstance(m, WindowAttention)]
    for m in attentions:
        m.emit_plugin = attention_plugin
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            raw = Path(tmp) / "raw.onnx"
            torch.onnx.export(folded, (example,), str(raw), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=OPSET, dynamo=True, dynamic_shapes={"x": {0: batch}}, verbose=False)
            model = onnx.load(str(raw))
    finally:
        for m in attentions:
            m.emit_plugin = False
    set_metadata(model, {**meta, META_PREFIX + "precision": "fp32",
                          META_PREFIX + "attention_plugin": str(attention_plugin).lower()})
    return save_onnx(model, path)


def convert_fp16(src: Path, dst: Path, calibration: Callable[[], np.ndarray] | None = None) -> Path:
    """fp16 weights and activations inside, fp32 inputs/outputs and fp32 normalisations."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    meta = {p.key: p.value for p in model.metadata_props}
    _unshare_fp32_initializers(model)
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    # The converter leaves some value_info typed float where the tensor is now fp16, which strict
    # shape inference rejects; the types are implied by the graph, so drop the stale hints.
    del half.graph.value_info[:]
    set_metadata(half, {**meta, META_PREFIX + "precision": "fp16"})
    return save_onnx(half, dst)


def sensitive_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes kept in fp32 by int8 quantisation: MatMuls of two activations (attention QK^T and
    PV, the TUM maps over dates), and the first and last convolutions (raw reflectance in,
    logits out) should INT8_OPS ever include convolutions. Quantising the activation MatMuls
    cost 1.5 points of argmax agreement on the demo model."""
    consts = {i.name for i in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    act_act = [n.name for n in model.graph.node
               if n.op_type == "MatMul" and not any(i in consts for i in n.input)]
    convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    return act_act + convs[:1] + convs[-1:]


def quantize_int8(src: Path, dst: Path, calibration: Callable[[], np.ndarray], batch: int = 2,
                  method: str = "MinMax") -> Path:
    """Static int8 quantisation for onnxruntime on CPU, calibrated on ``calibration`` tiles with
    onnxruntime's calibration ``method`` (one of CALIBRATION_METHODS) for the activation ranges:
    QDQ, per-channel symmetric int8 weights, uint8 activations (the fast U8S8 path of x86
    kernels; symmetric int8 activations measured 0.985 argmax agreement against 0.991), with
    ``sensitive_nodes`` left in fp32. Its non-zero activation zero points are outside
    TensorRT's explicit-quantization rules, which the compatibility check reports."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tiles = calibration()

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([tiles[i:i + batch] for i in range(0, len(tiles), batch)])

        def get_next(self) -> dict | None:
            nxt = next(self.batches, None)
            return None if nxt is None else {INPUT_NAME: nxt}

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=INT8_OPS, nodes_to_exclude=sensitive_nodes(onnx.load(str(pre))),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[method], extra_options={"WeightSymmetric": True})
        model = onnx.load(str(out))
    set_metadata(model, {**meta, META_PREFIX + "precision": "int8", META_PREFIX + "int8_calibration": method})
    return save_onnx(model, dst)


# onnxruntime's activation-range calibrators: the extremes seen, the range minimising the KL
# divergence of the quantised histogram, and the 99.999th percentile of |x|.
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


# How each precision's ONNX is derived from the fp32 export: (fp32 path, destination, a function
# returning calibration tiles) -> destination. One entry per ONNX precision of stsun.precision
# besides fp32.
DERIVED_ONNX: dict[str, Callable[[Path, Path, Callable[[], np.ndarray]], Path]] = {
    "fp16": convert_fp16,
    "int8": quantize_int8,
}
