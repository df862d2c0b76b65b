"""Remote inputs and object-store outputs against real servers on loopback: nginx (range requests)
and moto's S3 server, started here and always stopped. The scene is the demo's two-date
Sentinel-2 STAC layout (per-band COGs, 20 m bands at 20 m)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")
boto3 = pytest.importorskip("boto3", reason="the remote extra (boto3) is not installed")

from benchmarks.servers import moto_s3, nginx, nginx_binary, stalled_server  # noqa: E402
from stsun import load_profile  # noqa: E402
from stsun.data.demo import write_stac  # noqa: E402
from stsun.data.synthetic import write_scene  # noqa: E402
from stsun.errors import SceneError  # noqa: E402
from stsun.runtime import load_engine  # noqa: E402
from stsun.runtime.scene import SceneOptions, predict_scene  # noqa: E402

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx-light)")
BUCKET = "stsun-test"


@pytest.fixture(scope="module")
def build(scd_build):
    return scd_build


@pytest.fixture(scope="module")
def stac(tmp_path_factory):
    """The two dates as per-band files with a STAC Item each (relative hrefs): ``dateN/item.json``."""
    root = tmp_path_factory.mktemp("stac")
    scene = write_scene(load_profile("sentinel2-scd"), root / "scene", size=300, seed=4)
    write_stac(scene["dates"], root / "stac")
    return root / "stac"


@pytest.fixture(scope="module")
def http(stac, tmp_path_factory):
    with nginx(stac, tmp_path_factory.mktemp("nginx")) as (base, log):
        yield base, log


@pytest.fixture(scope="module")
def s3(stac):
    """moto's S3 server with the STAC directory uploaded under s3://BUCKET/stac/; its environment set."""
    with moto_s3() as env, pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket=BUCKET)
        for f in stac.rglob("*"):
            if f.is_file():
                client.upload_file(str(f), BUCKET, f"stac/{f.relative_to(stac)}")
        yield client


@pytest.fixture(scope="module")
def engine(build):
    return load_engine(build, backend="onnxruntime")


def run(engine, dates, out):
    return predict_scene(engine, dates, out, SceneOptions(progress=False))


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs


@pytest.fixture(scope="module")
def local_map(engine, stac, tmp_path_factory):
    return read(run(engine, [stac / "date1" / "item.json", stac / "date2" / "item.json"],
                    tmp_path_factory.mktemp("local") / "map.tif"))


def test_http_and_s3_stac_items_give_the_local_map(engine, local_map, http, s3, tmp_path):
    base, log = http
    before = len(Path(log).read_text().splitlines())
    via_http = read(run(engine, [f"{base}/date1/item.json", f"{base}/date2/item.json"], tmp_path / "http.tif"))
    via_s3 = read(run(engine, [f"s3://{BUCKET}/stac/date1/item.json", f"s3://{BUCKET}/stac/date2/item.json"],
                      tmp_path / "s3.tif"))
    for got in (via_http, via_s3):
        assert np.array_equal(got[0], local_map[0])
        assert got[1] == local_map[1] and got[2] == local_map[2]
    requests = Path(log).read_text().splitlines()[before:]
    assert all(r.split()[0] in ("200", "206") for r in requests)
    assert any(r.split()[0] == "206" for r in requests)  # windowed: range requests, not whole files


def test_s3_output_is_a_valid_cog_with_its_stac_item(build, stac, s3, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    cmd = [sys.executable, "-m", "stsun", "predict", str(stac / "date1" / "item.json"),
           str(stac / "date2" / "item.json"),
           "--engine", str(build), "-o", f"s3://{BUCKET}/results/map.tif"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"wrote s3://{BUCKET}/results/map.tif" in done.stdout  # as given, not collapsed to s3:/
    assert not (tmp_path / "s3:").exists()  # no local folder named after the scheme
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")["Contents"])
    assert keys == ["results/map.json", "results/map.tif"]
    s3.download_file(BUCKET, "results/map.tif", str(tmp_path / "map.tif"))
    valid, errors, _ = cog_validate(str(tmp_path / "map.tif"))
    assert valid, errors
    item = json.loads(s3.get_object(Bucket=BUCKET, Key="results/map.json")["Body"].read())
    check_result_item(item, tmp_path / "map.tif")


def check_result_item(item: dict, map_path: Path) -> None:
    """The result Item against the STAC core schema (pystac's bundled copy: offline) and its
    extension fields by structure (the extension schemas are fetched from the internet, which
    these machines cannot reach)."""
    import pystac
    from pystac.extensions.projection import ProjectionExtension
    from pystac.validation import validate_dict

    validate_dict(item, extensions=[])
    parsed = pystac.Item.from_dict(item)
    with rasterio.open(map_path) as src:
        proj = ProjectionExtension.ext(parsed)
        assert proj.code == f"EPSG:{src.crs.to_epsg()}" and proj.shape == [src.height, src.width]
        assert proj.transform == list(src.transform)[:6]
        assert len(item["assets"]["map"]["bands"]) == src.count
        nodata = src.nodata
    assert item["properties"]["stsun:profile"] == "sentinel2-scd"
    assert len(item["properties"]["stsun:build_report_sha256"]) == 64
    assert [i["id"] for i in item["properties"]["stsun:inputs"]] == ["S2B_33UUP_20230601", "S2B_33UUP_20240601"]
    assert item["properties"]["start_datetime"].startswith("2023-06-01") and \
        item["properties"]["end_datetime"].startswith("2024-06-01")
    classes = item["assets"]["map"]["bands"][0]["classification:classes"]
    assert {"value": int(nodata), "description": "no data", "name": "nodata", "nodata": True} in classes
    assert all("color_hint" in c for c in classes if not c.get("nodata"))
    assert any("classification" in e for e in item["stac_extensions"])


def test_a_failed_or_interrupted_upload_leaves_no_object_and_no_parts(s3, tmp_path, monkeypatch):
    from stsun.app import outputs

    with pytest.raises(SceneError), outputs.staged(f"s3://{BUCKET}/failed/map.tif") as local:
        local.write_bytes(b"half a map")
        raise SceneError("the scene failed")
    monkeypatch.setattr(outputs, "MULTIPART_BYTES", 5 << 20)  # S3's smallest part
    big = tmp_path / "big.tif"
    big.write_bytes(np.random.default_rng(0).bytes(12 << 20))
    make_client, parts = outputs.s3_client, []

    def dropping_client():  # the connection drops after the first part went up
        client = make_client()

        def drop(**_):
            parts.append(1)
            if len(parts) > 1:
                raise ConnectionResetError("connection reset by peer")

        client.meta.events.register("before-call.s3.UploadPart", drop)
        return client

    monkeypatch.setattr(outputs, "s3_client", dropping_client)
    with pytest.raises((SceneError, ConnectionResetError)):
        outputs.upload(big, f"s3://{BUCKET}/failed/big.tif")
    assert len(parts) >= 2  # it was a multipart upload, cut short
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="failed/")
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def cli_predict(build, dates, out, cwd, env=None):
    cmd = [sys.executable, "-m", "stsun", "predict", *dates, "--engine", str(build), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env={**os.environ, **(env or {})})


def test_a_missing_asset_ends_in_one_line_naming_url_and_status(build, stac, http, tmp_path):
    base, _ = http
    item = json.loads((stac / "date2" / "item.json").read_text())
    item["assets"]["nir"]["href"] = "gone.tif"
    (stac / "date2" / "gone.json").write_text(json.dumps(item))
    done = cli_predict(build, [f"{base}/date1/item.json", f"{base}/date2/gone.json?token=secret"],
                       tmp_path / "map.tif", tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert f"{base}/date2/gone.tif" in lines[0] and "404" in lines[0] and "secret" not in done.stderr
    assert not list(tmp_path.glob("map*"))


def test_a_stalled_server_times_out_in_one_line(build, tmp_path):
    with stalled_server() as base:
        start = time.monotonic()
        done = cli_predict(build, [f"{base}/a/item.json", f"{base}/b/item.json"], tmp_path / "map.tif", tmp_path,
                           env={"GDAL_HTTP_TIMEOUT": "2"})
        assert time.monotonic() - start < 60
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1 and "timeout" in lines[0] and f"{base}/a/item.json" in lines[0]
    assert not list(tmp_path.glob("map*"))


def test_predict_many_publishes_to_s3_fails_a_bad_job_alone_and_resumes_from_the_store(build, local_map, http, s3,
                                                                                     tmp_path):
    from distributed import LocalCluster

    from stsun.app.manifest import read_manifest
    from stsun.app.many import EngineSpec, RunOptions, predict_many

    base, _ = http
    good = [f"{base}/date1/item.json", f"{base}/date2/item.json"]
    jobs = [{"id": "a", "dates": good}, {"id": "b", "dates": [good[0], f"{base}/date9/item.json"]}]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    manifest = read_manifest(tmp_path / "jobs.json", 2, tmp_path / "items")
    store = f"s3://{BUCKET}/many/"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        def run():
            return predict_many(manifest, EngineSpec(str(build)), store,
                                RunOptions(scheduler=cluster.scheduler_address, progress=False, retries=0),
                                log=lambda _: None)

        first = run()
        second = run()
    status = {j["id"]: j for j in first["jobs"]}
    assert status["a"]["status"] == "done" and status["b"]["status"] == "failed"
    assert f"{base}/date9/item.json: HTTP 404" in status["b"]["error"] and "\n" not in status["b"]["error"]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="many/")["Contents"])
    assert keys == ["many/a.job.json", "many/a.json", "many/a.tif", "many/catalogue.json", "many/report.json"]
    s3.download_file(BUCKET, "many/a.tif", str(tmp_path / "a.tif"))
    assert np.array_equal(read(tmp_path / "a.tif")[0], local_map[0])
    catalogue = json.loads(s3.get_object(Bucket=BUCKET, Key="many/catalogue.json")["Body"].read())
    assert catalogue["type"] == "FeatureCollection" and [f["id"] for f in catalogue["features"]] == ["a"]
    check_result_item(catalogue["features"][0], tmp_path / "a.tif")
    # the second run finds a's map in the store and does not compute it again
    assert {j["id"]: j["status"] for j in second["jobs"]} == {"a": "skipped", "b": "failed"}


def test_a_remote_item_that_is_not_an_item_is_one_line_without_its_signature(stac, http):
    from stsun.runtime.scene_inputs import resolve_date

    base, _ = http
    (stac / "bad").mkdir(exist_ok=True)
    (stac / "bad" / "notjson.json").write_text("{not json")
    (stac / "bad" / "collection.json").write_text(json.dumps({"type": "Collection", "id": "c"}))
    (stac / "bad" / "bare.json").write_text(json.dumps({"id": "x"}))
    for name in ("notjson", "collection", "bare"):
        with pytest.raises(SceneError) as err:
            resolve_date(f"{base}/bad/{name}.json?X-Amz-Signature=secret", load_profile("sentinel2-scd"))
        message = str(err.value)
        assert message.startswith(f"{base}/bad/{name}.json?<redacted>: not a STAC Item"), message
        assert "secret" not in message and "\n" not in message


def test_assets_claiming_a_band_equally_are_named_without_their_signatures(stac, http):
    from stsun.runtime.scene_inputs import resolve_date

    base, _ = http
    item = json.loads((stac / "date1" / "item.json").read_text())
    blue = item["assets"].pop("blue")
    item["assets"]["x1"] = blue
    item["assets"]["x2"] = {**blue, "href": f"{base}/date1/{blue['href']}?X-Amz-Signature=secret"}
    (stac / "date1" / "twice.json").write_text(json.dumps(item))
    with pytest.raises(SceneError, match="several assets claim band B2") as err:
        resolve_date(f"{base}/date1/twice.json", load_profile("sentinel2-scd"))
    assert "secret" not in str(err.value) and "?<redacted>" in str(err.value)


@pytest.mark.parametrize("href", ["/etc/hostname", "file:///etc/hostname", "/vsis3/other-bucket/B02.tif"])
def test_a_remote_item_cannot_point_at_local_files(stac, http, href):
    from stsun.runtime.scene_inputs import resolve_date

    base, _ = http
    item = json.loads((stac / "date1" / "item.json").read_text())
    item["assets"]["blue"]["href"] = href
    (stac / "date1" / "local.json").write_text(json.dumps(item))
    with pytest.raises(SceneError, match="asset blue points at a local file") as err:
        resolve_date(f"{base}/date1/local.json", load_profile("sentinel2-scd"))
    assert "\n" not in str(err.value)


def test_an_upload_aborts_a_killed_runs_parts_but_not_a_live_duplicates(s3, tmp_path, monkeypatch):
    import datetime as dt

    from stsun.app import outputs

    small = tmp_path / "small.tif"
    small.write_bytes(b"a small map")
    live = s3.create_multipart_upload(Bucket=BUCKET, Key="dup/map.tif")["UploadId"]
    # moto reports a fixed Initiated time: this machine's clock is set relative to it
    begun = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="dup/")["Uploads"][0]["Initiated"]
    monkeypatch.setattr(outputs, "now", lambda: begun + dt.timedelta(seconds=1))
    outputs.upload(small, f"s3://{BUCKET}/dup/map.tif")  # a duplicate attempt's upload began a second ago
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET, Prefix="dup/").get("Uploads", [])] \
        == [live]
    monkeypatch.setattr(outputs, "now", lambda: begun + dt.timedelta(hours=1))  # an hour on: a killed run's
    outputs.upload(small, f"s3://{BUCKET}/dup/map.tif")
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix="dup/").get("Uploads")


def test_a_failing_cleanup_never_hides_the_error_that_led_to_it(s3):
    from botocore.exceptions import EndpointConnectionError

    from stsun.app import outputs

    client = outputs.s3_client()

    def unreachable(**_):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    client.meta.events.register("before-call.s3.ListMultipartUploads", unreachable)
    outputs.abort_parts(client, BUCKET, "any/map.tif")  # best effort: no exception of its own


def test_preview_and_user_tiles_read_remote_pixels_with_our_timeouts(engine, stac, http, tmp_path, monkeypatch):
    import contextlib

    from rasterio.env import get_gdal_config

    from stsun.app.user_tiles import _scene_images
    from stsun.runtime import scene_inputs
    from stsun.runtime.preview import preview
    from stsun.runtime.remote import HTTP_TIMEOUT_S

    base, _ = http
    dates = [f"{base}/date1/item.json", f"{base}/date2/item.json"]
    prediction = run(engine, [stac / "date1" / "item.json", stac / "date2" / "item.json"], tmp_path / "map.tif")
    timeouts, read = [], scene_inputs.DateReader.read

    def spy(self, window, *args, **kwargs):
        timeouts.append(get_gdal_config("GDAL_HTTP_TIMEOUT"))
        return read(self, window, *args, **kwargs)

    monkeypatch.setattr(scene_inputs.DateReader, "read", spy)
    monkeypatch.delenv("GDAL_HTTP_TIMEOUT", raising=False)
    pytest.importorskip("matplotlib")
    preview(dates, prediction, tmp_path / "map.png", engine.profile)
    with contextlib.ExitStack() as stack:
        image = _scene_images([("scene", dates)], engine.profile, stack)[0]
        image.read(0, 0)
    assert len(timeouts) == 4 and set(timeouts) == {HTTP_TIMEOUT_S}, timeouts


def test_each_read_ahead_thread_opens_its_own_file_only(engine, http, tmp_path, monkeypatch):
    from collections import Counter

    from stsun.runtime import scene_inputs

    base, _ = http
    opened, real_open = Counter(), scene_inputs._open

    def counting_open(path):
        opened[path] += 1
        return real_open(path)

    monkeypatch.setattr(scene_inputs, "_open", counting_open)
    run(engine, [f"{base}/date1/item.json", f"{base}/date2/item.json"], tmp_path / "map.tif")
    files = 2 * len(engine.profile.band_names)
    assert len(opened) == files  # each band file of the two dates
    # warming the headers, the grid, the scene's reader, the one read-ahead thread of that file
    assert max(opened.values()) <= 4, opened
