"""``triton`` backend: the same Engine interface against a running Triton Inference Server."""
from __future__ import annotations

from concurrent.futures import Future

import numpy as np

from stsun.errors import EngineError
from stsun.graph_io import INPUT_NAME, OUTPUT_NAME
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
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise EngineError("the triton backend needs tritonclient: pip install 'stsun[serve]'") from None
        self._client_mod, self._error = client, InferenceServerException
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

    @classmethod
    def open(cls, build: BuildDir, precision: str = "fp32", **options) -> "TritonEngine":
        return cls(build.profile, build.max_batch, **options)

    @property
    def device(self) -> str:
        return f"triton {self.protocol}://{self.url}"

    def _request(self, x: np.ndarray) -> tuple[list, list]:
        inp = self._client_mod.InferInput(INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return [inp], [self._client_mod.InferRequestedOutput(OUTPUT_NAME)]

    def _run(self, x: np.ndarray) -> np.ndarray:
        inputs, outputs = self._request(x)
        try:
            result = self.client.infer(self.model, inputs, outputs=outputs)
        except self._error as err:
            raise EngineError(f"Triton server rejected the request: {err.message()}") from None
        return result.as_numpy(OUTPUT_NAME)

    def run_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Every batch's requests in flight at once (up to ``in_flight`` per connection), so the
        server's dynamic batcher can merge them."""
        parts = [(i, b) for i, x in enumerate(batches) for b in self.checked_batches(x)]
        futures = []
        for _, b in parts:
            inputs, outputs = self._request(b)
            fut: Future = Future()
            futures.append(fut)
            if self.protocol == "http":
                request = self.client.async_infer(self.model, inputs, outputs=outputs)
                fut.set_result(request)  # resolved below with get_result()
            else:
                def done(result, error, fut=fut):
                    fut.set_exception(error) if error else fut.set_result(result)
                self.client.async_infer(self.model, inputs, done, outputs=outputs)
        results: list[list[np.ndarray]] = [[] for _ in batches]
        try:
            for (i, _), fut in zip(parts, futures):
                r = fut.result()
                results[i].append((r.get_result() if self.protocol == "http" else r).as_numpy(OUTPUT_NAME))
        except self._error as err:
            raise EngineError(f"Triton server rejected the request: {err.message()}") from None
        return [r[0] if len(r) == 1 else np.concatenate(r) for r in results]
