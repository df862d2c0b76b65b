"""``stsun serve``: a Triton server behind the HTTP guard, kept healthy, stopped in order.

- Exposure: clients reach the guard (HTTP) and Triton's gRPC port, each serving only health,
  metadata, configuration, statistics and inference; the control APIs (load/unload, logging,
  shared memory, tracing) need a secret only this process holds. Triton's own HTTP port is
  internal (the same secret for every API). ``open_control`` opens the control APIs to clients.
- Healing: a python-backend stub that dies (OOM killer, a crash in a native library) leaves its
  model answering "Stub process is not healthy" for good in Triton 2.51. The watcher sees the
  process gone within ``poll_s`` and reloads that model: readiness is false from the unload until
  the new stub serves (about 2 s here). Every ``probe_s`` each model is also asked a probe (an
  inference the model answers without compute): a stub that is alive but does not answer (frozen,
  stopped) makes its model not ready, and after two failed probes it is killed and so reloaded.
  A model is not ready while any of these says so (each clears only its own reason).
- Restarts: a tritonserver that exits (or a reload that fails) is restarted on the same ports, and
  a failed start is tried again, as long as at most ``restarts`` starts fell within the last
  ``restart_window_s`` seconds; beyond that rate the supervisor fails with the log's last lines.
- Draining: ``stop()`` makes the guard refuse new inference (503, and not-ready), waits up to
  ``drain_timeout_s`` for the HTTP requests it already accepted, then unloads every model (Triton
  refuses new gRPC requests while those in flight finish), then stops the server (which waits
  for them) and removes its shared memory.
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

from .guard import Guard
from .requests import ModelLimits
from .server import ADMIN_HEADER, ALL_APIS, CLIENT_APIS, TritonServer, check_port_free, free_port, model_of

JSON_OVERHEAD = 8  # a JSON-encoded float takes up to ~8x its 4 binary bytes ("-0.12345678,")
PROBE = "stsun_probe"  # python_model.PROBE (that file is self-contained: it runs inside Triton)
NOT_HEALTHY = "not healthy"  # Triton's words for a stub that does not answer its health check
PROBE_TIMEOUT_S = 15.0  # longer than a model's queue timeout (10 s), after which Triton answers 503


def default_log(http_port: int) -> Path:
    """Under the user's state directory (XDG), never the working directory."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "stsun" / f"triton-{http_port}.log"


@dataclass(frozen=True)
class ServeOptions:
    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log: Path | None = None          # default: default_log(http_port)
    drain_timeout_s: float = 30.0
    max_request_mb: float | None = None  # default: a max batch as JSON text
    request_timeout_s: float = 60.0  # the guard's wait for Triton's answer
    restarts: int = 5                # starts of tritonserver allowed within restart_window_s
    restart_window_s: float = 600.0
    poll_s: float = 0.5
    probe_s: float = 5.0             # 0: no probes (each probe counts as one inference in Triton's statistics)
    open_control: bool = False       # UNSAFE: clients may load models, i.e. run any code as this user


class Supervisor:
    def __init__(self, options: ServeOptions, report: Callable[[str], None] = print) -> None:
        self.options = options
        self.report = report
        self.failure: ServerError | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()  # one heal, restart or drain at a time
        self._unready_lock = threading.Lock()
        self._reasons: dict[str, dict[str, str]] = {}  # model -> {"reload" or "probe": why it is not ready}
        self._starts: deque[float] = deque()  # times of recent restarts, for the rate budget
        self._log_reported = False
        self._internal_http = 0
        self._instances: set[str] = set()  # model instances whose stub processes must be alive
        self._probes: dict[str, tuple[bytes, int]] = {}  # model -> its probe request and header length
        self.server: TritonServer | None = None
        self.guard: Guard | None = None
        self._threads: list[threading.Thread] = []

    def _new_server(self) -> None:
        o = self.options
        self.server = TritonServer(o.repo, self._internal_http, o.grpc_port, o.metrics_port,
                                   log=o.log or default_log(o.http_port), http_public=(),
                                   grpc_public=ALL_APIS if o.open_control else CLIENT_APIS)
        try:
            self.server.start()
        finally:
            if self.server.log_error and not self._log_reported:  # said once; serving goes on
                self._log_reported = True
                self.report(f"{self.server.log_error}; Triton's output goes to stderr instead")
        self._instances = set(self.server.stubs().values())  # names are stable across reloads and restarts
        if self.guard is not None:
            self.guard.admin_key = self.server.admin_key  # a new server, a new secret

    def start(self) -> "Supervisor":
        o = self.options
        check_port_free(o.http_port, "http")
        self._internal_http = free_port()
        self._new_server()
        try:
            limits = {m: ModelLimits.from_config(self.server.model_config(m)) for m in self.server.models}
            biggest = max(lim.max_binary_bytes() for lim in limits.values())
            max_body = int(o.max_request_mb * 2**20) if o.max_request_mb else biggest * JSON_OVERHEAD + 2**16
            self._probes = {m: probe_request(lim) for m, lim in limits.items()}
            self.guard = Guard(self.server.http_url, self.server.admin_key, limits, o.http_port, max_body,
                               o.request_timeout_s, o.open_control).start()
        except BaseException:
            self.server.stop()
            raise
        self._threads = [threading.Thread(target=self._watch, name="stsun-watch", daemon=True),
                         threading.Thread(target=self._probe_loop, name="stsun-probe", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.options.grpc_port}"

    def _mark(self, model: str, source: str, why: str | None) -> None:
        """Set or clear one source's reason why ``model`` is not ready; the guard's mapping is
        replaced, never mutated."""
        with self._unready_lock:
            reasons = self._reasons.setdefault(model, {})
            if why is None:
                reasons.pop(source, None)
            else:
                reasons[source] = why
            self.guard.unready = {m: "; ".join(r.values()) for m, r in self._reasons.items() if r}

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
        while self._starts and now - self._starts[0] > o.restart_window_s:
            self._starts.popleft()
        if len(self._starts) >= o.restarts:
            raise ServerError(f"{why}, and tritonserver was started {len(self._starts)} times in the last "
                              f"{o.restart_window_s:g} s already; log {self.server.log}, last lines: "
                              f"{self.server.log_tail()}")
        self._starts.append(now)
        self.report(f"{why}; restarting tritonserver ({len(self._starts)} of at most {o.restarts} "
                    f"in {o.restart_window_s:g} s)")
        self.server.stop()
        try:
            self._new_server()
        except ServerError as err:  # the next pass tries again, within the same budget
            self.report(f"the restart failed: {err}")
            return
        self.report("tritonserver is serving again")

    def _heal(self) -> None:
        server = self.server
        if server.proc is None or server.proc.poll() is not None:  # exited, or a restart failed to start it
            self._restart(f"tritonserver is not running (exit code {server.proc and server.proc.returncode})")
            return
        missing = self._instances - set(server.stubs().values())
        for model in sorted({model_of(i) for i in missing}):
            t0 = time.monotonic()
            self.report(f"a backend process of model '{model}' died; reloading the model")
            self._mark(model, "reload", "its backend process died; it is being reloaded")
            try:
                server.reload(model)
            except ServerError as err:
                self._restart(f"{err}")
                return
            finally:
                self._mark(model, "reload", None)
            self.report(f"model '{model}' is serving again after {time.monotonic() - t0:.1f} s")

    def _probe_loop(self) -> None:
        failures: dict[str, int] = {}
        while self.options.probe_s > 0 and not self._stop.wait(self.options.probe_s):
            server = self.server
            if server is None or server.proc is None or server.proc.poll() is not None:
                continue  # the watcher restarts it
            for model, (body, n) in self._probes.items():
                if self._stop.is_set() or "reload" in self._reasons.get(model, {}):
                    continue
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
                elif NOT_HEALTHY in problem:  # alive but unresponsive (stopped, frozen): the watcher reloads it
                    pids = [pid for pid, inst in server.stubs().items() if model_of(inst) == model]
                    self.report(f"model '{model}' still does not answer; killing its backend processes {pids}")
                    for pid in pids:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass

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

    def stop(self) -> int:
        """Drain and stop; returns how many HTTP inference requests were still in flight at the
        end of the drain window (0 when all finished)."""
        self._stop.set()  # first, without the lock a heal may hold: refuse new requests now
        if self.guard is not None:
            self.guard.draining = True
        deadline = time.monotonic() + self.options.drain_timeout_s
        with self._lock:
            while self.guard is not None and self.guard.in_flight and time.monotonic() < deadline:
                time.sleep(0.1)  # HTTP requests already accepted finish first, through the guard
            left = self.guard.in_flight if self.guard is not None else 0
            if self.server is not None:
                # then gRPC: unloaded models refuse new requests while those in flight finish
                self.server.unload_all()
                self.server.wait_unloaded(self.server.models, max(0.0, deadline - time.monotonic()))
            if self.guard is not None:  # first: Triton waits for open HTTP connections when it stops
                self.guard.stop()
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
