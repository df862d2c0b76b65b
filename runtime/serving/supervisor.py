"""``stsun serve``: a Triton server behind the HTTP guard, kept healthy, stopped in order.

- Healing: a python-backend stub that dies (OOM killer, a crash in a native library) leaves its
  model answering "Stub process is not healthy" for good in Triton 2.51. The watcher sees the
  process gone within ``poll_s`` and reloads that model: readiness is false from the unload until
  the new stub serves (about 2 s here). A tritonserver that exits is restarted, at most
  ``restarts`` times; after that the supervisor fails with the log's last lines.
- Draining: ``stop()`` makes the guard refuse new inference (503, and not-ready), waits up to
  ``drain_timeout_s`` for the HTTP requests it already accepted, then unloads every model (Triton
  refuses new gRPC requests while those in flight finish), then stops the server (which waits
  for them) and removes its shared memory.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stsun.errors import ServerError

from .guard import Guard, ModelLimits
from .server import TritonServer, check_port_free, free_port, model_of

JSON_OVERHEAD = 8  # a JSON-encoded float takes up to ~8x its 4 binary bytes ("-0.12345678,")


@dataclass(frozen=True)
class ServeOptions:
    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log: Path | None = None
    drain_timeout_s: float = 30.0
    max_request_mb: float | None = None  # default: a max batch as JSON text
    restarts: int = 3
    poll_s: float = 0.5


class Supervisor:
    def __init__(self, options: ServeOptions, report: Callable[[str], None] = print) -> None:
        self.options = options
        self.report = report
        self.failure: ServerError | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._restarts = 0
        self._internal_http = 0
        self._instances: set[str] = set()  # model instances whose stub processes must be alive
        self.server: TritonServer | None = None
        self.guard: Guard | None = None
        self._watcher: threading.Thread | None = None

    def _new_server(self) -> None:
        o = self.options
        log = o.log or Path(f"stsun-triton-{o.http_port}.log")
        self.server = TritonServer(o.repo, self._internal_http, o.grpc_port, o.metrics_port, log=log).start()
        self._instances = set(self.server.stubs().values())  # names are stable across reloads and restarts

    def start(self) -> "Supervisor":
        o = self.options
        check_port_free(o.http_port, "http")
        self._internal_http = free_port()
        self._new_server()
        try:
            limits = {m: ModelLimits.from_config(self.server.model_config(m)) for m in self.server.models}
            biggest = max(lim.max_binary_bytes() for lim in limits.values())
            max_body = int(o.max_request_mb * 2**20) if o.max_request_mb else biggest * JSON_OVERHEAD + 2**16
            self.guard = Guard(self.server.http_url, limits, o.http_port, max_body).start()
        except BaseException:
            self.server.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="stsun-watch", daemon=True)
        self._watcher.start()
        return self

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.options.grpc_port}"

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

    def _heal(self) -> None:
        server = self.server
        if server.proc.poll() is not None:
            code = server.proc.returncode
            if self._restarts >= self.options.restarts:
                raise ServerError(f"tritonserver exited with code {code} and was restarted {self._restarts} times "
                                  f"already; log {server.log}, last lines: {server.log_tail()}")
            self._restarts += 1
            self.report(f"tritonserver exited with code {code}; restarting it ({self._restarts} of "
                        f"{self.options.restarts})")
            server.stop()
            self._new_server()
            self.report("tritonserver is serving again")
            return
        missing = self._instances - set(server.stubs().values())
        for model in sorted({model_of(i) for i in missing}):
            t0 = time.monotonic()
            self.report(f"a backend process of model '{model}' died; reloading the model")
            self.guard.healing = self.guard.healing | {model}  # replaced, never mutated: the guard reads it
            try:
                server.reload(model)
            except ServerError as err:  # the next pass restarts the server, which counts as a restart
                self.report(f"{err}; stopping tritonserver")
                server.stop()
                return
            finally:
                self.guard.healing = self.guard.healing - {model}
            self.report(f"model '{model}' is serving again after {time.monotonic() - t0:.1f} s")

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
        if self._watcher is not None:
            self._watcher.join(5)
        return left

    def __enter__(self) -> "Supervisor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
