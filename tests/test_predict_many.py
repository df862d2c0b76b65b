"""``stsun predict-many``: manifests, and jobs on a Dask LocalCluster of 2 worker processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the cluster extra (dask distributed) is not installed")
rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")

from stsun import load_profile  # noqa: E402
from stsun.app.manifest import Job, Manifest, read_manifest  # noqa: E402
from stsun.app.many import REPORT_NAME, EngineSpec, RunOptions, predict_many  # noqa: E402
from stsun.data.synthetic import write_band_files, write_scene  # noqa: E402
from stsun.errors import ClusterError, ManifestError  # noqa: E402
from stsun.runtime import load_engine  # noqa: E402
from stsun.runtime.scene import SceneOptions, predict_scene  # noqa: E402
from stsun.runtime.scene_inputs import resolve_date  # noqa: E402

PROFILE = load_profile("sentinel2-scd")
# (width, height) of the generated scenes, and the tiles each takes (256 px tiles, 64 px overlap)
SCENES = {"s0": ((256, 256), 1), "s1": ((300, 300), 4), "s2": ((448, 256), 2), "s3": ((320, 320), 4)}
FIELDS = {"id", "status", "seconds", "attempts", "tiles", "km2", "output", "error", "dates"}


@pytest.fixture(scope="module")
def build(scd_build):
    return scd_build  # conftest's default-profile build, shared with the other files of the process


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return {name: write_scene(PROFILE, root / name, size=w, height=h, seed=i, nodata_stripes=i % 2)["dates"]
            for i, (name, ((w, h), _)) in enumerate(SCENES.items())}


@pytest.fixture(scope="module")
def reference(build, scenes, tmp_path_factory):
    """What `stsun predict` writes for each scene: (bands, tags, crs, transform)."""
    engine = load_engine(build)
    root = tmp_path_factory.mktemp("reference")
    return {name: read(predict_scene(engine, dates, root / f"{name}.tif", SceneOptions(progress=False)))
            for name, dates in scenes.items()}


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.tags(), src.crs, src.transform


def manifest_of(jobs: dict[str, list], path: Path) -> Manifest:
    path.write_text(json.dumps([{"id": k, "dates": [str(d) for d in v]} for k, v in jobs.items()]))
    return read_manifest(path, PROFILE.t_in, path.parent / "items")


def run(manifest, build, outdir, scheduler, **options):
    return predict_many(manifest, EngineSpec(str(build)), outdir,
                        RunOptions(scheduler=scheduler, progress=False, retry_delay_s=0, **options), log=lambda _: None)


def assert_equal_maps(path, expected):
    bands, tags, crs, transform = read(path)
    np.testing.assert_array_equal(bands, expected[0])
    assert tags == expected[1] and crs == expected[2] and transform == expected[3]


@pytest.fixture(scope="module")
def first_run(build, scenes, scheduler, tmp_path_factory):
    root = tmp_path_factory.mktemp("first")
    manifest = manifest_of(scenes, root / "jobs.json")
    return manifest, root / "out", run(manifest, build, root / "out", scheduler)


def test_every_output_equals_predict_and_the_report_is_complete(first_run, reference):
    manifest, outdir, report = first_run
    assert report["counts"] == {"done": 4, "skipped": 0, "failed": 0, "pending": 0}
    assert json.loads((outdir / REPORT_NAME).read_text()) == report
    assert [j["id"] for j in report["jobs"]] == list(SCENES)
    for job in report["jobs"]:
        (w, h), tiles = SCENES[job["id"]]
        assert set(job) == FIELDS and job["status"] == "done" and job["error"] is None and job["attempts"] == 1
        assert job["tiles"] == tiles and job["km2"] == pytest.approx(w * h * 1e-4) and job["seconds"] > 0
        assert job["output"] == str(outdir / f"{job['id']}.tif")
        assert_equal_maps(job["output"], reference[job["id"]])
    assert len(report["cluster"]["workers"]) == 2
    assert all(w["threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for w in report["cluster"]["workers"].values())
    assert report["scenes_per_hour"] == pytest.approx(4 / report["seconds"] * 3600, rel=1e-3)


def test_rerun_runs_only_what_is_missing_or_invalid(first_run, build, scenes, scheduler, reference, tmp_path):
    manifest, done_dir, _ = first_run
    outdir = tmp_path / "out"
    shutil.copytree(done_dir, outdir)  # copy2 keeps the modification times the records noted
    (outdir / "s0.tif").unlink()                                   # never finished
    (outdir / "s1.tif").write_bytes((outdir / "s1.tif").read_bytes()[:5000])  # damaged after the run
    (outdir / ".s3.tif.x1y2").mkdir()                              # a killed run's work directory...
    (outdir / ".s3.tif.x1y2" / "map.tif").write_bytes(b"partial")
    (outdir / ".s3.tif.k9.tmp.tif").write_bytes(b"II*\x00partial")  # ...and its half-copied map
    jobs = {**scenes, "s2": scenes["s3"]}                          # s2 now names other dates
    before = {n: (outdir / f"{n}.tif").stat().st_mtime_ns for n in ("s3",)}
    report = run(manifest_of(jobs, tmp_path / "jobs.json"), build, outdir, scheduler)
    status = {j["id"]: j["status"] for j in report["jobs"]}
    assert status == {"s0": "done", "s1": "done", "s2": "done", "s3": "skipped"}
    assert (outdir / "s3.tif").stat().st_mtime_ns == before["s3"]
    skipped = report["jobs"][3]
    assert set(skipped) == FIELDS and skipped["tiles"] == 4 and skipped["output"] == str(outdir / "s3.tif")
    assert sorted(p.name for p in outdir.glob(".*")) == []
    for name, expected in (("s0", "s0"), ("s1", "s1"), ("s2", "s3"), ("s3", "s3")):
        assert_equal_maps(outdir / f"{name}.tif", reference[expected])
    again = run(manifest_of(jobs, tmp_path / "jobs.json"), build, outdir, scheduler)
    assert again["counts"]["skipped"] == 4 and again["cluster"] is None  # nothing to do: no cluster needed
    # the rates stay those of the run that made the maps
    assert again["scenes_per_hour"] == report["scenes_per_hour"] and again["rates_from"] == report["started"]


def test_probabilities_and_previews_beside_each_map(build, scenes, scheduler, tmp_path):
    manifest = manifest_of({"s0": scenes["s0"]}, tmp_path / "jobs.json")
    outdir = tmp_path / "out"
    report = run(manifest, build, outdir, scheduler, probabilities=True, preview=True)
    assert report["counts"]["done"] == 1
    with rasterio.open(outdir / "s0.probs.tif") as src:
        assert src.count == PROFILE.t_out * PROFILE.c_out and src.tags()["profile"] == PROFILE.name
    assert (outdir / "s0.png").read_bytes()[:4] == b"\x89PNG"
    assert run(manifest, build, outdir, scheduler, probabilities=True, preview=True)["counts"]["skipped"] == 1
    (outdir / "s0.png").unlink()  # a missing extra output makes the job run again
    assert run(manifest, build, outdir, scheduler, probabilities=True, preview=True)["counts"]["done"] == 1
    assert (outdir / "s0.png").is_file()


def test_a_corrupt_input_fails_with_its_error_and_the_others_succeed(build, scenes, scheduler, reference, tmp_path):
    from typer.testing import CliRunner

    from stsun.app.cli import app

    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(Path(scenes["s3"][0]).read_bytes()[:3000])
    (tmp_path / "jobs.csv").write_text("id,date1,date2\n" + f"s0,{scenes['s0'][0]},{scenes['s0'][1]}\n"
                                       f"bad,corrupt.tif,{scenes['s3'][1]}\ns2,{scenes['s2'][0]},{scenes['s2'][1]}\n")
    outdir = tmp_path / "out"
    res = CliRunner().invoke(app, ["predict-many", str(tmp_path / "jobs.csv"), "--engine", str(build), "-o",
                                   str(outdir), "--scheduler", scheduler, "--retries", "1"])
    assert res.exit_code == 1, res.output
    report = json.loads((outdir / REPORT_NAME).read_text())
    jobs = {j["id"]: j for j in report["jobs"]}
    assert report["counts"] == {"done": 2, "skipped": 0, "failed": 1, "pending": 0}
    bad = jobs["bad"]
    assert set(bad) == FIELDS and bad["status"] == "failed" and bad["attempts"] == 2 and bad["output"] is None
    assert bad["error"].startswith(f"{corrupt}: the file is truncated or damaged"), bad["error"]
    assert "Traceback" not in bad["error"] and "\n" not in bad["error"]
    assert f"failed: bad: {corrupt}: the file is truncated" in " ".join(res.output.split())
    assert not (outdir / "bad.tif").exists() and not (outdir / "bad.job.json").exists()
    for name in ("s0", "s2"):
        assert jobs[name]["status"] == "done"
        assert_equal_maps(outdir / f"{name}.tif", reference[name])


def test_a_killed_run_resumes_where_it_stopped(build, scenes, reference, tmp_path):
    """The whole run (client, local cluster, workers) is killed once the first job is recorded; the
    re-run skips the recorded jobs, leaving their maps untouched, and computes only the others."""
    jobs = {f"{k}-{name}": dates for k in "ab" for name, dates in scenes.items()}
    manifest = tmp_path / "jobs.json"
    manifest_of(jobs, manifest)
    outdir = tmp_path / "out"
    cmd = [sys.executable, "-m", "stsun.app.cli", "predict-many", str(manifest), "--engine", str(build),
           "-o", str(outdir), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(outdir.glob("*.job.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group: client, scheduler, nannies, workers
    output = proc.communicate()[0].decode()
    recorded = {p.name.removesuffix(".job.json"): (outdir / p.name.replace(".job.json", ".tif")).stat().st_mtime_ns
                for p in outdir.glob("*.job.json")}
    assert 0 < len(recorded) < len(jobs), output
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((outdir / REPORT_NAME).read_text())
    assert {j["id"]: j["status"] for j in report["jobs"]} == {
        i: "skipped" if i in recorded else "done" for i in jobs}
    # output to a pipe, not a terminal: no progress bar lines in it (a log would get one per refresh)
    assert "dashboard: http://127.0.0.1:" in res.stdout and "jobs:" not in res.stderr and "\r" not in res.stderr
    for job_id, mtime in recorded.items():
        assert (outdir / f"{job_id}.tif").stat().st_mtime_ns == mtime
    for job_id in jobs:
        assert_equal_maps(outdir / f"{job_id}.tif", reference[job_id[2:]])
    assert [p.name for p in outdir.glob(".*")] == []


def test_workers_that_cannot_load_the_engine_stop_the_run(build, scenes, scheduler, tmp_path):
    manifest = manifest_of({"s0": scenes["s0"]}, tmp_path / "jobs.json")
    with pytest.raises(ClusterError, match=r"2 of 2 worker\(s\) could not load the engine; .*no onnx int8 artifact"):
        predict_many(manifest, EngineSpec(str(build), precision="int8"), tmp_path / "out",
                     RunOptions(scheduler=scheduler, progress=False), log=lambda _: None)
    pytest.importorskip("tritonclient", reason="the serve extra (tritonclient) is not installed")
    urls = ("127.0.0.1:9", "127.0.0.2:9")  # nothing listens: each worker names the server it was given
    with pytest.raises(ClusterError, match=r"no Triton server reachable at 127\.0\.0\.[12]:9"):
        predict_many(manifest, EngineSpec(str(build), backend="triton", urls=urls), tmp_path / "out",
                     RunOptions(scheduler=scheduler, progress=False), log=lambda _: None)
    report = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert report["counts"]["pending"] == 1 and not (tmp_path / "out" / "s0.tif").exists()


# --- manifests -------------------------------------------------------------------------------

def test_json_and_csv_manifests_resolve_dates_relative_to_the_manifest(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "jobs.json").write_text(json.dumps([{"id": "a", "dates": ["x/1.tif", "/abs/2.tif"]}]))
    (tmp_path / "m" / "jobs.csv").write_text("id,date1,date2\na,x/1.tif,/abs/2.tif\nb,../y,z.json\n\n")
    base = str((tmp_path / "m").resolve())
    assert read_manifest(tmp_path / "m" / "jobs.json", 2, tmp_path).jobs == [
        Job("a", (f"{base}/x/1.tif", "/abs/2.tif"))]
    assert read_manifest(tmp_path / "m" / "jobs.csv", 2, tmp_path).jobs == [
        Job("a", (f"{base}/x/1.tif", "/abs/2.tif")), Job("b", (str(tmp_path.resolve() / "y"), f"{base}/z.json"))]


@pytest.mark.parametrize("name, text, message", [
    ("j.json", [{"dates": ["a", "b"]}], "entry 1 has no \"id\""),
    ("j.json", [{"id": "a", "dates": ["a", "b"]}, {"id": "a", "dates": ["c", "d"]}],
     "job id 'a' appears more than once"),
    ("j.json", [{"id": "a", "dates": ["a"]}], "job 'a' has 1 date\\(s\\); the profile needs 2 \\(T_in\\)"),
    ("j.json", [{"id": "../up", "dates": ["a", "b"]}], "job id '../up' cannot name a file"),
    ("j.json", [{"id": "a", "dates": "a.tif"}], "\"dates\" must be a list of paths"),
    ("j.json", {"jobs": []}, "expected a JSON list"),
    ("j.json", [], "no jobs"),
    ("j.csv", "id,date1,date2\na,x.tif\n", "job 'a' has 1 date\\(s\\)"),
    ("j.csv", "name,date1,date2\na,x.tif,y.tif\n", "the header must be id,date1,date2"),
    ("j.csv", "id,date1,date2\n,x.tif,y.tif\n", "line 2 has no id"),
    ("j.txt", "a x.tif y.tif", "unknown manifest type '.txt'"),
    ("j.json", "{not json", "not valid JSON"),
])
def test_bad_manifests_are_refused_with_the_reason(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    with pytest.raises(ManifestError, match=message):
        read_manifest(path, 2, tmp_path)


def stac_item(item_id, when, properties, assets):
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "bbox": [14.9, 45.0, 15.0, 45.1],
            "geometry": {"type": "Polygon", "coordinates": [[[14.9, 45.0], [15.0, 45.0], [15.0, 45.1], [14.9, 45.0]]]},
            "properties": {"datetime": when, **properties}, "links": [], "assets": assets}


def test_stac_item_collection_pairs_items_per_tile(scenes, tmp_path):
    bands = write_band_files(scenes["s0"][0], PROFILE, tmp_path / "bands", lambda band, _: f"T33UUP_{band}.tif")
    assets = {band: {"href": f"bands/{p.name}", "type": "image/tiff"} for band, p in bands.items()}
    tile_a = {"s2:mgrs_tile": "33UUP"}
    items = [stac_item("A1", "2023-02-01T10:00:00Z", {**tile_a, "eo:cloud_cover": 30}, assets),
             stac_item("A3", "2024-02-15T10:00:00Z", {**tile_a, "eo:cloud_cover": 50}, assets),
             stac_item("A2", "2023-03-01T10:00:00Z", {**tile_a, "eo:cloud_cover": 5}, assets),
             stac_item("B1", "2023-02-01T10:00:00Z", {"grid:code": "MGRS-33UVP"}, assets)]
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    item_dir = tmp_path / "out" / "items"
    m = read_manifest(path, 2, item_dir)
    assert [(j.id, [Path(d).name for d in j.dates]) for j in m.jobs] == [
        ("33UUP_20230201_20230301", ["A1.json", "A2.json"]), ("33UUP_20230301_20240215", ["A2.json", "A3.json"])]
    assert m.unpaired == ["MGRS-33UVP: 1 item(s), fewer than 2 acquisition days"]
    m.write_items()
    date = resolve_date(m.jobs[0].dates[0], PROFILE)  # what `stsun predict` reads: asset hrefs made absolute
    assert date.kind == "STAC item" and [s.path for s in date.bands] == [str(bands[b]) for b in PROFILE.band_names]
    windows = read_manifest(path, 2, item_dir, pair_rule="2023-01-01/2023-03-31,2024-01-01/2024-12-31")
    assert [j.id for j in windows.jobs] == ["33UUP_20230301_20240215"]  # the least cloudy item of the first window
    assert windows.unpaired == ["MGRS-33UVP: 1 item(s), a window without an item"]
    for rule, message in (("2023-01-01/2023-03-31", "has 1 window"), ("last-two", "expected 'consecutive'"),
                          ("2023-03-01/2023-01-01,2024-01-01/2024-02-01", "ends before it starts")):
        with pytest.raises(ManifestError, match=message):
            read_manifest(path, 2, item_dir, pair_rule=rule)
    items.append(stac_item("A2b", "2023-03-01T10:05:00Z", tile_a, assets))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with pytest.raises(ManifestError, match="tile 33UUP has two items on 2023-03-01 \\('A2', 'A2b'\\)"):
        read_manifest(path, 2, item_dir)
    items.append(stac_item("C1", "2023-03-01T10:05:00Z", {}, assets))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with pytest.raises(ManifestError, match="item 'C1' has no tile id .*--tile-property"):
        read_manifest(path, 2, item_dir)


def test_stac_ids_that_sanitize_alike_keep_their_own_items(build, scenes, scheduler, reference, tmp_path):
    """Items 'S2A/T1' (the first date) and 'S2A:T1' (the second) once shared items/S2A-T1.json, so
    the job read one date twice: each now has its own file, and the map is the scene's."""
    assets = []
    for t, date in enumerate(scenes["s0"]):
        bands = write_band_files(date, PROFILE, tmp_path / f"d{t}", lambda band, _: f"{band}.tif")
        assets.append({band: {"href": f"d{t}/{p.name}", "type": "image/tiff"} for band, p in bands.items()})
    items = [stac_item("S2A/T1", "2023-06-01T10:00:00Z", {"s2:mgrs_tile": "33UUP"}, assets[0]),
             stac_item("S2A:T1", "2024-06-01T10:00:00Z", {"s2:mgrs_tile": "33UUP"}, assets[1])]
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    manifest = read_manifest(path, 2, tmp_path / "out" / "items")
    names = [Path(d).name for d in manifest.jobs[0].dates]
    assert len(set(names)) == 2 and all(n.startswith("S2A-T1-") for n in names), names
    report = run(manifest, build, tmp_path / "out", scheduler)
    assert report["counts"]["done"] == 1
    np.testing.assert_array_equal(read(report["jobs"][0]["output"])[0], reference["s0"][0])
    items.append(stac_item("S2A:T1", "2025-06-01T10:00:00Z", {"s2:mgrs_tile": "33UUP"}, assets[1]))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with pytest.raises(ManifestError, match="two different items have the id 'S2A:T1'"):
        read_manifest(path, 2, tmp_path / "items")


def test_a_second_run_in_the_same_outdir_is_refused(build, scenes, tmp_path):
    """Two runs sharing OUTDIR would each run every job: the second is refused while the first holds it."""
    from stsun.app.many import outdir_lock

    manifest = manifest_of({"s0": scenes["s0"]}, tmp_path / "jobs.json")
    (tmp_path / "out").mkdir()
    with outdir_lock(tmp_path / "out"):  # what the first run holds
        with pytest.raises(ClusterError, match="another stsun predict-many is running in"):
            run(manifest, build, tmp_path / "out", None)
    assert not list((tmp_path / "out").iterdir())


def test_cli_refuses_a_bad_manifest_before_any_cluster_starts(build, tmp_path):
    from typer.testing import CliRunner

    from stsun.app.cli import app

    (tmp_path / "jobs.json").write_text(json.dumps([{"id": "a", "dates": ["x", "y"]},
                                                    {"id": "a", "dates": ["x", "y"]}]))
    start = time.perf_counter()
    res = CliRunner().invoke(app, ["predict-many", str(tmp_path / "jobs.json"), "--engine", str(build),
                                   "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "error: " in res.output and "job id 'a' appears more than once" in res.output
    assert time.perf_counter() - start < 5 and not (tmp_path / "out").exists()


def test_scaling_benchmark_writes_its_figure(build, tmp_path):
    """benchmarks/many.py: every configuration's rate, the efficiency from them, the command, a plot."""
    n = len(os.sched_getaffinity(0))
    out = tmp_path / "many.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "many.py"
    res = subprocess.run([sys.executable, str(script), "--scenes", "2", "--size", "256", "--configs", f"1x1,{n}x1",
                          "--build-dir", str(build), "--work", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(out.read_text())
    rates = {(r["workers"], r["threads"]): r["scenes_per_hour"] for r in result["records"]}
    assert set(rates) == {(1, 1), (n, 1)} and all(r["seconds"] > 0 for r in result["records"])
    assert result["scaling_efficiency"] == pytest.approx(rates[(n, 1)] / (n * rates[(1, 1)]))
    assert result["quiet"] is False and result["scenes"] == 2 and f"command: {result['command']}" in res.stdout
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
