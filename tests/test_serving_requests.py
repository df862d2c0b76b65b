"""The guard's reading of inference requests, without a server: what it refuses and why, and the
request it forwards in place of the client's."""
import gzip
import json
import zlib

import numpy as np
import pytest

from stsun.runtime.serving.guard import TooLarge, inflate
from stsun.runtime.serving.requests import ModelLimits, Refused, parse_json, rewrite

LIMITS = ModelLimits(4, {"x": ("FP32", (2, 3))}, frozenset({"logits"}))
DN = ModelLimits(4, {"dn": ("UINT16", (3,))}, frozenset({"classes", "logits"}))


def forwarded(body: bytes, n: int, limits=LIMITS):
    """The header and input arrays of a request the guard wrote."""
    header = json.loads(body[:n])
    arrays, offset = [], n
    for inp in header["inputs"]:
        dtype = np.float32 if inp["datatype"] == "FP32" else np.uint16
        size = inp["parameters"]["binary_data_size"]
        arrays.append(np.frombuffer(body[offset:offset + size], dtype).reshape(inp["shape"]))
        offset += size
    assert offset == len(body)
    return header, arrays


def json_request(data, shape=(1, 2, 3), **extra):
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(shape), "data": data}],
                       **extra}).encode()


def test_json_data_is_forwarded_as_binary_with_a_header_of_ours():
    values = [0.5, 1, -2.25, 3, 4e-3, 0]
    body, n = rewrite("m", LIMITS, json_request(values, id="r1", outputs=[{"name": "logits"}],
                                                 parameters={"timeout": 5}), None)
    header, (x,) = forwarded(body, n)
    assert header == {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3],
                                  "parameters": {"binary_data_size": 24}}],
                      "id": "r1", "parameters": {"timeout": 5}, "outputs": [{"name": "logits"}]}
    np.testing.assert_array_equal(x, np.array(values, np.float32).reshape(1, 2, 3))
    # nested row-major data reads the same
    nested = rewrite("m", LIMITS, json_request([[[0.5, 1, -2.25], [3, 4e-3, 0]]]), None)
    np.testing.assert_array_equal(forwarded(*nested)[1][0], x)


def test_binary_requests_pass_their_bytes_and_declared_sizes_are_checked():
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2, 3],
                                   "parameters": {"binary_data_size": 48}}]}).encode()
    body, n = rewrite("m", LIMITS, head + x.tobytes(), str(len(head)))
    np.testing.assert_array_equal(forwarded(body, n)[1][0], x)
    with pytest.raises(Refused, match="bytes after the header"):
        rewrite("m", LIMITS, head + x.tobytes() + b"\0", str(len(head)))
    for size in (-4, 47, True, "48"):
        bad = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2, 3],
                                      "parameters": {"binary_data_size": size}}]}).encode()
        with pytest.raises(Refused, match="binary_data_size|binary data"):
            rewrite("m", LIMITS, bad + x.tobytes(), str(len(bad)))


@pytest.mark.parametrize("length", ["²", "١٢", "-5", "+5", " 5", "5 ", "0", "1e3", "9" * 13])
def test_header_length_must_be_ascii_digits_within_the_body(length):
    with pytest.raises(Refused, match="Inference-Header-Content-Length"):
        rewrite("m", LIMITS, b'{"inputs": []}' + b"\0" * 100, length)


def test_duplicate_keys_nan_tokens_and_deep_nesting_are_refused():
    dup = (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[100000,2,3],"shape":[1,2,3],'
           b'"data":[0,0,0,0,0,0]}]}')
    with pytest.raises(Refused, match="'shape' twice"):
        rewrite("m", LIMITS, dup, None)
    with pytest.raises(Refused, match="NaN, which is not JSON"):
        rewrite("m", LIMITS, json_request([0, 0, 0, 0, 0, 0]).replace(b"[0, 0", b"[NaN, 0"), None)
    deep = b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    with pytest.raises(Refused, match="nested too deeply"):
        rewrite("m", LIMITS, deep, None)
    with pytest.raises(Refused, match="not valid JSON"):
        parse_json(b'{"inputs": [')


@pytest.mark.parametrize("bad, kind", [("a", "str"), (None, "NoneType"), (True, "bool"), ({"v": 1}, "dict"),
                                       ([1, 2], "list")])
def test_data_elements_must_have_the_datatype_s_json_type(bad, kind):
    with pytest.raises(Refused, match=f"holds {kind} values; it takes only int or float"):
        rewrite("m", LIMITS, json_request([0, 1, 2, 3, 4, bad]), None)


def test_data_count_integer_range_and_floats_for_integers():
    with pytest.raises(Refused, match="has 5 values where its shape"):
        rewrite("m", LIMITS, json_request([0, 1, 2, 3, 4]), None)
    dn = {"inputs": [{"name": "dn", "datatype": "UINT16", "shape": [1, 3], "data": [0, 65535, 7]}]}
    body, n = rewrite("m", DN, json.dumps(dn).encode(), None)
    np.testing.assert_array_equal(forwarded(body, n)[1][0], [[0, 65535, 7]])
    for data, reason in (([0, 65536, 7], r"within|lie in \[0, 65535\]"), ([0, -1, 7], r"lie in \[0, 65535\]"),
                         ([0, 1.5, 7], "holds float values"), ([0, 2**70, 7], "beyond 64 bits")):
        dn["inputs"][0]["data"] = data
        with pytest.raises(Refused, match=reason):
            rewrite("m", DN, json.dumps(dn).encode(), None)
    with pytest.raises(Refused, match="beyond the float range"):
        rewrite("m", LIMITS, json_request([0, 1, 2, 3, 4, 10**400]), None)


@pytest.mark.parametrize("request_json, reason", [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6}], "extra": 1}, "'extra'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6,
                  "parameters": {"shared_memory_region": "python_backend_shm"}}]}, "shared_memory_region"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6}],
      "outputs": [{"name": "logits", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 9}}]},
     "shared_memory"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6}],
      "outputs": [{"name": "secret"}]}, "no output 'secret'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6}],
      "parameters": {"sequence_id": 1}}, "sequence_id"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6}],
      "parameters": {"timeout": -1}}, "non-negative"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6}] * 2}, "takes 1 input"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3]}]}, "neither 'data' nor"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [5, 2, 3], "data": [0] * 30}]}, r"\[1..4, 2, 3\]"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [True, 2, 3], "data": [0] * 6}]}, "shape of integers"),
    ({"inputs": "x"}, "no 'inputs' list"),
    ([1, 2], "must be a JSON object"),
])
def test_fields_outside_what_this_server_serves_are_refused(request_json, reason):
    with pytest.raises(Refused, match=reason):
        rewrite("m", LIMITS, json.dumps(request_json).encode(), None)


def test_inflate_counts_the_limit_on_inflated_bytes():
    text = json_request([0.0] * 6)
    assert inflate(gzip.compress(text), "gzip", 1000) == text
    assert inflate(zlib.compress(text), "deflate", 1000) == text
    bomb = gzip.compress(b"0" * 10**7)
    assert len(bomb) < 20_000
    with pytest.raises(TooLarge, match="inflates to more than the limit of 10000 bytes"):
        inflate(bomb, "gzip", 10_000)
    with pytest.raises(Refused, match="cut off"):
        inflate(gzip.compress(text)[:-12], "gzip", 1000)
    with pytest.raises(Refused, match="cannot be decoded"):
        inflate(b"not gzip at all", "gzip", 1000)


def test_the_probe_is_the_model_s_own_and_clients_cannot_send_it():
    import ast

    from stsun.runtime.serving.repository import PYTHON_MODEL
    from stsun.runtime.serving.supervisor import PROBE, probe_request

    tree = ast.parse(PYTHON_MODEL.read_text())
    (value,) = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "PROBE"]
    assert value == PROBE  # the model file is self-contained: the same word written twice
    body, n = probe_request(DN)
    header, (dn,) = forwarded(body, n, DN)
    assert header["parameters"] == {PROBE: True} and dn.shape == (1, 3) and not dn.any()
    with pytest.raises(Refused, match=PROBE):  # over HTTP only the supervisor probes
        rewrite("m", DN, body, str(n))


@pytest.mark.parametrize("request_id, reason", [("\ud800", "not valid Unicode"), ("a\0b", "without NUL"),
                                                 (7, "must be a string")])
def test_request_ids_both_sides_read_alike(request_id, reason):
    body = json.dumps({"id": request_id, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 3],
                                                     "data": [0] * 6}]}).encode()
    with pytest.raises(Refused, match=reason):
        rewrite("m", LIMITS, body, None)


@pytest.mark.parametrize("name", [["x"], {"x": 1}, 7])
def test_names_that_are_not_strings_are_refused(name):
    with pytest.raises(Refused, match="has no input"):
        rewrite("m", LIMITS, json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": [1, 2, 3],
                                                      "data": [0] * 6}]}).encode(), None)
    with pytest.raises(Refused, match="has no output"):
        rewrite("m", LIMITS, json_request([0] * 6, outputs=[{"name": name}]), None)


def test_integer_parameters_fit_64_bits_and_unservable_types_are_refused_at_start():
    from stsun.errors import ServerError

    for value in (2**63, 2**64):
        with pytest.raises(Refused, match="64-bit"):
            rewrite("m", LIMITS, json_request([0] * 6, parameters={"timeout": value}), None)
    assert rewrite("m", LIMITS, json_request([0] * 6, parameters={"priority": 2**63 - 1}), None)
    for dtype in ("TYPE_STRING", "TYPE_BF16"):
        with pytest.raises(ServerError, match="cannot check"):
            ModelLimits.from_config({"name": "t", "input": [{"name": "s", "data_type": dtype, "dims": [1]}],
                                     "output": []})
