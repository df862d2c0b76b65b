"""What a client may send to ``/infer``, read strictly, and the request Triton gets in its place.

The guard and Triton must read the same request. Python's ``json`` and Triton's parser disagree on
duplicate keys (one keeps the last, the other the first: a shape checked here was not the shape
Triton allocated for), on ``NaN`` tokens, on deep nesting, and Triton answers 500 (or aborts) for
element types or sizes it did not expect. So the guard parses the request once, refuses anything
outside the KServe v2 fields this runtime serves with a 400 and the reason, and forwards a request
it wrote itself: its own JSON header and every input tensor as binary data. Triton never parses a
client's JSON.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from stsun.errors import ServerError

DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII only: "²".isdigit() is true, int("²") raises
REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
OUTPUT_KEYS = {"name", "parameters"}
# request parameters with a meaning here: the queue-timeout override, priority, binary outputs
REQUEST_PARAMETERS = {"timeout": int, "priority": int, "binary_data_output": bool}
JSON_TYPES = {"FP": (int, float), "INT": (int,), "UINT": (int,), "BOOL": (bool,)}
SERVED_TYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                "FP64")  # fixed-size types numpy holds; no BYTES (length-prefixed) or BF16
INT64_MAX = 2**63 - 1  # Triton parses integer parameters into 64 bits


def tensor_bytes(datatype: str, shape) -> int:
    """Bytes of a tensor of a fixed-size protocol datatype."""
    return math.prod(shape) * np.dtype(triton_to_np_dtype(datatype)).itemsize


class Refused(ValueError):
    """A request the guard answers itself with 400 and this message."""


@dataclass(frozen=True)
class ModelLimits:
    max_batch: int
    inputs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (datatype, dims without batch)
    outputs: frozenset[str]

    @classmethod
    def from_config(cls, config: dict) -> "ModelLimits":
        # a configuration's TYPE_FP32 is the protocol's FP32 (TYPE_STRING is BYTES)
        inputs = {i["name"]: (i["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES"),
                              tuple(int(d) for d in i["dims"])) for i in config["input"]}
        if bad := sorted(f"{n} ({t})" for n, (t, _) in inputs.items() if t not in SERVED_TYPES):
            raise ServerError(f"model '{config.get('name')}' has inputs the guard cannot check: {', '.join(bad)}")
        return cls(int(config.get("max_batch_size", 0)), inputs, frozenset(o["name"] for o in config["output"]))

    def max_binary_bytes(self) -> int:
        return sum(tensor_bytes(dt, (max(self.max_batch, 1), *dims)) for dt, dims in self.inputs.values())

    def shape_problem(self, model: str, inp: dict) -> str | None:
        """Why this input's name, datatype or shape is refused, or None."""
        name = inp.get("name")
        if not isinstance(name, str) or name not in self.inputs:
            return f"model '{model}' has no input {name!r}; its inputs are {sorted(self.inputs)}"
        dtype, dims = self.inputs[name]
        if inp.get("datatype") != dtype:
            return f"input '{name}' must be {dtype}, got {inp.get('datatype')!r}"
        shape = inp.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            return f"input '{name}' needs a shape of integers, got {shape!r}"
        batched = self.max_batch > 0
        if batched and (len(shape) != len(dims) + 1 or not 1 <= shape[0] <= self.max_batch):
            return f"input '{name}' must have shape [1..{self.max_batch}, {', '.join(map(str, dims))}], got {shape}"
        if tuple(shape[1:] if batched else shape) != dims:
            return f"input '{name}' must have dims {list(dims)} after the batch, got {shape}"
        return None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise Refused(f"the request JSON has the key {key!r} twice in one object")
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise Refused(f"the request JSON contains {name}, which is not JSON")


def parse_json(text: bytes) -> object:
    """Strict JSON: no duplicate keys, no NaN/Infinity tokens, nesting bounded by the parser's
    recursion limit."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise Refused("the request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        if isinstance(err, Refused):
            raise
        raise Refused(f"the request header is not valid JSON ({err})") from None


def _check_keys(what: str, obj: object, allowed: set[str]) -> dict:
    if not isinstance(obj, dict):
        raise Refused(f"{what} must be a JSON object")
    if extra := sorted(set(obj) - allowed):
        raise Refused(f"{what} has fields this server does not accept: {extra}; allowed: {sorted(allowed)}")
    return obj


def _parameters(what: str, params: object, allowed: dict[str, type]) -> dict:
    _check_keys(f"{what} 'parameters'", params, set(allowed))
    for key, value in params.items():
        kind = allowed[key]
        # bool is an int to Python, not to the protocol
        if type(value) is not kind or (kind is int and not 0 <= value <= INT64_MAX):
            raise Refused(f"parameter {key!r} of {what} must be a "
                          f"{'non-negative 64-bit integer' if kind is int else 'boolean'}, "
                          f"got {value!r}")
    return params


def tensor_from_json(name: str, data: object, datatype: str, shape: list[int]) -> bytes:
    """The raw bytes of a JSON ``data`` array (flat or nested, row-major), every element of the
    JSON type the datatype needs and, for integers, within its range."""
    if not isinstance(data, list):
        raise Refused(f"input '{name}' data must be a JSON array")
    try:
        values = np.array(data, dtype=object).ravel()  # nested lists of equal lengths flatten here
    except ValueError as err:  # beyond numpy's 32 dimensions
        raise Refused(f"input '{name}' data is not an array numpy can read ({err})") from None
    want = math.prod(shape)
    if values.size != want:
        raise Refused(f"input '{name}' has {values.size} values where its shape {shape} needs {want}")
    allowed = next(t for prefix, t in JSON_TYPES.items() if datatype.startswith(prefix))
    if bad := set(map(type, values.tolist())) - set(allowed):
        raise Refused(f"input '{name}' ({datatype}) data holds {', '.join(sorted(t.__name__ for t in bad))} "
                      f"values; it takes only {' or '.join(t.__name__ for t in allowed)}")
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind in "iu":
        try:
            ints = values.astype(np.int64)
        except OverflowError:
            raise Refused(f"input '{name}' ({datatype}) has an integer beyond 64 bits") from None
        info = np.iinfo(dtype)
        if ints.size and (ints.min() < info.min or ints.max() > info.max):
            raise Refused(f"input '{name}' ({datatype}) values must lie in [{info.min}, {info.max}]")
        return ints.astype(dtype).tobytes()
    try:
        return values.astype(dtype).tobytes()
    except OverflowError:  # an integer too large for any float
        raise Refused(f"input '{name}' ({datatype}) has a number beyond the float range") from None


def request_id(value: object) -> str:
    """A request id both sides read alike: a string of encodable text without NUL (Triton's C
    strings end there)."""
    if not isinstance(value, str) or "\0" in value:
        raise Refused("the request 'id' must be a string without NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        raise Refused("the request 'id' is not valid Unicode text") from None
    return value


def rewrite(model: str, limits: ModelLimits, body: bytes, header_length: str | None) -> tuple[bytes, int]:  # noqa: C901 -- every check in reading order, so a reviewer sees them all
    """The request to forward (a JSON header of ours, then every input as binary data) and its
    header's length; raises ``Refused`` with the reason for anything else."""
    if header_length is None:
        n = len(body)
        if not n:
            raise Refused("the request has no body")
    elif not DIGITS.fullmatch(header_length) or not 0 < int(header_length) <= len(body):
        raise Refused(f"Inference-Header-Content-Length {header_length!r} does not fit the {len(body)}-byte body")
    else:
        n = int(header_length)
    request = _check_keys("the request", parse_json(body[:n]), REQUEST_KEYS)
    if "id" in request:
        request_id(request["id"])
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Refused("the request has no 'inputs' list")
    if len(inputs) != len(limits.inputs):
        raise Refused(f"model '{model}' takes {len(limits.inputs)} input(s) {sorted(limits.inputs)}, got {len(inputs)}")
    binary, offset, forwarded = [], n, []
    for inp in inputs:
        _check_keys("each input", inp, INPUT_KEYS)
        if problem := limits.shape_problem(model, inp):
            raise Refused(problem)
        name, datatype, shape = inp["name"], inp["datatype"], inp["shape"]
        if name in (f["name"] for f in forwarded):
            raise Refused(f"input '{name}' is given twice")
        params = _parameters(f"input '{name}'", inp.get("parameters", {}), {"binary_data_size": int})
        size = tensor_bytes(datatype, shape)
        if "binary_data_size" in params:
            if "data" in inp:
                raise Refused(f"input '{name}' has both 'data' and 'binary_data_size'")
            if params["binary_data_size"] != size:
                raise Refused(f"input '{name}' declares {params['binary_data_size']} bytes of binary data; "
                              f"{datatype} of shape {shape} is {size} bytes")
            binary.append(body[offset:offset + size])
            offset += size
        elif "data" in inp:
            binary.append(tensor_from_json(name, inp["data"], datatype, shape))
        else:
            raise Refused(f"input '{name}' has neither 'data' nor 'binary_data_size'")
        forwarded.append({"name": name, "datatype": datatype, "shape": shape,
                          "parameters": {"binary_data_size": size}})
    if offset != len(body):
        raise Refused(f"the body has {len(body) - n} bytes after the header where the inputs' binary data "
                      f"takes {offset - n}")
    header = {"inputs": forwarded}
    if "id" in request:
        header["id"] = request["id"]
    if "parameters" in request:
        header["parameters"] = _parameters("the request", request["parameters"], REQUEST_PARAMETERS)
    if "outputs" in request:
        outputs = request["outputs"]
        if not isinstance(outputs, list):
            raise Refused("the request 'outputs' must be a list")
        for out in outputs:
            _check_keys("each output", out, OUTPUT_KEYS)
            if not isinstance(out.get("name"), str) or out["name"] not in limits.outputs:
                raise Refused(f"model '{model}' has no output {out.get('name')!r}; its outputs are "
                              f"{sorted(limits.outputs)}")
            _parameters(f"output '{out['name']}'", out.get("parameters", {}), {"binary_data": bool})
        header["outputs"] = outputs
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b"".join(binary), len(text)
