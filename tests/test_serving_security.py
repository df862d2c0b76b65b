"""`stsun serve` attacked as an untrusted client would: control APIs over HTTP and gRPC (uploaded
code must never run), requests that crashed tritonserver or gave 500s, memory bombs, and faults that
used to end the service (a frozen server or model process, a stub killed during its reload, a full
log disk, repeated crashes)."""
import base64
import gzip
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serving import MODEL, Serve, build_repo, http, infer_body, logits_of, peak_growth

from stsun.data.synthetic import synthetic_tiles
from stsun.runtime import load_engine
from stsun.runtime.serving.server import python_stubs, tritonserver_available

pytestmark = [pytest.mark.own_process,  # starts servers on loopback ports
              pytest.mark.skipif(tritonserver_available() is not None,
                                 reason=f"no Triton server here: {tritonserver_available()}")]
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("security"))


@pytest.fixture(scope="module")
def served(build):
    with Serve(build / "repo", build, None, "--request-timeout", "8") as server:
        yield server


@pytest.fixture(scope="module")
def local(build):
    return load_engine(build / "build", backend="onnxruntime")


def evil_model(marker: Path) -> tuple[str, bytes]:
    """A python-backend model whose code creates ``marker`` as soon as it is loaded."""
    config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0,
                         "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
                         "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}]})
    code = (f"open({str(marker)!r}, 'w').write('ran as uid %d' % __import__('os').getuid())\n"
            "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n").encode()
    return config, code


def assert_serves_correctly(server, local, pid, seed=1):
    """The same tritonserver process, and it returns the local engine's logits."""
    assert server.tritonserver == pid, server.output()
    x, _ = synthetic_tiles(local.profile, 1, seed=seed)
    np.testing.assert_allclose(logits_of(http(server.http, INFER, *infer_body(x)), 1), local(x), rtol=0, atol=1e-5)


def test_control_apis_are_refused_over_http(served, local, tmp_path):
    marker = tmp_path / "pwned"
    config, code = evil_model(marker)
    pid = served.tritonserver
    load = json.dumps({"parameters": {"config": config, "file:1/model.py": base64.b64encode(code).decode()}}).encode()
    attacks = [("/v2/repository/models/evil/load", load), (f"/v2/repository/models/{MODEL}/load", load),
               (f"/v2/repository/models/{MODEL}/unload", b"{}"), ("/v2/repository/index", b"{}"),
               ("/v2/logging", b'{"log_verbose_level": 3}'), ("/v2/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}'),
               ("/v2/systemsharedmemory/region/ipc/register", b'{"key": "/x", "offset": 0, "byte_size": 64}'),
               ("/v2/cudasharedmemory/region/c/register", b"{}"), ("/v2/systemsharedmemory/status", None),
               ("/v2/logging", None), (f"/v2/models/{MODEL}/../../repository/index", b"{}")]
    for path, body in attacks:
        status, data = http(served.http, path, body, {"Content-Type": "application/json"})
        assert status == 403 and "not served here" in data["error"], (path, status, data)
    status, data = http(served.http, "/v2/models/%2E%2E/repository/models/evil/load", load)
    assert status == 403, data  # decoded, the path is no model's
    # the public APIs still answer
    assert http(served.http, "/v2/health/live")[0] == 200
    assert http(served.http, f"/v2/models/{MODEL}")[1]["name"] == MODEL
    assert http(served.http, f"/v2/models/{MODEL}/config")[1]["max_batch_size"] == 8
    assert http(served.http, f"/v2/models/{MODEL}/stats")[0] == 200
    assert http(served.http, INFER)[0] == 405  # GET
    time.sleep(2.0)  # a model load, had one started, creates the marker within this
    assert not marker.exists()
    assert http(served.http, f"/v2/models/{MODEL}/ready")[0] == 200
    assert_serves_correctly(served, local, pid)


def test_control_apis_are_refused_over_grpc(served, local, tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    marker = tmp_path / "pwned"
    config, code = evil_model(marker)
    pid = served.tritonserver
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc}")
    attacks = {"load evil": lambda: client.load_model("evil", config=config, files={"file:1/model.py": code}),
               "replace the model": lambda: client.load_model(MODEL, config=config, files={"file:1/model.py": code}),
               "unload": lambda: client.unload_model(MODEL),
               "repository index": lambda: client.get_model_repository_index(),
               "logging": lambda: client.update_log_settings({"log_verbose_level": 3}),
               "trace": lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
               "shared memory": lambda: client.register_system_shared_memory("ipc", "/x", 64)}
    for what, attack in attacks.items():
        with pytest.raises(InferenceServerException, match="not served here") as err:
            attack()
        assert err.value.status() == "StatusCode.PERMISSION_DENIED", what
    assert client.is_model_ready(MODEL) and client.get_model_metadata(MODEL).name == MODEL
    time.sleep(2.0)
    assert not marker.exists()
    x, _ = synthetic_tiles(local.profile, 1, seed=2)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer(MODEL, [inp]).as_numpy("logits"), local(x), rtol=0, atol=1e-5)
    assert served.tritonserver == pid


def internal(server):
    """tritonserver's internal HTTP and gRPC ports and its secret, read as any local user can:
    from its command line."""
    argv = Path(f"/proc/{server.tritonserver}/cmdline").read_bytes().decode().split("\0")
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    return int(flags["http-port"]), int(flags["grpc-port"]), flags["http-restricted-api"].rsplit("=", 1)[1]


def test_triton_s_own_ports_need_the_secret_and_load_no_code_even_with_it(served, local, tmp_path):
    """A local user can read the secret from tritonserver's command line: with it the internal
    ports answer, but the server runs without model control, so no model can be loaded."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    marker = tmp_path / "pwned"
    config, code = evil_model(marker)
    pid = served.tritonserver
    http_port, grpc_port, key = internal(served)
    load = json.dumps({"parameters": {"config": config, "file:1/model.py": base64.b64encode(code).decode()}}).encode()
    status, data = http(http_port, "/v2/repository/index", b"{}")
    assert status == 403 and "restricted" in data["error"]  # no secret: nothing, health included
    assert http(http_port, "/v2/health/ready")[0] == 403
    for path in ("/v2/repository/models/evil/load", f"/v2/repository/models/{MODEL}/unload"):
        status, data = http(http_port, path, load, {"stsun-admin-key": key})
        assert status == 503 and "not allowed" in data["error"], data  # model control is off
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    with pytest.raises(InferenceServerException, match="restricted"):
        client.is_server_ready()
    with pytest.raises(InferenceServerException, match="not allowed"):
        client.load_model("evil", config=config, files={"file:1/model.py": code},
                          headers={"triton-grpc-protocol-stsun-admin-key": key})
    time.sleep(2.0)
    assert not marker.exists()
    assert_serves_correctly(served, local, pid, seed=12)


def test_grpc_messages_and_calls_are_bounded(served, local):
    """Four gzip messages that inflate to 400 MB each: refused by the gRPC front
    (RESOURCE_EXHAUSTED) before Triton sees them, with bounded memory; the probe parameter, shared
    memory and sequence parameters are refused; results stay correct."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    pid = served.tritonserver
    raw = bytes(400 * 2**20)
    errors = []

    def send():
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc}")
        inp = grpcclient.InferInput("x", [1, 2, 10, 256, 256], "FP32")
        inp._raw_content = raw  # declares one tile, carries 80 of them
        try:
            client.infer(MODEL, [inp], compression_algorithm="gzip")
        except InferenceServerException as err:
            errors.append(err)

    with peak_growth(served.proc.pid, pid) as grown:
        run_threads(send, 4)
    assert len(errors) == 4 and all(e.status() == "StatusCode.RESOURCE_EXHAUSTED" for e in errors), errors
    assert grown[pid] < 100_000 and grown[served.proc.pid] < 600_000, f"grew by {grown} kB (stsun serve, tritonserver)"
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc}")
    x, _ = synthetic_tiles(local.profile, 1, seed=13)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for options, reason in (({"parameters": {"stsun_probe": True}}, "stsun_probe"),
                            ({"sequence_id": 4}, "sequence_"), ({"parameters": {"x": "y"}}, "'x'")):
        with pytest.raises(InferenceServerException, match=reason) as err:
            client.infer(MODEL, [inp], **options)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [inp])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    np.testing.assert_allclose(client.infer(MODEL, [inp]).as_numpy("logits"), local(x), rtol=0, atol=1e-5)
    assert served.tritonserver == pid


def test_many_large_uploads_wait_for_room(served, local):
    """Six clients each upload 300 MB minus one byte and stall: the guard reads at most two such
    bodies at a time (its budget is twice the body limit), cuts stalled uploads after the request
    timeout (408), answers those that waited as long for room 503, and its memory stays bounded."""
    pid = served.tritonserver
    size = 300 * 2**20
    chunk = bytes(2**20)
    answers = []

    def upload():
        with socket.create_connection(("127.0.0.1", served.http), timeout=60) as s:
            s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {size}\r\n\r\n".encode())
            try:
                for _ in range(size // len(chunk) - 1):
                    s.sendall(chunk)
                s.sendall(chunk[:-1])
            except OSError:  # answered and closed before the whole body was sent
                pass
            answers.append(s.recv(4096).split(b"\r\n", 1)[0])

    with peak_growth(served.proc.pid) as grown:
        run_threads(upload, 6)
    # two are read and cut off; the others waited for room as long (503) or got it as they left
    assert len(answers) == 6 and answers.count(b"HTTP/1.1 408 Request Timeout") >= 2, answers
    assert set(answers) <= {b"HTTP/1.1 408 Request Timeout", b"HTTP/1.1 503 Service Unavailable"}, answers
    assert grown[served.proc.pid] < 1_000_000, (f"the guard grew by {grown[served.proc.pid] / 1e6:.2f} GB "
                                                "(6 x 0.3 GB sent)")
    assert_serves_correctly(served, local, pid, seed=14)


def test_the_request_that_aborted_tritonserver_is_a_400(served, local):
    """A duplicated 'shape' key: the guard once checked the last, Triton allocated the first."""
    pid = served.tritonserver
    body = (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[100000,2,10,256,256],'
            b'"shape":[1,2,10,256,256],"data":[0]}]}')
    for _ in range(5):  # four of these once ended the service
        status, data = http(served.http, INFER, body, {"Content-Type": "application/json"})
        assert status == 400 and "'shape' twice" in data["error"], data
    assert_serves_correctly(served, local, pid, seed=3)


def test_malformed_requests_are_4xx_never_500(served, local):
    pid = served.tritonserver
    x, _ = synthetic_tiles(local.profile, 1, seed=4)
    n = x.size

    def json_body(data):
        return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                       "data": data}]}).encode(), {"Content-Type": "application/json"}

    flat = [0.1] * (n - 1)
    binary, headers = infer_body(x)
    head_len = int(headers["Inference-Header-Content-Length"])
    negative = binary[:head_len].replace(f'"binary_data_size": {x.nbytes}'.encode(), b'"binary_data_size": -4')
    cases = {
        "nested 100000 deep": (b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}", {}),
        "header length ²": (binary, {**headers, "Inference-Header-Content-Length": "²"}),
        "a string in FP32 data": json_body(flat + ["0.1"]),
        "null in FP32 data": json_body(flat + [None]),
        "a boolean in FP32 data": json_body(flat + [True]),
        "an object in FP32 data": json_body(flat + [{"v": 0.1}]),
        "binary_data_size -4": (negative + x.tobytes(),
                                {**headers, "Inference-Header-Content-Length": str(len(negative))}),
        "NaN token": (json_body([0.1] * n)[0].replace(b"[0.1,", b"[NaN,", 1), {}),
        "an input name that is a list": (json.dumps({"inputs": [{"name": ["x"], "datatype": "FP32",
                                                                 "shape": [1], "data": [0]}]}).encode(), {}),
        "timeout beyond 64 bits": (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                                          "data": [0.1] * n}], "parameters": {"timeout": 2**64}}
                                              ).encode(), {}),
        "an id with a lone surrogate": (b'{"id": "\\ud800", "inputs": []}', {}),
        "an id with NUL": (b'{"id": "a\\u0000b", "inputs": []}', {}),
        "unsupported encoding": (binary, {**headers, "Content-Encoding": "br"}),
        "not gzip": (binary, {**headers, "Content-Encoding": "gzip"}),
    }
    for what, (body, hdrs) in cases.items():
        status, data = http(served.http, INFER, body, hdrs)
        assert 400 <= status < 500 and isinstance(data, dict) and data["error"], (what, status, data)
    # a gzip body the client sent on purpose is served
    got = logits_of(http(served.http, INFER, gzip.compress(binary), {**headers, "Content-Encoding": "gzip"}), 1)
    np.testing.assert_allclose(got, local(x), rtol=0, atol=1e-5)
    assert_serves_correctly(served, local, pid, seed=5)


def test_compressed_bombs_and_bodies_to_unknown_models_stay_bounded(served, local):
    """Four 2 MB gzip bodies that inflate to 2 GB each, at once: each a 413, and the guard's memory
    grows by at most two inflations up to the limit (about 0.34 GB each) instead of 3.4 GB."""
    pid = served.tritonserver
    bomb = gzip.compress(b" " * (2 * 10**9), compresslevel=9)
    assert len(bomb) < 3 * 10**6
    results = []

    def send():
        results.append(http(served.http, INFER, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"},
                            timeout=120))

    with peak_growth(served.proc.pid) as grown:
        run_threads(send, 4)
    assert [s for s, _ in results] == [413] * 4, results
    assert all("inflates to more than the limit" in d["error"] for _, d in results)
    assert grown[served.proc.pid] < 1_200_000, f"the guard grew by {grown[served.proc.pid] / 1e6:.2f} GB"
    # a 320 MB body to an unknown model is refused from its headers, before any of it is sent
    with socket.create_connection(("127.0.0.1", served.http), timeout=10) as s:
        s.sendall(f"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {320 * 2**20}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 404")
    assert_serves_correctly(served, local, pid, seed=6)


def run_threads(target, n, timeout=180):
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


def wait_for(condition, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def ready(server):
    return http(server.http, "/v2/health/ready", timeout=5)[0] == 200


def test_a_frozen_tritonserver_is_a_504_within_the_request_timeout(served, local):
    """SIGSTOP of tritonserver: the guard answers 504 after --request-timeout (8 s) instead of
    hanging, and serves again on SIGCONT."""
    pid = served.tritonserver
    x, _ = synthetic_tiles(local.profile, 1, seed=7)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        status, data = http(served.http, INFER, *infer_body(x), timeout=60)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 504 and "did not answer within 8 s" in data["error"], data
    assert 7 < took < 20
    assert wait_for(lambda: ready(served), 60), served.output()
    assert_serves_correctly(served, local, pid, seed=8)


def test_frozen_model_processes_are_not_ready_then_healed(served, local):
    """SIGSTOP of both stubs: readiness goes false over HTTP and gRPC (the probe gets 'not
    healthy'), the stubs are killed and the server restarted; correct results after, and `stsun
    serve` never exits."""
    import tritonclient.grpc as grpcclient

    stubs = served.stubs()
    frozen = [stubs[f"{MODEL}_0_0"], stubs[f"{MODEL}_0_1"]]
    for p in frozen:
        os.kill(p, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        assert wait_for(lambda: not ready(served), 30), served.output()
        down = time.monotonic() - t0
        assert http(served.http, f"/v2/models/{MODEL}/ready")[0] == 503
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc}")
        assert not grpc.is_model_ready(MODEL)
        assert wait_for(lambda: ready(served), 90), served.output()
    finally:
        for p in frozen:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert served.proc.poll() is None
    out = served.output()
    assert "does not answer its probe" in out and "killing its backend processes" in out, out
    assert not set(frozen) & set(served.stubs().values())
    print(f"not ready after {down:.1f} s, ready again after {time.monotonic() - t0:.1f} s")
    assert_serves_correctly(served, local, served.tritonserver, seed=9)


def test_stubs_killed_while_the_restarted_server_loads_do_not_end_the_service(build, local, tmp_path):
    server = Serve(build / "repo", tmp_path).wait_ready()
    try:
        first = server.tritonserver
        os.kill(server.stubs()[f"{MODEL}_0_1"], signal.SIGKILL)
        # the stubs of the restarted server, killed while it loads its models
        killed = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(killed) < 2:
            try:
                triton = server.tritonserver
            except (ValueError, OSError):  # between two servers
                continue
            if triton != first:
                for pid in python_stubs(triton):
                    if pid not in killed:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
            time.sleep(0.02)
        assert len(killed) == 2 and not ready(server), server.output()
        assert wait_for(lambda: ready(server), 150), server.output()
        assert server.proc.poll() is None
        assert_serves_correctly(server, local, server.tritonserver, seed=10)
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.output()


def test_restarts_are_a_rate_and_a_full_log_disk_does_not_stop_serving(build, local, tmp_path):
    """--log /dev/full (every write fails with ENOSPC): serving starts and says so once. With at
    most 1 restart per 5 s, three crashes spaced beyond that are each restarted (a lifetime count
    would have ended the service)."""
    server = Serve(build / "repo", tmp_path, None, "--restarts", "1", "--restart-window", "5",
                   log=Path("/dev/full")).wait_ready()
    try:
        for _ in range(3):
            old = server.tritonserver
            os.kill(old, signal.SIGKILL)
            assert wait_for(lambda: not Path(f"/proc/{old}").exists() or not ready(server), 10)
            assert wait_for(lambda: ready(server), 90), server.output()
            assert server.tritonserver != old
            time.sleep(5.5)  # beyond the window: the next crash is within the budget again
        out = server.output()
        assert out.count("cannot write the log /dev/full") == 1, out
        assert out.count("restarting tritonserver (1 of at most 1 in 5 s)") == 3, out
        assert_serves_correctly(server, local, server.tritonserver, seed=11)
        # two crashes within the window exceed the rate: `stsun serve` ends, saying why
        os.kill(server.tritonserver, signal.SIGKILL)
        assert wait_for(lambda: ready(server), 90), server.output()
        os.kill(server.tritonserver, signal.SIGKILL)
        assert server.proc.wait(60) == 2
        assert "was started 1 times in the last 5 s already" in server.output()
    finally:
        server.stop()


def test_serve_writes_nothing_into_its_working_directory(build, tmp_path):
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    server = Serve(build / "repo", tmp_path, None, log=None, cwd=work,
                   env={**os.environ, "XDG_STATE_HOME": str(state)}).wait_ready()
    server.stop()
    assert server.proc.returncode == 0, server.output()
    assert list(work.iterdir()) == []
    log = state / "stsun" / f"triton-{server.http}.log"
    assert log.is_file() and f"log {log}" in server.output()
