"""`stsun serve` as tests drive it: a subprocess on loopback ports, and the requests clients send."""
import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from ports import free_ports, port_open

from stsun import load_profile
from stsun.app.pipeline import build_artifacts
from stsun.runtime.serving.repository import write_triton_repo
from stsun.runtime.serving.server import child_pids, python_stubs

MODEL = "sentinel2-scd"


def http(port, path, body=None, headers=None, timeout=60):
    """(status, parsed JSON or raw bytes) of one request; never raises on an HTTP status."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, data = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data


class Serve:
    """`stsun serve` in a subprocess; ``log=None`` leaves the log at its default place."""

    def __init__(self, repo, tmp, ports=None, *options, log="default", cwd=None, env=None):
        self.http, self.grpc, self.metrics = ports or free_ports(3)
        self.log = tmp / f"triton-{self.http}.log" if log == "default" else log
        self.out = open(tmp / f"serve-{self.http}.out", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stsun.app.cli", "serve", "--repo", str(repo), "--http-port", str(self.http),
             "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
             *(["--log", str(self.log)] if self.log else []), "--drain-timeout", "30", *options],
            stdout=self.out, stderr=subprocess.STDOUT, cwd=cwd, env=env)

    def wait_ready(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if port_open(self.http) and http(self.http, "/v2/health/ready", timeout=2)[0] == 200:
                return self
            time.sleep(0.3)
        self.proc.kill()  # a failed test leaves no server behind (tritonserver dies with it)
        self.proc.wait()
        raise AssertionError(f"not ready: {self.output()}")

    def output(self):
        self.out.flush()
        self.out.seek(0)
        return self.out.read()

    @property
    def tritonserver(self):
        (pid,) = [c for c in child_pids(self.proc.pid) if b"tritonserver" in Path(f"/proc/{c}/cmdline").read_bytes()]
        return pid

    def stubs(self):
        """model instance name -> pid of its python-backend stub."""
        return {name: pid for pid, name in python_stubs(self.tritonserver).items()}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def __enter__(self):
        return self.wait_ready()

    def __exit__(self, kind, *_):
        self.stop()
        if kind is None:  # a clean block ends in a clean exit (a failure inside is not masked)
            assert self.proc.returncode == 0, self.output()



def wait_idle(server, model=MODEL, timeout=120):
    """Until the model's queue is empty and its last executions are done: the next test starts
    clean (the abandoned-requests test leaves a full queue behind)."""
    deadline = time.monotonic() + timeout
    pattern = rf'nv_inference_pending_request_count{{model="{model}",version="1"}} 0\b'
    while time.monotonic() < deadline and not re.search(pattern, http(server.metrics, "/metrics")[1].decode()):
        time.sleep(0.2)
    time.sleep(2.0)  # executions already started (about 1 s for a batch of 8 here)


def infer_body(x, name="x", datatype="FP32"):
    """A binary-tensor HTTP request body and its headers."""
    header = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def logits_of(status_and_data, batch):
    status, data = status_and_data
    assert status == 200, data
    return np.frombuffer(data[-batch * 2 * 6 * 256 * 256 * 4:], np.float32).reshape(batch, 2, 6, 256, 256)


def build_repo(root: Path) -> Path:
    """The default profile's fp32 build (max batch 8) and its model repository under ``root``."""
    build_artifacts(load_profile(MODEL), root / "build", precisions=("fp32",), max_batch=8, fidelity_tiles=1)
    write_triton_repo(root / "build", root / "repo")
    return root


def rss_kb(pid):
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


@contextlib.contextmanager
def peak_growth(*pids):
    """Yields a dict that holds, once the block ends, how many kB each process's resident memory
    rose above its start at its peak (sampled every 10 ms)."""
    base = {p: rss_kb(p) for p in pids}
    peak, stop = dict(base), threading.Event()

    def watch():
        while not stop.is_set():
            for p in pids:
                peak[p] = max(peak[p], rss_kb(p))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    grown = {}
    try:
        yield grown
    finally:
        stop.set()
        watcher.join()
        grown.update({p: peak[p] - base[p] for p in pids})
