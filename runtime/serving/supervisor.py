"""``stsun serve``: a Triton server behind an HTTP and a gRPC front, kept healthy, stopped in order.

- Exposure: clients reach two fronts of ours (``guard``: HTTP; ``grpc_front``: gRPC), each serving
  only health, readiness, metadata, configuration, statistics and inference, with bounded work.
  tritonserver itself listens on internal loopback ports that answer only requests carrying a
  secret the fronts add, and runs without model control: its load/unload APIs (which run any code
  a caller uploads) do not exist, so a local user who reads the secret from tritonserver's command
  line still cannot load code. ``open_control`` opens the control APIs to clients (UNSAFE).
- Healing: a python-backend stub that dies (OOM killer, a crash in a native library) leaves its
  model answering "Stub process is not healthy" for good in Triton 2.51. The watcher sees the
  process gone within ``poll_s`` and restarts tritonserver (model control is off, so there is no
  reload of one model): readiness is false until the new server serves. Every ``probe_s`` each
  model is also asked a probe (an inference the model answers without compute): a stub that is
  alive but does not answer (frozen, stopped) makes its model not ready, and after two failed
  probes it is killed, and so the server restarted. A model is not ready while any source says so.
- Restarts: a tritonserver that exits is restarted on the same ports, a failed start is tried
  again after a growing pause (1 s doubling to 30 s), as long as at most ``restarts`` starts fell
  within the last ``restart_window_s`` seconds; beyond that rate the supervisor fails with the
  log's last lines.
- Draining: ``stop()`` makes both fronts refuse new inference (503 / UNAVAILABLE, and not-ready),
  waits up to ``drain_timeout_s`` for the requests they already accepted, then stops the fronts
  and the server and removes its shared memory.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from stsun.errors import ServerError

from .grpc_front import GrpcFront
from .guard import Guard
from .loop import LoopThread
from .requests import ModelLimits
from .server import ADMIN_HEADER, TritonServer, check_port_free, free_port, model_of

JSON_OVERHEAD = 8  # a JSON-encoded float takes up to ~8x its 4 binary bytes ("-0.12345678,")
PROBE = "stsun_probe"  # python_model.PROBE (that file is self-contained: it runs inside Triton)
NOT_HEALTHY = "not healthy"  # Triton's words for a stub that does not answer its health check
PROBE_TIMEOUT_S = 15.0  # longer than a model's queue timeout (10 s), after which Triton answers 503
RETRY_S = (1.0, 30.0)  # pause before retrying a failed start: first, largest


def default_log(http_port: int) -> Path:
    """Under the user's state directory (XDG), never the working directory."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "stsun" / f"triton-{http_port}.log"


@dataclass(frozen=True)
class ServeOptions:
    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001            # the gRPC front's
    metrics_port: int = 8002
    log: Path | None = None          # default: default_log(http_port)
    drain_timeout_s: float = 30.0
    max_request_mb: float | None = None  # default: a max batch as JSON text
    request_timeout_s: float = 60.0  # the fronts' wait for Triton's answer (and for a request body)
    restarts: int = 5                # starts of tritonserver allowed within restart_window_s
    restart_window_s: float = 600.0
    poll_s: float = 0.5
    probe_s: float = 5.0             # 0: no probes (each probe counts as one inference in Triton's statistics)
    open_control: bool = False       # UNSAFE: clients may load models, i.e. run any code as this user
    host: str = "127.0.0.1"          # the fronts' address (tritonserver itself stays on loopback)


class Supervisor:
    def __init__(self, options: ServeOptions, report: Callable[[str], None] = print) -> None:
        self.options = options
        self.report = report
        self.failure: ServerError | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()  # one restart or drain at a time
        self._unready_lock = threading.Lock()
        self._reasons: dict[str, dict[str, str]] = {}  # model -> {source: why it is not ready}
        self._starts: deque[float] = deque()  # times of recent restarts, for the rate budget
        self._retry_at = 0.0  # a failed start is tried again from then
        self._pause = RETRY_S[0]
        self._log_reported = False
        self._internal: dict[str, int] = {}
        self._instances: set[str] = set()  # model instances whose stub processes must be alive
        self._probes: dict[str, tuple[bytes, int]] = {}  # model -> its probe request and header length
        self.server: TritonServer | None = None
        self.guard: Guard | None = None
        self.grpc: GrpcFront | None = None
        self._loop: LoopThread | None = None
        self._threads: list[threading.Thread] = []

    @property
    def fronts(self) -> list[Guard | GrpcFront]:
        return [f for f in (self.guard, self.grpc) if f is not None]

    def _new_server(self) -> None:
        o = self.options
        self.server = TritonServer(o.repo, self._internal["http"], self._internal["grpc"], o.metrics_port,
                                   log=o.log or default_log(o.http_port), http_public=(), grpc_public=(),
                                   model_control=o.open_control)
        for front in self.fronts:
            front.admin_key = self.server.admin_key  # a new server, a new secret, known before it serves
        try:
            self.server.start()
        finally:
            if self.server.log_error and not self._log_reported:  # said once; serving goes on
                self._log_reported = True
                self.report(f"{self.server.log_error}; Triton's output goes to stderr instead")
        self._instances = set(self.server.stubs().values())  # names are stable across restarts

    def start(self) -> "Supervisor":
        o = self.options
        check_port_free(o.http_port, "http")
        check_port_free(o.grpc_port, "grpc")
        self._internal = {"http": free_port(), "grpc": free_port()}
        self._new_server()
        try:
            limits = {m: ModelLimits.from_config(self.server.model_config(m)) for m in self.server.models}
            biggest = max(lim.max_binary_bytes() for lim in limits.values())
            max_body = int(o.max_request_mb * 2**20) if o.max_request_mb else biggest * JSON_OVERHEAD + 2**16
            self._probes = {m: probe_request(lim) for m, lim in limits.items()}
            self._warn_unprobed()
            self._loop = LoopThread("stsun-fronts")
            key = self.server.admin_key
            guard = Guard(self.server.http_url, key, limits, o.http_port, max_body, o.request_timeout_s,
                          o.open_control, host=o.host)
            self._loop.run(guard.start(), 30)
            self.guard = guard
            # gRPC carries tensors as raw bytes: a full batch plus room for the message around it
            grpc_front = GrpcFront(self.server.grpc_url, key, limits, o.grpc_port, biggest + 2**16,
                                   o.request_timeout_s, o.open_control, host=o.host)
            self._loop.run(grpc_front.start(), 30)
            self.grpc = grpc_front
        except BaseException:
            self._stop_fronts()
            self.server.stop()
            raise
        self._threads = [threading.Thread(target=self._watch, name="stsun-watch", daemon=True),
                         threading.Thread(target=self._probe_loop, name="stsun-probe", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _warn_unprobed(self) -> None:
        for model in self._probes:
            if PROBE not in (self.options.repo / model / "1" / "model.py").read_text():
                self.report(f"model '{model}' was written before health probes: each probe runs a full inference; "
                            f"rewrite the repository with `stsun triton-repo`")

    @property
    def http_url(self) -> str:
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    def _mark(self, model: str, source: str, why: str | None) -> None:
        """Set or clear one source's reason why ``model`` is not ready; the fronts' mappings are
        replaced, never mutated (they are read on another thread)."""
        with self._unready_lock:
            reasons = self._reasons.setdefault(model, {})
            if why is None:
                reasons.pop(source, None)
            else:
                reasons[source] = why
            unready = {m: "; ".join(r.values()) for m, r in self._reasons.items() if r}
            for front in self.fronts:
                front.unready = unready

    def _watch(self) -> None:
        # This thread also (re)starts the server when it dies: the kernel kills the server when the
        # thread that started it ends, so it lives until stop() has stopped the server. (start(),
        # and so the first server, belongs to the caller's thread: call it from one that lives.)
        while not self._stop.wait(self.options.poll_s):
            with self._lock:
                if self._stop.is_set():
                    break
                try:
                    self._heal()
                except Exception as err:  # recorded, so `stsun serve` exits with it instead of serving 503s
                    self.failure = err if isinstance(err, ServerError) else ServerError(f"healing failed: {err!r}")
                    self.report(f"giving up: {self.failure}")
                    break
        self._done.wait()

    def _restart(self, why: str) -> None:
        o = self.options
        now = time.monotonic()
        if now < self._retry_at:
            return  # a failed start waits before the next try
        while self._starts and now - self._starts[0] > o.restart_window_s:
            self._starts.popleft()
        if len(self._starts) >= o.restarts:
            raise ServerError(f"{why}, and tritonserver was started {len(self._starts)} times in the last "
                              f"{o.restart_window_s:g} s already; log {self.server.log}, last lines: "
                              f"{self.server.log_tail()}")
        self._starts.append(now)
        self.report(f"{why}; restarting tritonserver ({len(self._starts)} of at most {o.restarts} "
                    f"in {o.restart_window_s:g} s)")
        for model in self._probes:
            self._mark(model, "restart", "tritonserver is restarting")
        self.server.stop()
        try:
            self._new_server()
        except ServerError as err:  # tried again after a pause, within the same budget
            self._retry_at = time.monotonic() + self._pause
            self.report(f"the restart failed: {err}; trying again in {self._pause:g} s")
            self._pause = min(2 * self._pause, RETRY_S[1])
            return
        self._pause = RETRY_S[0]
        for model in self._probes:  # a new server: what the probes found was the old one's
            self._mark(model, "probe", None)
            self._mark(model, "restart", None)
        self.report(f"tritonserver is serving again after {time.monotonic() - now:.1f} s")

    def _heal(self) -> None:
        server = self.server
        if server.proc is None or server.proc.poll() is not None:  # exited, or a restart failed to start it
            self._restart(f"tritonserver is not running (exit code {server.proc and server.proc.returncode})")
            return
        if missing := sorted({model_of(i) for i in self._instances - set(server.stubs().values())}):
            self._restart(f"a backend process of model {', '.join(map(repr, missing))} died")

    def _probe_loop(self) -> None:
        failures: dict[str, int] = {}
        while self.options.probe_s > 0 and not self._stop.wait(self.options.probe_s):
            server = self.server
            if server is None or server.proc is None or server.proc.poll() is not None:
                continue  # the watcher restarts it
            for model, (body, n) in self._probes.items():
                if self._stop.is_set() or "restart" in self._reasons.get(model, {}):
                    continue
                before = [pid for pid, inst in server.stubs().items() if model_of(inst) == model]
                problem = self._probe(server, model, body, n)
                if problem is None:
                    if failures.pop(model, 0):
                        self._mark(model, "probe", None)
                        self.report(f"model '{model}' answers again")
                    continue
                failures[model] = failures.get(model, 0) + 1
                if failures[model] == 1:
                    self.report(f"model '{model}' does not answer its probe ({problem}); not ready")
                    self._mark(model, "probe", f"its backend process does not answer ({problem})")
                elif NOT_HEALTHY in problem and server is self.server:
                    # alive but unresponsive (stopped, frozen): killed, the watcher restarts the server
                    self.report(f"model '{model}' still does not answer; killing its backend processes {before}")
                    for pid in before:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    failures.pop(model)  # the restart clears its readiness

    def _probe(self, server: TritonServer, model: str, body: bytes, n: int) -> str | None:
        """None when the model's backend answered the probe, else what went wrong (a full queue
        or timed-out queue is an answer: the model is busy, not broken)."""
        req = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/infer", data=body, method="POST",
                                     headers={ADMIN_HEADER: server.admin_key, "Inference-Header-Content-Length": str(n),
                                              "Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=PROBE_TIMEOUT_S) as r:
                r.read()
            return None
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            return None if err.code == 503 else f"HTTP {err.code}: {text[:200]}"  # 503: its queue is full
        except (urllib.error.URLError, OSError) as err:
            return None if server.proc.poll() is not None else f"no answer: {err}"

    def _stop_fronts(self) -> None:
        if self._loop is None:
            return
        for front in self.fronts:
            try:
                self._loop.run(front.stop(), 15)
            except TimeoutError:  # a client that keeps its connection open does not hold up the stop
                pass
        self._loop.close()
        self._loop = None

    def stop(self) -> int:
        """Drain and stop; returns how many inference requests were still in flight at the end
        of the drain window (0 when all finished)."""
        self._stop.set()  # first, without the lock a restart may hold: refuse new requests now
        for front in self.fronts:
            front.draining = True
        deadline = time.monotonic() + self.options.drain_timeout_s
        with self._lock:
            while any(f.in_flight for f in self.fronts) and time.monotonic() < deadline:
                time.sleep(0.1)  # requests already accepted finish first
            left = sum(f.in_flight for f in self.fronts)
            self._stop_fronts()  # first: Triton waits for open HTTP connections when it stops
            if self.server is not None:
                self.server.stop()
        self._done.set()
        for t in self._threads:
            t.join(5)
        return left

    def __enter__(self) -> "Supervisor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def probe_request(limits: ModelLimits) -> tuple[bytes, int]:
    """A batch-1 request of zeros with the probe parameter, and its header's length."""
    inputs, data = [], []
    for name, (dtype, dims) in limits.inputs.items():
        x = np.zeros((1, *dims) if limits.max_batch else dims, np.dtype(triton_to_np_dtype(dtype)))
        inputs.append({"name": name, "datatype": dtype, "shape": list(x.shape),
                       "parameters": {"binary_data_size": x.nbytes}})
        data.append(x.tobytes())
    header = json.dumps({"inputs": inputs, "parameters": {PROBE: True}}).encode()
    return header + b"".join(data), len(header)
