"""``triton`` backend: the same Engine interface against a running Triton Inference Server."""
from __future__ import annotations

from concurrent.futures import Future

import numpy as np

from stsun.errors import EngineError
from stsun.graph_io import CLASSES_OUTPUT_NAME, DN_INPUT_NAME, INPUT_NAME, OUTPUT_NAME
from stsun.profiles import Profile

from ..engine import BuildDir, Engine


class TritonEngine(Engine):
    backend = "triton"

    def __init__(self, profile: Profile, max_batch: int, url: str | None = None, protocol: str = "http",
                 model: str | None = None, in_flight: int = 4) -> None:
        super().__init__(profile, max_batch)
        try:
            if protocol == "http":
                import tritonclient.http as client
            elif protocol == "grpc":
                import tritonclient.grpc as client
            else:
                raise EngineError(f"protocol must be http or grpc, got {protocol}")
            from tritonclient.utils import InferenceServerException, np_to_triton_dtype
        except ImportError:
            raise EngineError("the triton backend needs tritonclient: pip install 'stsun[serve]'") from None
        self._client_mod, self._error, self._dtype = client, InferenceServerException, np_to_triton_dtype
        url = url or ("127.0.0.1:8000" if protocol == "http" else "127.0.0.1:8001")
        self.client = (client.InferenceServerClient(url=url, concurrency=in_flight) if protocol == "http"
                       else client.InferenceServerClient(url=url))
        self.model = model or profile.name
        self.url, self.protocol = url, protocol
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception as err:  # connection refused and friends, across both protocols
            raise EngineError(f"no Triton server reachable at {url} ({protocol}): {err}") from None
        if not ready:
            raise EngineError(f"model '{self.model}' is not ready on the Triton server at {url}")
        # the DN model beside this one: <profile>-dn, or <profile>-dn-onnx beside <profile>-onnx
        base, flavour = (self.model[:-5], "-onnx") if self.model.endswith("-onnx") else (self.model, "")
        self.dn_model = f"{base}-dn{flavour}"
        try:
            self.serves_raw = self.client.is_model_ready(self.dn_model)
        except self._error:
            self.serves_raw = False

    @classmethod
    def open(cls, build: BuildDir, precision: str = "fp32", **options) -> "TritonEngine":
        return cls(build.profile, build.max_batch, **options)

    @property
    def device(self) -> str:
        return f"triton {self.protocol}://{self.url}"

    def _request(self, x: np.ndarray, name: str = INPUT_NAME,
                 outputs: tuple[str, ...] = (OUTPUT_NAME,)) -> tuple[list, list]:
        inp = self._client_mod.InferInput(name, list(x.shape), self._dtype(x.dtype))
        inp.set_data_from_numpy(x)
        return [inp], [self._client_mod.InferRequestedOutput(o) for o in outputs]

    def _infer(self, model: str, inputs: list, outputs: list):
        try:
            return self.client.infer(model, inputs, outputs=outputs)
        except self._error as err:
            raise EngineError(f"Triton server rejected the request: {err.message()}") from None

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._infer(self.model, *self._request(x)).as_numpy(OUTPUT_NAME)

    def maps(self, dn: np.ndarray, with_logits: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """As ``Engine.maps``, computed by the server's DN model (``dn_model``): raw digital
        numbers travel (half the bytes of float32) and uint8 maps come back (1/24 of the logits)."""
        p = self.profile
        if not isinstance(dn, np.ndarray) or dn.dtype != np.dtype(p.scaling.dtype):
            return super().maps(dn, with_logits)  # the local check words the error
        wanted = (CLASSES_OUTPUT_NAME, OUTPUT_NAME) if with_logits else (CLASSES_OUTPUT_NAME,)
        parts = [self._infer(self.dn_model, *self._request(b, DN_INPUT_NAME, wanted)) for b in self._split(dn)]
        bands = np.concatenate([r.as_numpy(CLASSES_OUTPUT_NAME) for r in parts])
        return (bands, np.concatenate([r.as_numpy(OUTPUT_NAME) for r in parts])) if with_logits else bands

    def run_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Every batch's requests in flight at once (up to ``in_flight`` per connection), so the
        server's dynamic batcher can merge them."""
        parts = [self.checked_batches(x) for x in batches]
        return self._in_flight(self.model, INPUT_NAME, [q for ps in parts for q in ps], [len(ps) for ps in parts])

    def run_many_raw(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """As ``run_many`` for raw digital numbers, on the DN model: half the request bytes."""
        if not self.serves_raw:
            return super().run_many_raw(batches)
        parts = [self._split(b) for b in batches]
        return self._in_flight(self.dn_model, DN_INPUT_NAME, [q for ps in parts for q in ps], [len(ps) for ps in parts])

    def _split(self, dn: np.ndarray) -> list[np.ndarray]:
        step = self.max_batch or len(dn)
        return [np.ascontiguousarray(dn[i:i + step]) for i in range(0, len(dn), step)]

    def _in_flight(self, model: str, input_name: str, requests: list[np.ndarray],
                   per_batch: list[int]) -> list[np.ndarray]:
        futures = []
        for b in requests:
            inputs, outputs = self._request(b, input_name)
            fut: Future = Future()
            futures.append(fut)
            if self.protocol == "http":
                request = self.client.async_infer(model, inputs, outputs=outputs)
                fut.set_result(request)  # resolved below with get_result()
            else:
                def done(result, error, fut=fut):
                    fut.set_exception(error) if error else fut.set_result(result)
                self.client.async_infer(model, inputs, done, outputs=outputs)
        try:
            logits = [(r.get_result() if self.protocol == "http" else r).as_numpy(OUTPUT_NAME)
                      for r in (f.result() for f in futures)]
        except self._error as err:
            raise EngineError(f"Triton server rejected the request: {err.message()}") from None
        out, start = [], 0
        for n in per_batch:
            out.append(logits[start] if n == 1 else np.concatenate(logits[start:start + n]))
            start += n
        return out
