"""An HTTP front for Triton that bounds every inference request before the server sees it.

Triton 2.51 has no limit on HTTP request size, and for JSON-encoded tensors it allocates what the
declared shape asks for before checking it against the model: a 90-byte request declaring
[100000, 2, 10, 256, 256] aborts the server with ``std::bad_alloc``. (Its gRPC endpoint checks the
batch size first and is not affected.) The guard answers such requests itself with HTTP 400 and a
reason: a body over the size limit (413), an unknown input name, a wrong datatype, a batch outside
1..max_batch_size, dimensions other than the model's. It also labels every inference body upstream
as what it is (binary tensors or JSON): Triton 2.51 segfaults on a binary-tensor request sent as
``application/x-www-form-urlencoded``, which ``curl -d`` and Python's urllib send by default.
Everything else is passed through unchanged.
While draining (shutdown) it refuses new inference requests and reports not-ready with 503.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from dataclasses import dataclass

import numpy as np
from aiohttp import ClientError, ClientSession, ClientTimeout, web
from tritonclient.utils import triton_to_np_dtype

from stsun.errors import ServerError

INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
MODEL_READY = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/ready$")
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "expect"}  # ours to answer


@dataclass(frozen=True)
class ModelLimits:
    max_batch: int
    inputs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (datatype, dims without batch)

    @classmethod
    def from_config(cls, config: dict) -> "ModelLimits":
        # a configuration's TYPE_FP32 is the protocol's FP32 (TYPE_STRING is BYTES)
        return cls(int(config.get("max_batch_size", 0)),
                   {i["name"]: (i["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES"),
                                tuple(int(d) for d in i["dims"])) for i in config["input"]})

    def max_binary_bytes(self) -> int:
        return sum(np.dtype(triton_to_np_dtype(dt)).itemsize * max(self.max_batch, 1) * math.prod(dims)
                   for dt, dims in self.inputs.values())

    def problem(self, model: str, header: dict) -> str | None:
        """Why this request's header is refused, or None."""
        inputs = header.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            return "the request has no 'inputs' list"
        for inp in inputs:
            if not isinstance(inp, dict):
                return "each input must be an object with name, shape and datatype"
            name = inp.get("name")
            if name not in self.inputs:
                return f"model '{model}' has no input {name!r}; its inputs are {sorted(self.inputs)}"
            dtype, dims = self.inputs[name]
            if inp.get("datatype") != dtype:
                return f"input '{name}' must be {dtype}, got {inp.get('datatype')!r}"
            shape = inp.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
                return f"input '{name}' needs a shape of integers, got {shape!r}"
            batched = self.max_batch > 0
            if batched and (len(shape) != len(dims) + 1 or not 1 <= shape[0] <= self.max_batch):
                return (f"input '{name}' must have shape [1..{self.max_batch}, {', '.join(map(str, dims))}], "
                        f"got {shape}")
            if tuple(shape[1:] if batched else shape) != dims:
                return f"input '{name}' must have dims {list(dims)} after the batch, got {shape}"
        return None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Guard:
    """Listens on ``port`` (127.0.0.1) and forwards to Triton's HTTP endpoint at ``upstream``."""

    def __init__(self, upstream: str, limits: dict[str, ModelLimits], port: int, max_body_bytes: int) -> None:
        self.upstream, self.limits, self.port, self.max_body = upstream, limits, port, max_body_bytes
        self.draining = False
        # models being reloaded by the supervisor (not ready, no inference): replaced, never mutated,
        # by the supervisor's thread, so this loop always reads a whole set
        self.healing: frozenset[str] = frozenset()
        self.in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = INFER.match(request.path)
        asked = match or MODEL_READY.match(request.path)  # a request about one model
        if self.draining and (asked or request.path.startswith("/v2/health/ready")):
            return _error(503, "the server is shutting down; send this request to another replica")
        healing = self.healing
        if (asked and asked.group(1) in healing) or (healing and request.path == "/v2/health/ready"):
            return _error(503, f"model {'/'.join(sorted(healing))} is being reloaded after its process died; "
                               f"retry in a few seconds")
        infer = bool(match) and request.method == "POST"
        self.in_flight += infer  # counted from arrival: a drain waits for requests still uploading
        try:
            return await self._forward(request, match if infer else None)
        finally:
            self.in_flight -= infer

    async def _forward(self, request: web.Request, infer: re.Match | None) -> web.StreamResponse:
        if (request.content_length or 0) > self.max_body:  # refused before a byte of it is read
            return _error(413, f"the request body ({request.content_length} bytes) is over the limit of "
                               f"{self.max_body} bytes (stsun serve --max-request-mb)")
        try:
            body = await request.read()
        except ConnectionResetError:  # the client went away mid-body
            return _error(400, "the request body was cut off")
        if infer and (limits := self.limits.get(infer.group(1))) is not None:
            check = (infer.group(1), limits, request.headers.get("Inference-Header-Content-Length"), body)
            # a large JSON body takes a while to parse: off the loop, so health probes are answered
            problem = (self._check(*check) if len(body) < 2**20
                       else await asyncio.get_running_loop().run_in_executor(None, self._check, *check))
            if problem:
                return _error(400, problem)
        # the body was read decompressed: forwarded as it now is. Triton 2.51 segfaults on a binary-tensor
        # body labelled form-urlencoded (urllib's and curl -d's default): an inference body is labelled
        # upstream as what it is
        dropped = HOP_BY_HOP | {"content-encoding"} | ({"content-type"} if infer else set())
        headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
        if infer:
            binary = "Inference-Header-Content-Length" in request.headers
            headers["Content-Type"] = "application/octet-stream" if binary else "application/json"
        try:
            async with self._session.request(request.method, f"http://{self.upstream}{request.rel_url}",
                                             headers=headers, data=body) as up:
                payload = await up.read()
                out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=up.status, body=payload, headers=out)
        except (ClientError, OSError, asyncio.TimeoutError) as err:
            return _error(503, f"the inference server is not reachable ({err!r}); it may be restarting")

    @staticmethod
    def _check(model: str, limits: ModelLimits, header_len: str | None, body: bytes) -> str | None:
        if header_len is None:
            n = len(body)
            if not n:
                return "the request has no body"
        elif not header_len.isdigit() or not 0 < int(header_len) <= len(body):
            return f"Inference-Header-Content-Length {header_len!r} does not fit the {len(body)}-byte body"
        else:
            n = int(header_len)
        try:
            header = json.loads(body[:n])
        except (ValueError, UnicodeDecodeError) as err:
            return f"the request header is not valid JSON ({err})"
        if not isinstance(header, dict):
            return "the request header must be a JSON object"
        return limits.problem(model, header)

    def start(self) -> "Guard":
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def setup() -> None:
            app = web.Application(client_max_size=self.max_body)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # bytes pass as sent, and compressed only when the client itself asked for it
            self._session = ClientSession(timeout=ClientTimeout(total=None), auto_decompress=False,
                                          skip_auto_headers=("Accept-Encoding", "User-Agent"))
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)  # drained before stop()
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(setup())
            except BaseException as err:  # reported to start()'s caller
                failure.append(err)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="stsun-guard", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise ServerError(f"the HTTP front could not listen on 127.0.0.1:{self.port}: {failure[0]}")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def teardown() -> None:
            await self._runner.cleanup()
            await self._session.close()

        done = asyncio.run_coroutine_threadsafe(teardown(), self._loop)
        try:
            done.result(15)
        except TimeoutError:  # a client that keeps its connection open does not hold up the stop
            done.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None
