"""The public HTTP port of ``stsun serve``: only what a client needs reaches Triton, checked first.

- **Only inference is public.** Health, server and model metadata, model configuration, readiness,
  statistics and ``/infer`` of the served models; every other path (model load/unload, which runs
  any code a client uploads; logging; shared-memory registration; tracing) is refused with 403
  before Triton sees it, unless the operator opened the control APIs (``--open-control-api``).
  An unknown model is a 404 from the headers alone, before the body is read. Triton's own HTTP port
  is internal and answers only requests that carry the supervisor's secret, which the guard adds.
- **Triton reads what the guard checked.** ``requests.rewrite`` parses the request strictly and the
  guard forwards the request it wrote (see there): Triton 2.51 allocates a JSON request's declared
  shape before checking it, aborted on a duplicated ``shape`` key, and segfaults on a binary body
  labelled form-urlencoded.
- **Bounded work.** Bodies over the limit are refused from their headers (413); the bodies held at
  once add up to at most ``BODY_BUDGET`` limits (others wait for room, then 503) and each must
  arrive within the timeout (408); compressed bodies are inflated here with the limit counted on
  the inflated bytes, and at most ``heavy_slots`` large bodies are inflated or parsed at once;
  every upstream request has a total timeout (504).
While draining (shutdown) it refuses new inference and reports not-ready (503); a model the
supervisor finds unhealthy or is restarting is not ready and refuses inference (503) meanwhile.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import zlib
from collections.abc import AsyncIterator

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from yarl import URL

from stsun.errors import ServerError

from .requests import ModelLimits, Refused, rewrite
from .server import ADMIN_HEADER

SERVER_PATHS = {"/v2", "/v2/health/live", "/v2/health/ready"}
MODEL_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/[0-9]+)?(?:/(?P<what>config|ready|stats|infer))?$")
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "expect"}  # ours to answer
CLIENT_HEADERS = {"accept", "accept-encoding"}  # the only client headers Triton gets
ENCODINGS = {"identity": None, "gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
SMALL_BODY = 2**20  # checked on the event loop; larger bodies in a worker thread, a few at a time
BODY_BUDGET = 2  # bodies held at once add up to at most this many times the body limit


class TooLarge(Refused):
    """Answered with 413."""


class ByteBudget:
    """Bytes of request bodies the guard holds at once: a body is read only once its announced
    size (the limit, when it announces none) fits, so many clients uploading large bodies
    together wait instead of filling memory."""

    def __init__(self, total: int) -> None:
        self.total = self.free = total
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int, timeout: float) -> AsyncIterator[None]:
        size = min(size, self.total)
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.free >= size), timeout)
            self.free -= size
        try:
            yield
        finally:
            async with self._changed:
                self.free += size
                self._changed.notify_all()


def inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` decoded, refused as soon as the decoded bytes pass ``limit`` (a 2 MB gzip body can
    hold 2 GB)."""
    wbits = ENCODINGS[encoding]
    if wbits is None:
        return raw
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as err:
        raise Refused(f"the {encoding} body cannot be decoded ({err})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"the {encoding} body inflates to more than the limit of {limit} bytes "
                       f"(stsun serve --max-request-mb)")
    if not inflater.eof:
        raise Refused(f"the {encoding} body is cut off")
    return out


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Guard:
    """Listens on ``host``:``port`` (127.0.0.1 unless told) and forwards to Triton's internal HTTP endpoint at
    ``upstream``, adding the ``admin_key`` that endpoint requires."""

    def __init__(self, upstream: str, admin_key: str, limits: dict[str, ModelLimits], port: int, max_body_bytes: int,
                 timeout_s: float = 60.0, open_control: bool = False, heavy_slots: int = 2,
                 host: str = "127.0.0.1") -> None:
        # a Guard runs on an event loop it is started on (LoopThread): start() and stop() are coroutines
        self.upstream, self.admin_key, self.limits, self.port = upstream, admin_key, limits, port
        self.max_body, self.timeout_s, self.open_control = max_body_bytes, timeout_s, open_control
        self.heavy_slots, self.host = heavy_slots, host
        self.draining = False
        # model -> why it is not ready (server restarting, failing its probe): replaced, never mutated,
        # by the supervisor's thread, so this loop always reads a whole mapping
        self.unready: dict[str, str] = {}
        self.in_flight = 0
        self._heavy: asyncio.Semaphore | None = None
        self._bodies: ByteBudget | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    def _route(self, request: web.Request) -> tuple[str, str | None] | web.Response:
        """(what, model) of a public request, or the answer to any other."""
        path = request.path
        if path in SERVER_PATHS:
            what, model = path, None
        elif m := MODEL_PATH.match(path):
            what, model = m["what"] or "metadata", m["model"]
        elif self.open_control:
            return "control", None
        else:
            return _error(403, f"{path} is not served here: this port serves inference, health, metadata and "
                               f"statistics (the control APIs are closed; see stsun serve --open-control-api)")
        if model is not None and model not in self.limits:
            return _error(404, f"unknown model '{model}'; this server serves {sorted(self.limits)}")
        if request.method != ("POST" if what == "infer" else "GET"):
            return _error(405, f"{request.method} is not allowed on {path}")
        return what, model

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = self._route(request)
        if isinstance(route, web.Response):
            return route
        what, model = route
        about_readiness = what in ("infer", "ready", "/v2/health/ready")
        if self.draining and about_readiness:
            return _error(503, "the server is shutting down; send this request to another replica")
        unready = self.unready
        why = unready.get(model) if model else "; ".join(f"model '{m}': {r}" for m, r in sorted(unready.items()))
        if why and about_readiness:
            return _error(503, f"not ready: {why}; retry in a few seconds")
        if what != "infer":
            return await self._forward(request, {}, None)
        self.in_flight += 1  # counted from arrival: a drain waits for requests still uploading
        try:
            return await self._infer(request, model)
        finally:
            self.in_flight -= 1

    async def _infer(self, request: web.Request, model: str) -> web.StreamResponse:
        if (request.content_length or 0) > self.max_body:  # refused before a byte of it is read
            return _error(413, f"the request body ({request.content_length} bytes) is over the limit of "
                               f"{self.max_body} bytes (stsun serve --max-request-mb)")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ENCODINGS:
            return _error(415, f"Content-Encoding {encoding!r} is not accepted; use {', '.join(ENCODINGS)}")
        try:
            async with self._bodies.hold(request.content_length or self.max_body, self.timeout_s):
                return await self._read_and_forward(request, model, encoding)
        except asyncio.TimeoutError:
            return _error(503, "the server holds as many request bodies as it will; retry in a few seconds")

    async def _read_and_forward(self, request: web.Request, model: str, encoding: str) -> web.StreamResponse:
        try:  # aiohttp stops at client_max_size (the limit); a slow upload is cut off
            raw = await asyncio.wait_for(request.read(), self.timeout_s)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the request body is over the limit of {self.max_body} bytes "
                               f"(stsun serve --max-request-mb)")
        except asyncio.TimeoutError:
            return _error(408, f"the request body did not arrive within {self.timeout_s:g} s")
        except ConnectionResetError:  # the client went away mid-body
            return _error(400, "the request body was cut off")
        work = (model, raw, encoding, request.headers.get("Inference-Header-Content-Length"))
        try:
            if encoding == "identity" and len(raw) < SMALL_BODY:
                body, header_length = self._prepare(*work)
            else:  # inflating or parsing a large body takes a while: off the loop, a few at a time
                async with self._heavy:
                    body, header_length = await asyncio.get_running_loop().run_in_executor(None, self._prepare, *work)
        except TooLarge as err:
            return _error(413, str(err))
        except Refused as err:
            return _error(400, str(err))
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
        answer = await self._forward(request, headers, body)
        if answer.status == 404 and model in self.unready:  # a served model the server is restarting without
            return _error(503, f"not ready: {self.unready[model]}; retry in a few seconds")
        return answer

    def _prepare(self, model: str, raw: bytes, encoding: str, header_length: str | None) -> tuple[bytes, int]:
        return rewrite(model, self.limits[model], inflate(raw, encoding, self.max_body), header_length)

    async def _forward(self, request: web.Request, headers: dict[str, str], body: bytes | None) -> web.StreamResponse:
        if body is None and request.method == "POST":  # a control API the operator opened
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() in {"content-type", "content-encoding"}}
        headers = {**{k: v for k, v in request.headers.items() if k.lower() in CLIENT_HEADERS}, **headers,
                   ADMIN_HEADER: self.admin_key}
        try:
            # the path as checked (decoded), without the query: no public API takes one
            url = URL.build(scheme="http", authority=self.upstream, path=request.path)
            async with self._session.request(request.method, url, headers=headers, data=body) as up:
                payload = await up.read()
                out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=up.status, body=payload, headers=out)
        except asyncio.TimeoutError:
            return _error(504, f"the inference server did not answer within {self.timeout_s:g} s "
                               f"(stsun serve --request-timeout)")
        except (ClientError, OSError) as err:
            return _error(503, f"the inference server is not reachable ({err!r}); it may be restarting")

    async def start(self) -> None:
        """Listen (on the fronts' event loop); raises ServerError when the port cannot be had."""
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._heavy = asyncio.Semaphore(self.heavy_slots)
        self._bodies = ByteBudget(BODY_BUDGET * self.max_body)
        # responses pass as sent, and compressed only when the client itself asked for it
        self._session = ClientSession(timeout=ClientTimeout(total=self.timeout_s), auto_decompress=False,
                                      skip_auto_headers=("Accept-Encoding", "User-Agent"))
        # request bodies arrive as sent: inflate() bounds them, aiohttp would not
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0,  # drained before stop()
                                     auto_decompress=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as err:
            await self.stop()
            raise ServerError(f"the HTTP front could not listen on {self.host}:{self.port}: {err}") from None

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()
