"""A real Triton Inference Server (nvidia-pytriton's binary) serving a built repository."""
import threading
import time

import numpy as np
import pytest
from ports import free_ports, port_open

from stsun import load_profile
from stsun.app.pipeline import build_artifacts
from stsun.data.synthetic import synthetic_tiles
from stsun.runtime import EngineError, load_engine
from stsun.runtime.serving.repository import write_triton_repo
from stsun.runtime.serving.server import TritonServer, tritonserver_available

pytestmark = [pytest.mark.own_process,  # starts servers on loopback ports
              pytest.mark.skipif(tritonserver_available() is not None,
                                 reason=f"no Triton server here: {tritonserver_available()}")]



def settled_stats(client, before, inferences, model="sentinel2-scd", timeout=10):
    """The model's statistics once they count ``inferences`` more than ``before``: Triton records
    an execution just after its responses leave, so a fast client can read them a moment early."""
    deadline = time.monotonic() + timeout
    while True:
        now = client.get_inference_statistics(model)["model_stats"][0]
        if now["inference_count"] - before["inference_count"] >= inferences or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    build_artifacts(load_profile("sentinel2-scd"), root / "build", precisions=("fp32",), max_batch=8, fidelity_tiles=1)
    names = write_triton_repo(root / "build", root / "repo")
    # no TensorRT engine here, so no -trt model
    assert names == ["sentinel2-scd", "sentinel2-scd-onnx", "sentinel2-scd-dn", "sentinel2-scd-dn-onnx"]
    http, grpc, metrics = free_ports(3)
    server = TritonServer(root / "repo", http, grpc, metrics, log=root / "server.log")
    with server:
        yield root / "build", server
    assert server.proc.poll() is not None, "server process still running"
    assert not any(port_open(p) for p in (http, grpc, metrics)), "server ports still open"


def test_http_and_grpc_match_local_onnxruntime(served):
    build_dir, server = served
    local = load_engine(build_dir, backend="onnxruntime")
    x, _ = synthetic_tiles(local.profile, 3, seed=11)
    want = local(x)
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        remote = load_engine(build_dir, backend="triton", url=url, protocol=protocol)
        np.testing.assert_allclose(remote(x), want, rtol=0, atol=1e-5)


def test_scene_through_the_server_matches_local(served, tmp_path):
    """`stsun predict --backend triton --url ...` writes the local engine's map, nodata stripes included
    (uint16 digital numbers with nodata once failed to cast)."""
    import rasterio
    import tritonclient.http as httpclient
    from typer.testing import CliRunner

    from stsun.app.cli import app
    from stsun.data.synthetic import write_scene
    from stsun.runtime.scene import SceneOptions, predict_scene
    from stsun.tiling import tile_starts

    build_dir, server = served
    dates = write_scene(load_profile("sentinel2-scd"), tmp_path / "in", size=1100, height=256, seed=13,
                        nodata_stripes=3)["dates"]
    stats = httpclient.InferenceServerClient(server.http_url)
    before = stats.get_inference_statistics("sentinel2-scd-dn")["model_stats"][0]["inference_count"]
    res = CliRunner().invoke(app, ["predict", *map(str, dates), "-o", str(tmp_path / "remote.tif"), "--engine",
                                   str(build_dir), "--backend", "triton", "--url", server.http_url])
    assert res.exit_code == 0, res.output
    # uint16 digital numbers travelled (the DN model), half the bytes of scaled float32
    tiles = len(tile_starts(1100, 256, 256 - 64))  # one strip of tiles, default overlap a quarter tile
    assert stats.get_inference_statistics("sentinel2-scd-dn")["model_stats"][0]["inference_count"] - before == tiles
    predict_scene(load_engine(build_dir, backend="onnxruntime"), dates, tmp_path / "local.tif",
                  SceneOptions(progress=False))
    with rasterio.open(tmp_path / "remote.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        remote_map = a.read()
        assert (remote_map == b.read()).all() and (remote_map == 255).any()  # nodata was there, and kept


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_run_many_keeps_requests_in_flight(served, protocol):
    """The scene runner hands a strip's batches over together: six single-tile requests in flight
    at once, which the server's dynamic batcher merges into fewer executions."""
    import tritonclient.http as httpclient

    build_dir, server = served
    remote = load_engine(build_dir, backend="triton", url=getattr(server, f"{protocol}_url"), protocol=protocol)
    remote.max_batch = 1
    x, _ = synthetic_tiles(remote.profile, 6, seed=14)
    stats = httpclient.InferenceServerClient(server.http_url)
    before = stats.get_inference_statistics("sentinel2-scd")["model_stats"][0]
    outs = remote.run_many([x[i:i + 1] for i in range(6)])
    after = settled_stats(stats, before, 6)
    np.testing.assert_allclose(np.concatenate(outs), load_engine(build_dir, backend="onnxruntime")(x),
                               rtol=0, atol=1e-5)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 6 and executions < inferences, (inferences, executions)


def test_concurrent_clients_are_batched(served):
    import tritonclient.http as httpclient

    build_dir, server = served
    x, _ = synthetic_tiles(load_profile("sentinel2-scd"), 1, seed=12)
    stats = httpclient.InferenceServerClient(server.http_url)
    before = stats.get_inference_statistics("sentinel2-scd")["model_stats"][0]
    errors, done = [], []

    def client():
        engine = load_engine(build_dir, backend="triton", url=server.http_url)
        for _ in range(25):
            try:
                assert engine(x).shape == (1, 2, 6, 256, 256)
                done.append(1)
            except Exception as err:  # collected, asserted below
                errors.append(err)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(done) == 200
    after = settled_stats(stats, before, 200)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 200 and executions < inferences, (inferences, executions)


def test_bad_requests_get_clear_errors_and_server_keeps_serving(served):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    build_dir, server = served
    client = httpclient.InferenceServerClient(server.http_url)
    good, _ = synthetic_tiles(load_profile("sentinel2-scd"), 1, seed=13)

    def infer(array, dtype="FP32", model="sentinel2-scd"):
        inp = httpclient.InferInput("x", list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        return client.infer(model, [inp])

    nan = good.copy()
    nan[0, 0, 0, 0, 0] = np.nan
    cases = [(good[:, :, :, :128], "FP32", "sentinel2-scd", "unexpected shape"),
             (good.astype(np.float64), "FP64", "sentinel2-scd", "FP64"),
             (good[:, :, :9], "FP32", "sentinel2-scd", "unexpected shape"),
             (nan, "FP32", "sentinel2-scd", "NaN or infinite"),
             (good / 1e-4, "FP32", "sentinel2-scd", r"out of range: profile 'sentinel2-scd' expects scaled values"),
             (good, "FP32", "no-such-model", "no-such-model")]
    for array, dtype, model, message in cases:
        with pytest.raises(InferenceServerException, match=message):
            infer(array, dtype, model)
        assert client.is_server_live() and client.is_model_ready("sentinel2-scd")
    assert infer(good).as_numpy("logits").shape == (1, 2, 6, 256, 256)
    # the triton backend turns a rejection into an EngineError too
    with pytest.raises(EngineError, match="not ready"):
        load_engine(build_dir, backend="triton", url=server.http_url, model="no-such-model")
