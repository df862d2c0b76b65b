"""`stsun serve` as an operator runs it (a subprocess on loopback ports) against hostile input and
faults: oversized declared shapes, abandoned requests, client errors while good traffic flows, a
crashed model process, a taken port, SIGTERM under load, SIGKILL of the supervisor."""
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from ports import free_ports, port_open
from serving import MODEL, Serve, build_repo, http, infer_body, logits_of, wait_idle

from stsun.data.synthetic import synthetic_tiles
from stsun.errors import InputError
from stsun.runtime import load_engine
from stsun.runtime.serving.server import SHM_DIR, SHM_PREFIX, remove_stale_shm, tritonserver_available

pytestmark = [pytest.mark.own_process,  # starts servers on loopback ports
              pytest.mark.skipif(tritonserver_available() is not None,
                                 reason=f"no Triton server here: {tritonserver_available()}")]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def served(build):
    with Serve(build / "repo", build) as server:
        yield server


@pytest.fixture(scope="module")
def local(build):
    return load_engine(build / "build", backend="onnxruntime")


def test_oversized_declared_shapes_are_refused_before_allocation(served, local):
    """The 90-byte request that aborted tritonserver with std::bad_alloc is a 400 now, with a reason;
    [400, ...] too; a body over the limit is a 413; the server serves correct results after."""
    rss_before = int(Path(f"/proc/{served.tritonserver}/status").read_text().split("VmRSS:")[1].split()[0])
    for batch in (100000, 400, 9, 0):
        body = json.dumps({"inputs": [{"name": "x", "shape": [batch, 2, 10, 256, 256], "datatype": "FP32",
                                       "data": [0.1]}]}).encode()
        status, data = http(served.http, f"/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"})
        assert status == 400 and "must have shape [1..8, 2, 10, 256, 256]" in data["error"], (batch, data)
    # a body announced over the limit is refused from its headers, before any of it is read
    with socket.create_connection(("127.0.0.1", served.http), timeout=30) as s:
        s.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {10**10}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    rss_after = int(Path(f"/proc/{served.tritonserver}/status").read_text().split("VmRSS:")[1].split()[0])
    assert rss_after - rss_before < 100_000, "the server allocated for a refused request"  # kB
    x, _ = synthetic_tiles(local.profile, 2, seed=3)
    got = logits_of(http(served.http, f"/v2/models/{MODEL}/infer", *infer_body(x)), 2)
    np.testing.assert_allclose(got, local(x), rtol=0, atol=1e-5)


def test_a_binary_request_without_content_type_does_not_crash_the_server(served, local):
    """Sent straight to tritonserver 2.51, one binary-tensor request without a Content-Type (urllib
    then says form-urlencoded) is a segfault; through `stsun serve` it is answered."""
    x, _ = synthetic_tiles(local.profile, 1, seed=10)
    body, headers = infer_body(x)
    del headers["Content-Type"]
    triton = served.tritonserver
    got = logits_of(http(served.http, f"/v2/models/{MODEL}/infer", body, headers), 1)
    np.testing.assert_allclose(got, local(x), rtol=0, atol=1e-5)
    assert served.tritonserver == triton and "exited" not in served.output()  # the same process, never restarted


def test_client_errors_are_4xx_while_good_traffic_stays_correct(served, local):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    x, _ = synthetic_tiles(local.profile, 1, seed=4)
    want = local(x)
    good, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            good.append(logits_of(http(served.http, f"/v2/models/{MODEL}/infer", *infer_body(x)), 1))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    nan = x.copy()
    nan[0, 0, 0, 0, 0] = np.nan
    path = f"/v2/models/{MODEL}/infer"
    cases = {"NaN": (path, *infer_body(nan)), "out of range": (path, *infer_body(x * 1e4)),
             "wrong dtype": (path, *infer_body(x.astype(np.float16), datatype="FP16")),
             "wrong shape": (path, *infer_body(np.ascontiguousarray(x[:, :, :9]))),
             "unknown input": (path, *infer_body(x, name="y")),
             "over max batch": (path, *infer_body(np.repeat(x, 9, axis=0))),
             "malformed body": (path, b'{"inputs": [', {}),
             "header length beyond body": (path, b"{}", {"Inference-Header-Content-Length": "99"}),
             "unknown model": ("/v2/models/nope/infer", *infer_body(x))}
    try:
        for what, (p, body, headers) in cases.items():
            status, data = http(served.http, p, body, headers)
            assert 400 <= status < 500 and data["error"], (what, status, data)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc}")
        # a batch over the maximum is a message over the gRPC front's size limit: refused unread
        for array, status in ((nan, "INVALID_ARGUMENT"), (np.repeat(x, 9, axis=0), "RESOURCE_EXHAUSTED")):
            inp = grpcclient.InferInput("x", list(array.shape), "FP32")
            inp.set_data_from_numpy(array)
            with pytest.raises(InferenceServerException) as err:
                client.infer(MODEL, [inp])
            assert err.value.status() == f"StatusCode.{status}", err.value
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert len(good) >= 2
    for got in good:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_dn_model_returns_the_local_maps(served, build, local, protocol):
    """Raw uint16 DN in, the uint8 maps of `stsun predict` out, exactly as the local engine makes them."""
    p = local.profile
    rng = np.random.default_rng(5)
    dn = rng.integers(1, 9000, (3, *p.input_shape)).astype(np.uint16)
    dn[0, 1, :, :40, :50] = 0        # nodata (0) in the second date
    dn[2, 0, 4, 100:120, :] = 0      # one band missing
    port = served.http if protocol == "http" else served.grpc
    remote = load_engine(build / "build", backend="triton", url=f"127.0.0.1:{port}", protocol=protocol)
    want_maps, want_logits = local.maps(dn, with_logits=True)
    maps = remote.maps(dn)
    assert maps.dtype == np.uint8 and maps.shape == (3, 3, 256, 256)
    assert (maps == want_maps).all()
    assert (maps[0, :, :40, :50] == 255).all() and (maps[2, :, 100:120] == 255).all()
    maps2, logits = remote.maps(dn, with_logits=True)
    assert (maps2 == want_maps).all()
    np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="uint16"):
        remote.maps(dn.astype(np.int32))


def test_abandoned_requests_do_not_pile_up(served, local):
    """16 clients x 10 batch-4 requests that each give up after 1 s: the bounded queue turns most
    of them away instead of computing them all; a fresh request is then answered within the queue
    timeout (10 s) plus one execution, and correctly."""
    x, _ = synthetic_tiles(local.profile, 4, seed=6)
    body, headers = infer_body(x)
    stats_path = f"/v2/models/{MODEL}/stats"
    before = http(served.http, stats_path)[1]["model_stats"][0]["inference_stats"]["success"]["count"]

    def client():
        for _ in range(10):
            try:
                http(served.http, f"/v2/models/{MODEL}/infer", body, headers, timeout=1)
            except (TimeoutError, urllib.error.URLError, ConnectionError):
                pass  # abandoned

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    t0 = time.monotonic()
    while (answer := http(served.http, f"/v2/models/{MODEL}/infer", *infer_body(x[:1]), timeout=120))[0] == 503:
        assert "Exceeds maximum queue size" in answer[1]["error"]  # a full queue says so at once
        time.sleep(0.5)  # and a client retries
    got = logits_of(answer, 1)
    waited = time.monotonic() - t0
    np.testing.assert_allclose(got, local(x[:1]), rtol=0, atol=1e-5)
    assert waited < 20, f"a fresh request waited {waited:.1f} s behind abandoned ones"
    computed = http(served.http, stats_path)[1]["model_stats"][0]["inference_stats"]["success"]["count"] - before
    assert computed < 160, "every abandoned request was computed"  # 34 of 160 on the 2-core machine
    wait_idle(served)


def test_cancelled_grpc_requests_are_not_computed(served, local):
    """gRPC clients can cancel: requests cancelled while queued are never computed."""
    import tritonclient.grpc as grpcclient

    wait_idle(served)
    x, _ = synthetic_tiles(local.profile, 8, seed=9)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc}")

    def stats():
        return client.get_inference_statistics(MODEL).model_stats[0]

    before = stats()
    done = []
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    calls = [client.async_infer(MODEL, [inp], lambda result, error: done.append((result, error))) for _ in range(6)]
    time.sleep(0.3)  # all six sent; one batch of 8 tiles executes at a time
    for call in calls[1:]:
        call.cancel()
    deadline = time.monotonic() + 60
    while len(done) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    after = stats()
    cancelled = [e for _, e in done if e is not None]
    assert len(done) == 6 and len(cancelled) >= 3, done
    assert all("CANCELLED" in str(e.status()) for e in cancelled), cancelled
    # two instances start the first two at once; a third may already sit in the next batch.
    # stsun serve's probes (batch 1) count too: with a batch-8 requests and p probes computed,
    # successes grow by a + p and inferences by 8a + p
    successes = after.inference_stats.success.count - before.inference_stats.success.count
    computed = (after.inference_count - before.inference_count - successes) / 7
    assert computed == int(computed) and computed <= 3, (successes, computed)


def test_a_crashed_model_process_is_healed(served, local):
    """Kill the python backend's stub under load: readiness goes false, comes back within 30 s
    (about 2 s here), and results are correct again; requests caught in the dead process fail
    with a server error within seconds."""
    wait_idle(served)
    x, _ = synthetic_tiles(local.profile, 1, seed=7)
    want = local(x)
    results, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            t0 = time.monotonic()
            status, data = http(served.http, f"/v2/models/{MODEL}/infer", *infer_body(x))
            results.append((time.monotonic(), status, time.monotonic() - t0, data))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    killed = time.monotonic()
    stubs = served.stubs()
    assert {f"{MODEL}_0_0", f"{MODEL}_0_1"} <= set(stubs)  # two instances; one of them dies
    os.kill(stubs[f"{MODEL}_0_1"], signal.SIGKILL)
    seen_down = back = None
    while time.monotonic() - killed < 40 and back is None:
        ready = http(served.http, f"/v2/models/{MODEL}/ready", timeout=5)[0] == 200
        if not ready and seen_down is None:
            seen_down = time.monotonic()
        if ready and seen_down is not None:
            back = time.monotonic()
        time.sleep(0.1)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert seen_down is not None and back is not None, served.output()
    assert back - killed < 30
    after = [(s, d) for t, s, took, d in results if t - took > back]  # sent once it was back
    assert after and all(s == 200 for s, _ in after)
    np.testing.assert_allclose(logits_of(after[-1], 1), want, rtol=0, atol=1e-5)
    failed = [(s, took, d) for t, s, took, d in results if s != 200]
    assert all(500 <= s < 600 and took < 5 for s, took, _ in failed), failed
    assert "died; restarting tritonserver" in served.output() and "serving again" in served.output()
    assert len(served.stubs()) == len(stubs)


def test_a_dead_tritonserver_is_restarted(build, local, tmp_path):
    """tritonserver itself killed (SIGKILL): `stsun serve` starts a new one on the same ports and
    serves correct results again; readiness is 503 in between."""
    server = Serve(build / "repo", tmp_path).wait_ready()
    try:
        x, _ = synthetic_tiles(local.profile, 1, seed=11)
        old = server.tritonserver
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        assert http(server.http, "/v2/health/ready", timeout=5)[0] == 503
        while time.monotonic() - killed < 60 and http(server.http, "/v2/health/ready", timeout=5)[0] != 200:
            time.sleep(0.2)
        assert time.monotonic() - killed < 60, server.output()  # a whole new server: ~10 s alone, more under load
        assert server.tritonserver != old and "restarting tritonserver (1 of at most 5 in 600 s)" in server.output()
        got = logits_of(http(server.http, f"/v2/models/{MODEL}/infer", *infer_body(x)), 1)
        np.testing.assert_allclose(got, local(x), rtol=0, atol=1e-5)
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.output()
    assert not list(SHM_DIR.glob(f"{SHM_PREFIX}{server.proc.pid}_*"))  # the killed server's regions too


def test_a_taken_port_is_an_error(build, tmp_path):
    for taken in range(3):
        ports = free_ports(3)
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", ports[taken]))
            holder.listen()
            server = Serve(build / "repo", tmp_path, ports)
            assert server.proc.wait(60) == 2
        out = server.output()
        assert "already in use" in out and str(ports[taken]) in out and "serving" not in out, out


def test_sigterm_drains_in_flight_requests_and_frees_everything(build, local, tmp_path):
    server = Serve(build / "repo", tmp_path).wait_ready()
    x, _ = synthetic_tiles(local.profile, 8, seed=8)
    want = local(x)
    body, headers = infer_body(x)
    results = []

    def client():
        results.append(http(server.http, f"/v2/models/{MODEL}/infer", body, headers, timeout=120))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    # all three inside Triton: two executing (two instances), one waiting in its queue
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not re.search(
            rf'nv_inference_pending_request_count{{model="{MODEL}",version="1"}} [1-9]',
            http(server.metrics, "/metrics")[1].decode()):
        time.sleep(0.05)
    triton = server.tritonserver
    server.proc.send_signal(signal.SIGTERM)
    while port_open(server.http) and http(server.http, "/v2/health/ready", timeout=5)[0] != 503:
        time.sleep(0.05)  # the drain has begun
    late = http(server.http, f"/v2/models/{MODEL}/infer", *infer_body(x[:1])) if port_open(server.http) else (503, None)
    assert late[0] == 503
    for t in threads:
        t.join(120)
    assert server.proc.wait(60) == 0, server.output()
    assert len(results) == 3
    for r in results:
        np.testing.assert_allclose(logits_of(r, 8), want, rtol=0, atol=1e-5)
    assert not Path(f"/proc/{triton}").exists()
    assert not any(port_open(p) for p in (server.http, server.grpc, server.metrics))
    assert not list(SHM_DIR.glob(f"{SHM_PREFIX}{server.proc.pid}_*"))


def test_sigkill_of_serve_takes_the_server_down(build, tmp_path):
    server = Serve(build / "repo", tmp_path).wait_ready()
    triton = server.tritonserver
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (Path(f"/proc/{triton}").exists()
                                           or any(port_open(p) for p in (server.grpc, server.metrics))):
        time.sleep(0.2)
    assert not Path(f"/proc/{triton}").exists(), "tritonserver outlived stsun serve"
    assert not any(port_open(p) for p in (server.grpc, server.metrics))
    time.sleep(1.0)  # the stubs notice their parent is gone
    left = list(SHM_DIR.glob(f"{SHM_PREFIX}{server.proc.pid}_*"))
    removed = remove_stale_shm()  # what the next `stsun serve` does first
    assert sorted(f.name for f in left) == sorted(r for r in removed if r.startswith(f"{SHM_PREFIX}{server.proc.pid}_"))
    assert not list(SHM_DIR.glob(f"{SHM_PREFIX}{server.proc.pid}_*"))
