"""``stsun predict-many --scheduler`` across hosts of our own (network namespaces, ``tests/hosts.py``)
that share no disk: an S3 host (moto's server) holds the scenes (per-band COGs and STAC Items) and
receives the maps (``-o s3://...``); a ``dask scheduler`` host and 2-3 ``dask worker`` hosts, each
worker seeing an empty tmpfs over the whole temporary directory (so not the scenes, the client's
build or its staging folder: the engine is shipped, inputs and outputs go through S3); optionally a
``stsun serve`` host the workers use as Triton clients. Faults: a worker SIGKILLed mid-job, a
worker's link cut mid-job (and its late upload once the link is back), predict-many itself killed
and run again.

One build, one S3 host and one 3-worker cluster serve the module (the fault tests start 2-worker
clusters of their own, since they destroy workers). Every map in the store is compared with a local
``predict_scene`` of the same scene's local files. Each test prints its run and detection times
(pytest -s)."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the cluster extra (dask distributed) is not installed")
rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")
boto3 = pytest.importorskip("boto3", reason="the remote extra (boto3) is not installed")
pytest.importorskip("moto.server", reason="moto's S3 server (the dev extra's moto[s3], flask) is not installed")

from hosts import Network, dask_cluster, namespaces_refused, object_store, wait_for_port  # noqa: E402

from stsun import load_profile  # noqa: E402
from stsun.app.many import CLUSTER_CONFIG, cluster_env  # noqa: E402
from stsun.data.demo import write_stac  # noqa: E402
from stsun.data.synthetic import write_scene  # noqa: E402
from stsun.runtime import load_engine  # noqa: E402
from stsun.runtime.scene import SceneOptions, predict_scene  # noqa: E402

REFUSED = namespaces_refused()
if REFUSED:  # loud: CI's log shows why the multi-host tests did not run
    print(f"\n*** tests/test_hosts.py SKIPPED: {REFUSED} ***", file=sys.stderr)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(REFUSED), reason=f"no test hosts: {REFUSED}")]

PROFILE = load_profile("sentinel2-scd")
# the smallest scenes with several strips of several tiles (256 px tiles, 192 px steps: 3x3 and 4x4)
SCENES = {"a": 640, "b": 512, "c": 512, "d": 640}
BUCKET = "stsun-hosts"
FAULT_SCENES = ["a", "b", "c"]  # a job for the lost worker, one queued, one for the other worker
TRITON_SCENES = ["a", "b"]  # every tile goes through the server's python backend: the slowest run
RUN_S = 240  # the most one predict-many may take
# The client's staging folder for s3:// outputs (stsun.app.outputs), hidden from every worker
STAGING = Path(tempfile.gettempdir()) / f"stsun-outputs-{os.getuid()}"


def hidden_from_workers(root: Path) -> tuple[str, ...]:
    """This test run's temporary directory (the scenes, the client's build) and the client's
    staging folder: what no worker may see. Not all of the temporary directory: the code under
    test may itself live there (CI's clean clone)."""
    return str(root.parent), str(STAGING)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("hosts")
    assert path.parent == tmp_path_factory.getbasetemp()  # hidden_from_workers hides it
    return path


@pytest.fixture(scope="module")
def build(scd_build, tmp_path_factory):
    # the client's alone: hidden_from_workers hides it
    assert tmp_path_factory.getbasetemp() in scd_build.parents
    return scd_build


@pytest.fixture(scope="module")
def scenes(root):
    """Each scene's two dates as per-band COGs and STAC Items: ``name -> [date1/item.json, date2/item.json]``."""
    out = {}
    for i, (name, size) in enumerate(SCENES.items()):
        dates = write_scene(PROFILE, root / "scenes" / name / "raw", size=size, seed=i)["dates"]
        write_stac(dates, root / "scenes" / name / "stac")
        out[name] = [root / "scenes" / name / "stac" / f"date{t}" / "item.json" for t in (1, 2)]
    return out


@pytest.fixture(scope="module")
def reference(build, scenes, root):
    engine = load_engine(build)
    return {name: read(predict_scene(engine, items, root / "reference" / f"{name}.tif", SceneOptions(progress=False)))
            for name, items in scenes.items()}


@pytest.fixture(scope="module")
def network(root):
    net = Network(root / "logs")
    try:
        yield net
    finally:
        net.close()
        assert net.leftovers() == []  # no process, namespace or link survives the module


@pytest.fixture(scope="module")
def store(network, scenes, root):
    """The S3 host with every scene's files under s3://BUCKET/scenes/; its AWS_* environment set here
    too (the test's boto3, and predict-many's client, inherit it); a client; the manifest of s3:// URLs."""
    with object_store(network) as env, pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket=BUCKET)
        jobs = []
        for name in scenes:
            stac = root / "scenes" / name / "stac"
            for f in stac.rglob("*"):
                if f.is_file():
                    s3.upload_file(str(f), BUCKET, f"scenes/{name}/{f.relative_to(stac)}")
            jobs.append({"id": name, "dates": [f"s3://{BUCKET}/scenes/{name}/date{t}/item.json" for t in (1, 2)]})
        manifest = root / "client" / "jobs.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(jobs))
        yield env, s3, manifest


@pytest.fixture(scope="module")
def cluster(network, root, store):
    with dask_cluster(network, 3, str(root / "scratch"), hidden=hidden_from_workers(root),
                      env={**cluster_env(1), **store[0]}) as cl:
        yield cl


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.tags(), src.crs, src.transform


def start_run(manifest_path, build, prefix, scheduler, *options) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stsun.app.cli", "predict-many", str(manifest_path), "--engine", str(build),
           "-o", f"s3://{BUCKET}/{prefix}/", "--scheduler", scheduler, "--threads", "1", "--retries", "1", *options]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=RUN_S)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def objects(s3, prefix: str) -> dict[str, dict]:
    """key (under ``prefix/``) -> its listing entry."""
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/").get("Contents", [])
    return {o["Key"].removeprefix(f"{prefix}/"): o for o in listing}


def stored_map(s3, key: str, tmp_path: Path):
    local = tmp_path / key.replace("/", "_")
    s3.download_file(BUCKET, key, str(local))
    return read(local)


def check_store(s3, prefix, reference, tmp_path, done, failed=(), backend="onnxruntime"):
    """Every ``done`` job's map in the store equals the local one, with its record and Item; nothing
    else there but the report and the catalogue (no partial object, no multipart upload left); the
    catalogue lists exactly the done jobs. The report."""
    keys = set(objects(s3, prefix))
    assert keys == {f"{n}{s}" for n in done for s in (".tif", ".json", ".job.json")} | {"report.json",
                                                                                       "catalogue.json"}
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads")
    for name in done:
        bands, tags, crs, transform = stored_map(s3, f"{prefix}/{name}.tif", tmp_path)
        expected = reference[name.rstrip("2")]
        np.testing.assert_array_equal(bands, expected[0])
        assert (crs, transform) == expected[2:] and tags == {**expected[1], "backend": backend}
    catalogue = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/catalogue.json")["Body"].read())
    assert catalogue["type"] == "FeatureCollection" and sorted(f["id"] for f in catalogue["features"]) == sorted(done)
    report = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/report.json")["Body"].read())
    assert report["counts"]["done"] + report["counts"]["skipped"] == len(done)
    assert report["counts"]["failed"] == len(failed) and report["counts"]["pending"] == 0
    for job in report["jobs"]:
        if job["status"] == "done":
            assert job["output"] == f"s3://{BUCKET}/{prefix}/{job['id']}.tif"
    return report


def some_jobs(store, names: list[str]) -> Path:
    """A manifest of the store's manifest's jobs ``names``, beside it."""
    manifest = store[2]
    path = manifest.with_name("-".join(names) + ".json")
    path.write_text(json.dumps([j for j in json.loads(manifest.read_text()) if j["id"] in names]))
    return path


def worker_addresses(client) -> set[str]:
    return set(client.scheduler_info(n_workers=-1)["workers"])


def wait_until_executing(client, address: str, timeout: float = RUN_S) -> None:
    """Until the worker at ``address`` is running a job (checked every 0.1 s: jobs take a few seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = client.run(lambda dask_worker: len(dask_worker.state.executing), workers=[address])
        if busy.get(address):
            time.sleep(0.5)
            return
        time.sleep(0.1)
    raise AssertionError(f"{address} ran no job within {timeout} s")


def seconds_until_removed(client, address: str, since: float, timeout: float = 90) -> float:
    while time.monotonic() - since < timeout:
        if address not in worker_addresses(client):
            return time.monotonic() - since
        time.sleep(0.1)
    raise AssertionError(f"the scheduler still lists {address} {timeout} s after it was lost")


def idle(client, timeout: float = RUN_S) -> None:
    """Until no worker runs a job (Dask cannot stop a running task whose client went away)."""
    deadline = time.monotonic() + timeout
    while any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
        assert time.monotonic() < deadline, "the workers never went idle"
        time.sleep(0.2)


def test_three_hosts_share_no_disk_and_publish_every_map_to_s3(cluster, build, store, reference, root, tmp_path):
    from distributed import Client

    env, s3, manifest = store
    with Client(cluster.address) as client:
        # a worker sees an empty temporary directory: no scene, no build, no staged map of the client's
        assert not any(client.run(lambda: (build / "build_report.json").exists() or (root / "scenes").exists()
                                  ).values())
        assert all(client.run(lambda: os.environ["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]).values())
    start = time.monotonic()
    output = finish(proc := start_run(manifest, build, "results", cluster.address))
    seconds = time.monotonic() - start
    assert proc.returncode == 0, output
    report = check_store(s3, "results", reference, tmp_path, done=list(SCENES))
    assert report["counts"] == {"done": len(SCENES), "skipped": 0, "failed": 0, "pending": 0}
    workers = report["cluster"]["workers"]
    assert {a.split("://")[1].split(":")[0] for a in workers} == {h.address for h in cluster.workers}
    # each worker opened the shipped copy in its own scratch, after checking it
    assert all(w["build"].startswith(str(root / "scratch") + "/") and "/stsun-build-" in w["build"]
               for w in workers.values())
    assert report["cluster"]["worker_ttl_s"] == 10 and report["cluster"]["allowed_failures"] == 1
    # the maps went up from the workers, not the client: the S3 host's log names who sent each PUT
    uploaders = {line.split()[0] for line in (root / "logs" / "s3.log").read_text().splitlines()
                 if "PUT /stsun-hosts/results/" in line and ".tif" in line}
    assert uploaders and uploaders <= {h.address for h in cluster.workers}
    print(f"\n3 hosts, {len(SCENES)} scenes from and to S3: {seconds:.1f} s (jobs phase {report['seconds']} s, "
          f"start-up {report['startup_seconds']} s)")


@contextlib.contextmanager
def served(network, build, root):
    """``stsun serve --host ADDR`` on a host of its own (the build's repository); its URL."""
    from stsun.runtime.serving.repository import write_triton_repo

    repo = root / "serve" / "repo"
    write_triton_repo(build, repo)
    host = network.add("serve")
    proc = network.start(host, [sys.executable, "-m", "stsun.app.cli", "serve", "--repo", str(repo), "--host",
                                host.address, "--http-port", "8000", "--grpc-port", "8001", "--log",
                                str(root / "serve" / "triton.log"), "--probe-interval", "0"])
    start = time.monotonic()
    try:
        wait_for_port(host.address, 8000, timeout=180, proc=proc)
        import urllib.request
        while True:  # the front listens before every model is ready
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://{host.address}:8000/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() - start < 180 and proc.poll() is None, "stsun serve did not get ready"
            time.sleep(0.3)
        print(f"\nstsun serve ready on {host.address} after {time.monotonic() - start:.1f} s")
        yield f"{host.address}:8000"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # drains, stops tritonserver, removes its shared memory
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        network.remove(host)


def test_workers_as_triton_clients_of_a_server_host_give_the_same_maps(cluster, network, build, store, reference,
                                                                       root, tmp_path):
    pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")
    from stsun.runtime.serving.server import tritonserver_available

    if (why := tritonserver_available()) is not None:
        pytest.skip(f"no Triton server here: {why}")
    s3 = store[1]
    with served(network, build, root) as url:
        start = time.monotonic()
        output = finish(proc := start_run(some_jobs(store, TRITON_SCENES), build, "triton", cluster.address,
                                          "--backend", "triton", "--url", url))
        seconds = time.monotonic() - start
    assert proc.returncode == 0, output
    report = check_store(s3, "triton", reference, tmp_path, done=TRITON_SCENES, backend="triton")
    assert {w["url"] for w in report["cluster"]["workers"].values()} == {url}
    print(f"\n3 Triton-client hosts, {len(TRITON_SCENES)} scenes: {seconds:.1f} s (jobs phase {report['seconds']} s)")


def run_with_a_lost_worker(network, root, build, store, prefix, lose, allowed_failures=1, after=None):
    """Start predict-many of FAULT_SCENES on 2 fresh worker hosts, lose the first mid-job with
    ``lose(host)``; the run's output, report, seconds, the seconds until the scheduler removed the
    lost worker, and what ``after(cluster)`` returned (called once the run ended, the cluster still up)."""
    from distributed import Client

    env, s3, _ = store
    manifest = some_jobs(store, FAULT_SCENES)
    with dask_cluster(network, 2, str(root / "scratch"), hidden=hidden_from_workers(root), prefix=prefix,
                      env={**cluster_env(allowed_failures), **env}) as cl, Client(cl.address) as client:
        victim = next(a for a in worker_addresses(client) if cl.workers[0].address in a)
        start = time.monotonic()
        proc = start_run(manifest, build, prefix, cl.address)
        wait_until_executing(client, victim)
        lost = time.monotonic()
        lose(cl.workers[0])
        noticed = seconds_until_removed(client, victim, lost)
        output = finish(proc)
        seconds = time.monotonic() - start
        late = after(cl) if after else None
    report = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/report.json")["Body"].read())
    return proc.returncode, output, report, seconds, noticed, late


def test_a_worker_killed_mid_job_is_noticed_at_once_and_its_job_runs_elsewhere(network, root, build, store,
                                                                               reference, tmp_path):
    code, output, report, seconds, noticed, _ = run_with_a_lost_worker(network, root, build, store, "kill",
                                                                       network.kill)
    assert code == 0, output
    check_store(store[1], "kill", reference, tmp_path, done=FAULT_SCENES)
    assert noticed < 5  # the kernel closes the dead process's connections: no timeout involved
    print(f"\nworker SIGKILLed: removed after {noticed:.2f} s; run {seconds:.1f} s; "
          f"attempts {[j['attempts'] for j in report['jobs']]}")


LATE_S = 45  # how long the cut-off worker is watched once its link is back


def test_a_worker_cut_off_mid_job_is_noticed_in_seconds_and_a_late_upload_leaves_the_maps_whole_and_right(
        network, root, build, store, reference, tmp_path):
    s3 = store[1]
    seen: dict = {}

    def bring_back(cl):
        """The link back up once the run is over: what the cut-off worker does with its job then."""
        victim = cl.workers[0]
        seen["before"] = {k: o["ETag"] for k, o in objects(s3, "cut").items()}
        network.link_up(victim)
        back = time.monotonic()
        log = root / "logs" / "s3.log"
        while time.monotonic() - back < LATE_S and victim.processes[0].poll() is None:
            time.sleep(0.5)
        seen["exited"] = victim.processes[0].poll() is not None
        seen["seconds"] = time.monotonic() - back
        seen["puts"] = [line.split('"')[1] for line in log.read_text().splitlines()
                        if line.startswith(victim.address + " ") and "PUT /stsun-hosts/cut/" in line]

    code, output, report, seconds, noticed, _ = run_with_a_lost_worker(network, root, build, store, "cut",
                                                                       network.link_down, after=bring_back)
    assert code == 0, output
    # whole and right after any late upload (seen in 2 of 4 runs: map and Item re-sent identical, record replaced)
    check_store(s3, "cut", reference, tmp_path, done=FAULT_SCENES)
    ttl = float(CLUSTER_CONFIG["distributed.scheduler.worker-ttl"].removesuffix("s"))
    assert noticed < 2 * ttl + 5  # worker-ttl, checked every worker-ttl (Dask's default: 5 minutes)
    after = {k: o["ETag"] for k, o in objects(s3, "cut").items()}
    print(f"\nworker link down: removed after {noticed:.2f} s; run {seconds:.1f} s; "
          f"attempts {[j['attempts'] for j in report['jobs']]}; link back: worker exited={seen['exited']} after "
          f"{seen['seconds']:.1f} s, its late PUTs {seen['puts']}, objects changed "
          f"{sorted(k for k in after if after[k] != seen['before'].get(k))}")


def test_a_job_whose_workers_keep_dying_fails_with_the_reason_and_the_others_finish(network, root, build, store,
                                                                                  reference, tmp_path):
    code, output, report, seconds, noticed, _ = run_with_a_lost_worker(network, root, build, store, "fail",
                                                                       network.kill, allowed_failures=0)
    assert code == 1, output
    jobs = {j["id"]: j for j in report["jobs"]}
    failed = [j for j in jobs.values() if j["status"] == "failed"]
    # the job the worker ran fails, and in a run this small (not over 2 jobs per slot, so Dask assigns
    # them all at once) so may one it held waiting; the other worker's jobs finish
    assert 1 <= len(failed) <= 2 and report["counts"]["done"] == len(FAULT_SCENES) - len(failed)
    for job in failed:
        assert job["attempts"] == 1 and job["output"] is None
        assert job["error"].startswith("KilledWorker: Attempted to run task"), job["error"]
        assert "all those workers died while running it" in job["error"]
    check_store(store[1], "fail", reference, tmp_path, done=[j for j in jobs if jobs[j]["status"] == "done"],
                failed=failed)
    print(f"\nno retries left: {[j['id'] for j in failed]} failed, the others done; run {seconds:.1f} s")


def test_a_killed_client_reruns_only_the_missing_jobs(cluster, build, store, reference, root, tmp_path):
    from distributed import Client

    env, s3, manifest = store
    # more jobs than workers (the same scenes under second ids), so some are still waiting when it dies
    jobs = json.loads(manifest.read_text())
    more = root / "client" / "more.json"
    more.write_text(json.dumps(jobs + [{**j, "id": j["id"] + "2"} for j in jobs[:2]]))
    names = [j["id"] for j in jobs] + [j["id"] + "2" for j in jobs[:2]]
    with Client(cluster.address) as client:
        proc = start_run(more, build, "rerun", cluster.address)
        deadline = time.monotonic() + RUN_S
        while not any(k.endswith(".job.json") for k in objects(s3, "rerun")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the client only: the cluster lives on
        proc.wait()
        idle(client)
    recorded = {k.removesuffix(".job.json") for k in objects(s3, "rerun") if k.endswith(".job.json")}
    assert 0 < len(recorded) < len(names)
    stamps = {k: o["LastModified"] for k, o in objects(s3, "rerun").items()}
    start = time.monotonic()
    output = finish(rerun := start_run(more, build, "rerun", cluster.address))
    assert rerun.returncode == 0, output
    report = check_store(s3, "rerun", reference, tmp_path, done=names)
    assert {j["id"]: j["status"] for j in report["jobs"]} == {n: "skipped" if n in recorded else "done" for n in names}
    now = objects(s3, "rerun")
    assert all(now[f"{n}{s}"]["LastModified"] == stamps[f"{n}{s}"] for n in recorded for s in (".tif", ".json"))
    print(f"\nclient killed after {len(recorded)} of {len(names)} job(s) were published; "
          f"rerun {time.monotonic() - start:.1f} s")
