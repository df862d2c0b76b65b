"""Start a real Triton Inference Server (the binary shipped in nvidia-pytriton) on 127.0.0.1.

That wheel carries only the python backend, so only python-backend models are served: the server
reads a private repository of links to them (the onnxruntime_onnx / tensorrt_plan flavours are
for NVIDIA's container). Model control is off unless asked for: with ``--model-control-mode=none``
the load and unload APIs do not exist, for anyone (loading a python model runs its code).
Nothing is downloaded or installed at run time.

The process never outlives its parent (the kernel kills it when the thread that started it
dies, SIGKILL included), its log goes to a file (quoted when it fails), its ports are checked
before it starts, and the python backend's shared-memory regions carry a prefix of ours so they
are removed when it stops, and found and removed after a parent that was killed outright.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from stsun.errors import ServerError

# Triton's APIs by the names its --http-restricted-api / --grpc-restricted-protocol flags use
ALL_APIS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
            "trace", "logging")
CLIENT_APIS = ("health", "metadata", "inference", "model-config", "statistics")  # what a client needs
ADMIN_HEADER = "stsun-admin-key"
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "stsun_triton_"  # + owner pid + "_": regions of a dead owner are stale
PR_SET_PDEATHSIG = 1


def server_package() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ServerError("the Triton server binary comes with the serve extra: pip install 'stsun[serve]'") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {root}")
    return root


def python_models(repo: Path) -> list[str]:
    return sorted(d.name for d in repo.iterdir()
                  if (d / "config.pbtxt").is_file() and 'backend: "python"' in (d / "config.pbtxt").read_text())


def check_port_free(port: int, what: str) -> None:
    """Bind it for a moment: a port another process listens on is an error now, not a server that
    exits later (or a readiness probe answered by the other process)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            raise ServerError(f"{what} port {port} on 127.0.0.1 is already in use ({err.strerror}); "
                              f"stop what holds it or pick another port") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: no dlopen between fork and exec


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (/proc lists a child under the thread that forked it)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return found


def python_stubs(server_pid: int) -> dict[int, str]:
    """pid -> model instance name (``<model>_<group>_<index>``) of a tritonserver's live python stubs."""
    found = {}
    for pid in child_pids(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # argv: stub, model.py, shm region, sizes, parent pid, lib dir, ipc handle, instance, ...
        if argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 8 and pid_alive(pid):
            found[pid] = argv[8].decode()
    return found


def remove_stale_shm() -> list[str]:
    """Shared-memory regions left by servers whose owner died (SIGKILL leaves no one to clean)."""
    removed = []
    for f in SHM_DIR.glob(SHM_PREFIX + "*"):
        m = re.match(re.escape(SHM_PREFIX) + r"(\d+)_", f.name)
        if m and not pid_alive(int(m.group(1))):
            f.unlink(missing_ok=True)
            removed.append(f.name)
    return removed


class TritonServer:
    """Context manager: a tritonserver process serving ``repo`` on 127.0.0.1."""

    def __init__(self, repo: str | Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 log: str | Path | None = None, exit_timeout_s: int = 10,
                 http_public: tuple[str, ...] = CLIENT_APIS, grpc_public: tuple[str, ...] = CLIENT_APIS,
                 model_control: bool = False) -> None:
        """APIs outside ``http_public`` / ``grpc_public`` answer only requests that carry the
        ``stsun-admin-key`` header with ``admin_key``, a secret made here. ``model_control`` turns
        on the load/unload APIs (explicit mode), which run any code a caller uploads as this user
        (Triton's secure-deployment guide); off, they do not exist."""
        self.repo = Path(repo).resolve()
        self.admin_key = secrets.token_urlsafe(32)
        self.restricted = {"http": [a for a in ALL_APIS if a not in http_public],
                           "grpc": [a for a in ALL_APIS if a not in grpc_public]}
        self.model_control = model_control
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.log = Path(log) if log else Path(tempfile.gettempdir()) / f"stsun-triton-{http_port}.log"
        self.exit_timeout_s = exit_timeout_s
        self.proc: subprocess.Popen | None = None
        self.models: list[str] = []
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{http_port}_"
        self.log_error: str | None = None
        self._private: tempfile.TemporaryDirectory | None = None  # backend folder and model links

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def _private_dirs(self, root: Path, models: list[str]) -> tuple[Path, Path]:
        """(backend directory, model repository) of this server, in a temporary folder.

        The server wants python/{libtriton_python.so, utils, stub} side by side: links, not
        copies (a copied stub loses its relative RPATH and the model hangs in loading). The
        repository links only the python models, so with model control off the server loads
        exactly those."""
        self._private = tempfile.TemporaryDirectory(prefix="stsun-triton-")
        base = Path(self._private.name)
        py, repo = base / "backends" / "python", base / "models"
        py.mkdir(parents=True)
        repo.mkdir()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"the server has no python backend stub for Python {version}")
        for src in (root / "backends" / "python" / "libtriton_python.so",
                    root / "backends" / "python" / "triton_python_backend_utils.py", stub):
            (py / src.name).symlink_to(src)
        for m in models:
            (repo / m).symlink_to(self.repo / m)
        return py.parent, repo

    def _open_log(self):
        """The log file, appended (a restart keeps what the crash before it wrote), or None when it
        cannot be written (a full disk): the server's output then goes to our stderr, and
        ``log_error`` says why. A log never stops the serving."""
        self.log_error = None
        out = None
        try:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log, "a")
            out.write(f"--- stsun: starting tritonserver {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            out.flush()
            return out
        except OSError as err:
            if out is not None:
                with contextlib.suppress(OSError):  # closing flushes the banner again, and fails again
                    out.close()
            self.log_error = f"cannot write the log {self.log} ({err.strerror or err})"
            return None

    def log_tail(self, lines: int = 5) -> str:
        """The log's last lines, read from its last 64 kB (a log that is no regular file, such as
        /dev/full, has none: reading it would never end)."""
        try:
            with open(self.log, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    return ""
                f.seek(max(0, info.st_size - 2**16))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return " | ".join([ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:])

    def _failed(self, what: str) -> ServerError:
        self.stop()
        tail = self.log_tail()
        return ServerError(f"{what}; log {self.log}" + (f", last lines: {tail}" if tail else ""))

    def start(self, timeout: float = 60.0) -> "TritonServer":
        if not self.repo.is_dir():
            raise ServerError(f"model repository not found: {self.repo}")
        models = python_models(self.repo)
        if not models:
            raise ServerError(f"{self.repo} has no python-backend model; write one with `stsun triton-repo`")
        for what, port in self.ports.items():
            check_port_free(port, what)
        remove_stale_shm()
        root = server_package()
        env = dict(os.environ)
        # The stub's embedded Python ignores PYTHONPATH: it finds numpy/onnxruntime through PATH
        # (this interpreter's environment first) and needs the matching libpython.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = f"{sysconfig.get_config_var('LIBDIR')}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
        backends, repo = self._private_dirs(root, models)
        control = ["--model-control-mode=explicit", *[f"--load-model={m}" for m in models]] if self.model_control \
            else ["--model-control-mode=none"]
        cmd = [str(root / "bin" / "tritonserver"), f"--model-repository={repo}", f"--backend-directory={backends}",
               *control,
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
               f"--http-port={self.ports['http']}", f"--grpc-port={self.ports['grpc']}",
               f"--metrics-port={self.ports['metrics']}", "--pinned-memory-pool-byte-size=0",
               "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false",
               f"--exit-timeout-secs={self.exit_timeout_s}",
               *[f"--{flag}={','.join(apis)}:{ADMIN_HEADER}={self.admin_key}"
                 for flag, apis in (("http-restricted-api", self.restricted["http"]),
                                    ("grpc-restricted-protocol", self.restricted["grpc"])) if apis]]
        out = self._open_log()
        try:  # a session of its own: a terminal's Ctrl-C reaches only us, and we stop it in order
            self.proc = subprocess.Popen(cmd, env=env, stdout=out or sys.stderr, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._failed(f"tritonserver exited with code {self.proc.returncode} while starting")
            if self.ready():
                self.models = models
                return self
            time.sleep(0.3)
        raise self._failed(f"tritonserver was not ready within {timeout:.0f} s")

    def _call(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://{self.http_url}{path}", method=method,
                                     data=b"{}" if method == "POST" else None,
                                     headers={ADMIN_HEADER: self.admin_key})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def ready(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self._call("GET", "/v2/health/ready", 1)[0] == 200

    def model_config(self, model: str) -> dict:
        status, body = self._call("GET", f"/v2/models/{model}/config")
        if status != 200:
            raise ServerError(f"model '{model}' has no configuration on the server (HTTP {status})")
        return json.loads(body)

    def stubs(self) -> dict[int, str]:
        """pid -> model instance name of the live python-backend stubs."""
        return {} if self.proc is None or self.proc.poll() is not None else python_stubs(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(self.exit_timeout_s + 5)
            # its group too: stubs of a server that died would linger a while
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for f in SHM_DIR.glob(self.shm_prefix + "*"):  # whatever the stubs left is ours to remove
                f.unlink(missing_ok=True)
        if self._private is not None:
            self._private.cleanup()
            self._private = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def model_of(instance: str) -> str:
    return re.sub(r"_\d+_\d+$", "", instance)


def tritonserver_available() -> str | None:
    """None when a server can be started here, else why not."""
    try:
        server_package()
    except ServerError as err:
        return str(err)
    return None
