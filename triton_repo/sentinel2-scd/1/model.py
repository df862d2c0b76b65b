"""Triton Inference Server python-backend model for an STSUN build (copied as model.py).

Self-contained (numpy + onnxruntime) so it runs in NVIDIA's container as well as under the
pip-installed server. Each execution validates every request on its own (a bad request gets an
INVALID_ARG error, which clients see as HTTP 400 / gRPC INVALID_ARGUMENT; the others still run),
drops requests their client cancelled, answers the supervisor's health probes at once (no
outputs), then runs all valid requests as ONE batch, computing
only the outputs some request asked for. Tensor names come from the model configuration the
repository writer generates: float input ``x`` -> ``logits``, or raw ``dn`` -> ``classes`` (+ ``logits``).
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

PROBE = "stsun_probe"  # a request parameter: `stsun serve` asks whether this process answers


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.float_input = config["input"][0]["data_type"] == "TYPE_FP32"
        self.output_names = [o["name"] for o in config["output"]]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.profile = json.loads(meta["stsun.profile"])
        self.valid_min = float(params.get("valid_min", "-1.0"))
        self.valid_max = float(params.get("valid_max", "3.0"))
        s = self.profile["scaling"]
        self.expectation = (f"profile '{self.profile['name']}' expects scaled values "
                            f"(raw * {s['scale']:g} + {s['offset']:g}) within [{self.valid_min:g}, {self.valid_max:g}]")

    def check(self, x):
        if not self.float_input:  # raw digital numbers: every value of the dtype is a reading
            return None
        if not np.isfinite(x).all():
            return f"input contains NaN or infinite values; mask nodata before sending ({self.expectation})"
        lo, hi = float(x.min()), float(x.max())
        if lo < self.valid_min or hi > self.valid_max:
            return f"input values span [{lo:g}, {hi:g}], out of range: {self.expectation}"
        return None

    def execute(self, requests):
        responses = [None] * len(requests)
        good, arrays, wanted = [], [], set()
        for i, request in enumerate(requests):
            if request.is_cancelled():  # its client gave up: do not spend compute on it
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED))
                continue
            if PROBE in json.loads(request.parameters() or "{}"):  # the supervisor's health probe: no compute
                responses[i] = pb_utils.InferenceResponse(output_tensors=[])
                continue
            x = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            problem = self.check(x)
            if problem:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG))
                continue
            good.append(i)
            arrays.append(x)
            wanted.update(requests[i].requested_output_names())
        if arrays:
            names = [n for n in self.output_names if n in wanted]
            outs = self.session.run(names, {self.input_name: np.ascontiguousarray(np.concatenate(arrays))})
            start = 0
            for i, x in zip(good, arrays):
                asked = requests[i].requested_output_names()
                tensors = [pb_utils.Tensor(n, o[start:start + len(x)]) for n, o in zip(names, outs) if n in asked]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += len(x)
        return responses
