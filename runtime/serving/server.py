"""Start a real Triton Inference Server (the binary shipped in nvidia-pytriton) on 127.0.0.1.

That wheel carries only the python backend, so only python-backend models are loaded
(explicit model control); the onnxruntime_onnx / tensorrt_plan flavours are for NVIDIA's
container. Nothing is downloaded or installed at run time.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from stsun.errors import ServerError


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


class TritonServer:
    """Context manager: a tritonserver process serving ``repo`` on 127.0.0.1."""

    def __init__(self, repo: str | Path, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 log: Path | None = None) -> None:
        self.repo = Path(repo).resolve()
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.log = log
        self.proc: subprocess.Popen | None = None
        self._backends: tempfile.TemporaryDirectory | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def _backend_dir(self, root: Path) -> Path:
        # The server wants python/{libtriton_python.so, utils, stub} side by side. Links, not
        # copies: a copied stub loses its relative RPATH and the model hangs in loading.
        self._backends = tempfile.TemporaryDirectory(prefix="stsun-triton-backends-")
        py = Path(self._backends.name) / "python"
        py.mkdir()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"the server has no python backend stub for Python {version}")
        for src in (root / "backends" / "python" / "libtriton_python.so",
                    root / "backends" / "python" / "triton_python_backend_utils.py", stub):
            (py / src.name).symlink_to(src)
        return Path(self._backends.name)

    def start(self, timeout: float = 60.0) -> "TritonServer":
        if not self.repo.is_dir():
            raise ServerError(f"model repository not found: {self.repo}")
        models = python_models(self.repo)
        if not models:
            raise ServerError(f"{self.repo} has no python-backend model; write one with `stsun triton-repo`")
        root = server_package()
        env = dict(os.environ)
        # The stub's embedded Python ignores PYTHONPATH: it finds numpy/onnxruntime through PATH
        # (this interpreter's environment first) and needs the matching libpython.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = f"{sysconfig.get_config_var('LIBDIR')}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
        cmd = [str(root / "bin" / "tritonserver"), f"--model-repository={self.repo}",
               f"--backend-directory={self._backend_dir(root)}", "--model-control-mode=explicit",
               *[f"--load-model={m}" for m in models],
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
               f"--http-port={self.ports['http']}", f"--grpc-port={self.ports['grpc']}",
               f"--metrics-port={self.ports['metrics']}", "--pinned-memory-pool-byte-size=0",
               "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
        out = open(self.log, "w") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ServerError(f"tritonserver exited with code {self.proc.returncode}"
                                  + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        self.models = models
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.stop()
        raise ServerError(f"tritonserver was not ready within {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if self._backends is not None:
            self._backends.cleanup()
            self._backends = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tritonserver_available() -> str | None:
    """None when a server can be started here, else why not."""
    try:
        server_package()
    except ServerError as err:
        return str(err)
    return None
