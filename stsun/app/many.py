"""Batch inference over a manifest of scenes on Dask distributed: ``stsun predict-many``.

Each job is one whole scene, run by ``predict_scene`` on a worker, written to ``OUTDIR/<id>.tif``
(atomically: a temporary file renamed into place) with a record ``OUTDIR/<id>.job.json`` beside
it. Whole scenes, not row blocks, are the unit of work: a catalogue has far more scenes than a
cluster has workers, so scene tasks already keep every worker busy, the tail is at most one scene,
and splitting would need halo rows and a stitching pass over every map.

- Engines: a ``WorkerPlugin`` loads the engine once per worker, with its threads set to the host's
  cores divided by the task slots of the workers on that host, so workers do not oversubscribe.
  ``--backend triton`` spreads the workers over one or more servers. On a cluster given by its
  scheduler the client ships the build (its report and the artifacts the backend reads) inside the
  plugin: each worker checks every file's sha256 and writes them to its own scratch directory
  (``--local-directory``) unless the same build is already at the client's path (shared storage),
  so hosts need no shared disk for the engine.
- Lost hosts: ``CLUSTER_CONFIG`` (applied here, and as ``cluster_env()`` variables to ``dask
  scheduler``/``dask worker`` on other hosts) makes the scheduler remove a silent worker in
  seconds, not Dask's default five minutes; its jobs then run on another worker.
- Resuming: a job is skipped when its record matches the job (same dates, build, backend,
  precision and scene options), the map has the size and modification time the record noted, and
  the map opens as a raster with the profile's band count, data type and profile/task tags.
  A run starts by removing the temporary files a killed run left (one run per OUTDIR at a time).
- Failures: a job that raises is retried on its worker (``retries`` times, waiting a little
  longer each time), then recorded as failed with its error in one line; the other jobs go on. A
  job whose worker dies is rescheduled by Dask, on a local cluster up to ``retries`` times.
- The report ``OUTDIR/report.json`` is rewritten (atomically) every few seconds while jobs finish;
  a run with nothing left to do keeps the rates of the run that made the maps (``rates_from``).
- Extra outputs on request: ``<id>.probs.tif`` and a ``<id>.png`` preview beside each map.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from distributed import WorkerPlugin

from stsun.app.manifest import Job, Manifest
from stsun.app.outputs import local_dir, publish_catalogue, stored_output
from stsun.atomic import atomic_write
from stsun.build_report import REPORT_NAME as BUILD_REPORT
from stsun.classmaps import map_layout
from stsun.digest import file_sha256
from stsun.display import progress_bar
from stsun.errors import ClusterError, EngineError, StsunError
from stsun.profiles import Profile
from stsun.runtime.engine import BuildDir

REPORT_NAME = "report.json"
REPORT_EVERY_S = 5.0  # how often the report is rewritten while jobs finish
PLUGIN = "stsun-engine"
# Lost hosts are noticed in seconds (Dask's defaults take minutes): the scheduler removes a worker it has
# not heard from for worker-ttl (checked every worker-ttl, so noticed 10-20 s after the last heartbeat;
# workers heartbeat every 0.5 s up to 10 workers, and the TTL is at least 10 heartbeats); a TCP
# connection whose data goes unacknowledged (a cut link) is dropped after timeouts.tcp (kernel
# keepalive and TCP_USER_TIMEOUT); connecting gives up after timeouts.connect. In a run of more jobs
# than twice the task slots (Dask then queues them on the scheduler) a worker is sent only as many
# jobs as it has slots (worker-saturation 1.0; Dask's 1.1 sends 2 to a 1-slot worker), so a dying
# worker charges allowed-failures to the job it ran, not to one waiting behind it. They hold on
# the scheduler and worker hosts: give them there (``cluster_env``); predict-many reports what the
# scheduler uses.
CLUSTER_CONFIG = {
    "distributed.scheduler.worker-ttl": "10s",
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.comm.timeouts.tcp": "15s",
    "distributed.comm.timeouts.connect": "10s",
}


@dataclass(frozen=True)
class EngineSpec:
    """How every worker opens the engine (``load_engine`` arguments)."""

    build_dir: str
    backend: str = "onnxruntime"
    precision: str | None = None
    urls: tuple[str, ...] = ()   # --backend triton: servers, the workers spread over them round-robin
    protocol: str = "http"


@dataclass(frozen=True)
class RunOptions:
    scheduler: str | None = None     # an existing cluster's scheduler address; None: a LocalCluster here
    workers: int | None = None       # LocalCluster workers (default: one per core)
    threads: int | None = None       # engine threads per worker (default: host cores / task slots on the host)
    retries: int = 2                 # further attempts of a failing job
    retry_delay_s: float = 1.0       # wait before attempt n+1: n times this
    overlap: int | None = None       # the SceneOptions of ``stsun predict``
    align: bool = False
    dn_offset: float | None = None
    mask_quality: bool = False
    probabilities: bool = False      # also OUTDIR/<id>.probs.tif
    preview: bool = False            # also OUTDIR/<id>.png
    progress: bool = True
    dashboard_address: str = "127.0.0.1:8787"  # LocalCluster dashboard (a free port is taken if it is in use)


def cluster_env(allowed_failures: int = 2) -> dict[str, str]:
    """``CLUSTER_CONFIG`` and the scheduler's ``allowed-failures`` (worker deaths a job survives) as the
    ``DASK_*`` environment variables ``dask scheduler`` and ``dask worker`` read."""
    config = {**CLUSTER_CONFIG, "distributed.scheduler.allowed-failures": str(allowed_failures)}
    return {"DASK_" + "__".join(k.split(".")).upper().replace("-", "_"): str(v) for k, v in config.items()}


@dataclass(frozen=True)
class BuildShipment:
    """The files of a build a worker needs, with the sha256 of each, and of the report (the build's identity)."""

    report_sha256: str
    files: dict[str, bytes]
    sha256: dict[str, str]

    @property
    def identity(self) -> str:
        """One digest over every shipped file: two shipments of one build with other artifacts
        (another precision) are installed apart."""
        return hashlib.sha256(json.dumps(sorted(self.sha256.items())).encode()).hexdigest()


def ship_build(build: BuildDir, backend: str, precision: str | None) -> BuildShipment:
    """The report and the artifacts ``backend`` opens (all its precisions unless one is given;
    an ONNX's external ``.data`` file too); nothing else of the build travels."""
    from stsun.runtime.backends import backend as find_backend

    kind = find_backend(backend).artifact
    names = [BUILD_REPORT]
    if kind == "checkpoint":
        names.append(build.report.checkpoint.file)
    elif kind != "server":
        for a in build.report.artifact_paths(kind):
            if precision in (None, a.precision):
                names += [a.path] + [f"{a.path}.data"] * (build.path / f"{a.path}.data").is_file()
    files = {}
    for name in dict.fromkeys(names):
        try:
            files[name] = (build.path / name).read_bytes()
        except OSError as err:
            raise EngineError(f"cannot read {build.path / name} to send it to the workers: {describe(err)}") from None
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    return BuildShipment(sha[BUILD_REPORT], files, sha)


def install_build(shipment: BuildShipment, client_path: str, scratch: str | Path) -> Path:
    """Where this worker opens the build: the client's path when the same build is there (shared
    storage), else the shipped files, checked against their sha256, written once under ``scratch``."""
    here = Path(client_path) / BUILD_REPORT
    if here.is_file() and file_sha256(here) == shipment.report_sha256:
        return Path(client_path)
    target = Path(scratch) / f"stsun-build-{shipment.identity[:16]}"
    if target.is_dir():  # another worker sharing this scratch wrote it (renamed into place only when complete)
        return target
    for name, data in shipment.files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise EngineError(f"the build names a file outside its directory: {name}")
        if hashlib.sha256(data).hexdigest() != shipment.sha256[name]:
            raise EngineError(f"{name} of the build arrived damaged (sha256 mismatch)")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    for name, data in shipment.files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    try:
        tmp.rename(target)
    except OSError:  # a worker beside this one renamed its copy first
        shutil.rmtree(tmp)
    return target


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe(err: BaseException) -> str:
    """A failure in one line: an expected one by its message, anything else with its type."""
    if isinstance(err, StsunError):
        text = str(err)
    elif isinstance(err, OSError) and err.strerror:
        text = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:1000]


class EngineLoader(WorkerPlugin):
    """Loads the engine once per worker. A load failure is kept as ``error`` rather than raised, so
    the client reports it in one line instead of every worker logging a traceback."""

    def __init__(self, spec: EngineSpec, threads: int | None, slots_per_host: dict[str, int],
                 url_of_worker: dict[str, str], shipment: BuildShipment | None = None) -> None:
        self.spec, self.requested, self.shipment = spec, threads, shipment
        self.slots_per_host, self.url_of_worker = slots_per_host, url_of_worker
        self.engine, self.error, self.threads, self.url, self.build = None, None, 0, None, None

    async def setup(self, worker) -> None:
        # Off the event loop: writing the build and opening a session can take longer than the
        # worker-ttl (10 s), and a worker that stops heartbeating meanwhile would be removed.
        await asyncio.to_thread(self._load, worker)

    def _load(self, worker) -> None:
        import importlib.util

        from distributed.comm import get_address_host

        from stsun.runtime import load_engine

        slots = self.slots_per_host.get(get_address_host(worker.address), worker.state.nthreads)
        self.threads = self.requested or max(1, cores() // slots)
        if importlib.util.find_spec("torch") is not None:  # absent from the runtime install
            import torch

            torch.set_num_threads(self.threads)  # the torch backends, and torch ops anywhere in the worker
        spec, options = self.spec, {}
        if spec.backend == "onnxruntime":
            options["threads"] = self.threads
        elif spec.backend == "triton":
            # workers that joined after the start are spread over the servers by their address
            self.url = self.url_of_worker.get(worker.address) or (
                spec.urls[zlib.crc32(worker.address.encode()) % len(spec.urls)] if spec.urls else None)
            options.update(url=self.url, protocol=spec.protocol)
        try:
            self.build = str(install_build(self.shipment, spec.build_dir, worker.local_directory)
                             if self.shipment else spec.build_dir)
            self.engine = load_engine(self.build, backend=spec.backend, precision=spec.precision, **options)
        except StsunError as err:
            self.error = str(err)
        except OSError as err:  # the scratch directory is full or read-only
            self.error = f"cannot write the build to {worker.local_directory}: {describe(err)}"
        self.shipment = None  # the files are written: do not keep a copy in the worker's memory


def output_paths(outdir: Path, job_id: str) -> tuple[Path, Path]:
    """The job's map and its record."""
    return outdir / f"{job_id}.tif", outdir / f"{job_id}.job.json"


def extra_outputs(out: Path, options: RunOptions) -> list[Path]:
    """The files a job writes beside its map when asked: probabilities, preview."""
    return [out.with_suffix(".probs.tif")] * options.probabilities + [out.with_suffix(".png")] * options.preview


def scene_tiles(width: int, height: int, tile: int, overlap: int | None) -> int:
    from stsun.tiling import TileGrid

    return len(TileGrid(height, width, tile, overlap))


def run_job(job: Job, outdir: str, fingerprint: str, options: RunOptions, plugin: str = PLUGIN) -> dict:
    """Runs on a worker: the job's scene with the worker's engine, retried; its report entry."""
    import rasterio
    from distributed import get_worker

    from stsun.app.catalogue import write_item
    from stsun.app.outputs import join, local_dir, publish_job
    from stsun.runtime.preview import preview
    from stsun.runtime.scene import SceneOptions, predict_scene
    from stsun.runtime.scene_inputs import resolve_date

    loader: EngineLoader = get_worker().plugins[plugin]
    local, store = local_dir(outdir)  # s3://: staged here, published when done
    out, record = output_paths(local, job.id)
    scene = SceneOptions(overlap=options.overlap, align=options.align, dn_offset=options.dn_offset,
                         mask_quality=options.mask_quality, probabilities=options.probabilities, progress=False)
    start, error, attempt = time.perf_counter(), "", 0
    for attempt in range(1, options.retries + 2):
        try:
            if loader.engine is None:
                raise EngineError(loader.error or "the engine is not loaded on this worker")
            # what an attempt on a worker that died left (one attempt of a job runs at a time)
            remove_leftovers(local, job.id)
            predict_scene(loader.engine, list(job.dates), out, scene)
            profile = loader.engine.profile
            if options.preview:
                preview(list(job.dates), out, out.with_suffix(".png"), profile, dn_offset=options.dn_offset)
            with rasterio.open(out) as src:
                width, height = src.width, src.height
            stat = out.stat()
            entry = job_entry(job, "done", seconds=time.perf_counter() - start, attempts=attempt, output=str(out),
                              tiles=scene_tiles(width, height, profile.tile_size, options.overlap),
                              km2=width * height * (profile.gsd_m / 1000) ** 2)
            done = {**entry, "fingerprint": fingerprint, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                    "finished": now()}
            atomic_write(record, lambda tmp: tmp.write_text(json.dumps(done, indent=1) + "\n"))
            write_item(out, out.name, [resolve_date(d, profile) for d in job.dates], loader.engine, loader.build)
            if store:
                publish_job(out, store)
                entry["output"] = join(store, out.name)
            return entry
        except Exception as err:  # any failure fails this job only; the message goes to the report
            error = describe(err)
            if attempt <= options.retries:
                time.sleep(options.retry_delay_s * attempt)
    return job_entry(job, "failed", seconds=time.perf_counter() - start, attempts=attempt, error=error)


def job_entry(job: Job, status: str, *, seconds: float = 0.0, attempts: int = 0, tiles: int | None = None,
              km2: float | None = None, output: str | None = None, error: str | None = None) -> dict:
    """One job's line of the report: every field present for every status."""
    return {"id": job.id, "status": status, "seconds": round(seconds, 3), "attempts": attempts, "tiles": tiles,
            "km2": km2, "output": output, "error": error, "dates": list(job.dates)}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def job_fingerprint(job: Job, build_sha256: str, spec: EngineSpec, options: RunOptions) -> str:
    """What makes a map this job's: its dates, the build, backend and precision, the scene options.
    Inputs are identified by their paths, not their contents."""
    payload = {"dates": job.dates, "build": build_sha256, "backend": spec.backend, "precision": spec.precision,
               "overlap": options.overlap, "align": options.align, "dn_offset": options.dn_offset,
               "mask_quality": options.mask_quality, "probabilities": options.probabilities,
               "preview": options.preview}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def finished_output(outdir: Path, job: Job, fingerprint: str, profile: Profile, options: RunOptions) -> dict | None:
    """The record of the job's valid map, or None when the job must run (see the module doc)."""
    import rasterio
    from rasterio.errors import RasterioError

    out, record = output_paths(outdir, job.id)
    try:
        done = json.loads(record.read_text())
        stat = out.stat()
    except (OSError, ValueError):
        return None
    if not all(p.is_file() for p in extra_outputs(out, options)):
        return None
    if not isinstance(done, dict) or done.get("fingerprint") != fingerprint or \
            (done.get("size"), done.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
        return None
    count, dtype, _ = map_layout(profile.task, profile.t_out, profile.c_out)
    try:
        with rasterio.open(out) as src:
            tags = src.tags()
            valid = (src.count, src.dtypes[0], tags.get("profile"), tags.get("task")) == \
                (count, dtype, profile.name, profile.task)
    except RasterioError:
        return None
    return done if valid else None


def remove_leftovers(outdir: Path, job_id: str) -> None:
    """Temporary files a killed run left for this job (predict_scene's work directory and
    temporary map, the record's temporary file)."""
    for pattern in (f".{job_id}.tif.*", f".{job_id}.job.json.*", f".{job_id}.probs.tif.*", f".{job_id}.png.*"):
        for path in outdir.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def outdir_lock(outdir: Path) -> Iterator[None]:
    """Hold OUTDIR for this run; another run there is refused. The lock is the kernel's flock on the
    directory itself: nothing is left in OUTDIR, and a killed run releases it."""
    import fcntl

    fd = os.open(outdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClusterError(f"another stsun predict-many is running in {outdir}; wait for it, or give another "
                               f"-o/--output") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def connect(options: RunOptions) -> Iterator:
    """A client of the cluster at ``options.scheduler``, or of a LocalCluster of worker
    processes (one task slot each) that lives as long as the block."""
    import dask
    from distributed import Client, LocalCluster

    if options.scheduler:
        try:
            client = Client(options.scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise ClusterError(f"cannot reach the Dask scheduler at {options.scheduler}: {err}") from None
        with dask.config.set(CLUSTER_CONFIG), client:
            yield client
        return
    # a worker that dies running a job (killed, out of memory) is retried that many times, then reported
    with dask.config.set({**CLUSTER_CONFIG, "distributed.scheduler.allowed-failures": options.retries}), \
            LocalCluster(n_workers=options.workers or cores(), threads_per_worker=1, processes=True,
                         dashboard_address=options.dashboard_address) as cluster, Client(cluster) as client:
        yield client


def start_engines(client, spec: EngineSpec, options: RunOptions, shipment: BuildShipment | None = None,
                  name: str = PLUGIN) -> dict[str, dict]:
    """Load the engine on every worker; {worker address: {threads, url, build}}. Raises ClusterError
    naming the first worker that could not load it."""
    client.wait_for_workers(1, timeout=120)
    workers = client.scheduler_info(n_workers=-1)["workers"]
    slots: dict[str, int] = {}
    for w in workers.values():
        slots[w["host"]] = slots.get(w["host"], 0) + w["nthreads"]
    urls = {a: spec.urls[i % len(spec.urls)] for i, a in enumerate(sorted(workers))} if spec.urls else {}
    client.register_plugin(EngineLoader(spec, options.threads, slots, urls, shipment), name=name)
    state = client.run(lambda dask_worker: {k: getattr(dask_worker.plugins[name], k)
                                            for k in ("error", "threads", "url", "build")})
    failed = {a: s["error"] for a, s in state.items() if s["error"]}
    if failed:
        address, error = sorted(failed.items())[0]
        raise ClusterError(f"{len(failed)} of {len(state)} worker(s) could not load the engine; {address}: {error}")
    return {a: {k: s[k] for k in ("threads", "url", "build") if s[k] is not None} for a, s in sorted(state.items())}


def failure_settings(client) -> dict:
    """How the scheduler treats lost workers: seconds of silence before it removes one
    (``worker-ttl``, None: never) and the worker deaths a job survives (``allowed-failures``)."""
    ttl, allowed = client.run_on_scheduler(lambda dask_scheduler: (dask_scheduler.worker_ttl,
                                                                   dask_scheduler.allowed_failures))
    return {"worker_ttl_s": ttl, "allowed_failures": allowed}


def predict_many(manifest: Manifest, spec: EngineSpec, outdir: str | Path, options: RunOptions | None = None,
                 log: Callable[[str], object] = print) -> dict:
    """Run every job of ``manifest`` that has no valid map yet; the report (also written to
    ``OUTDIR/report.json``)."""
    from distributed import as_completed

    from stsun.runtime.backends import backend as find_backend

    options = options or RunOptions()
    started, clock = now(), time.perf_counter()
    outdir, store = local_dir(outdir)  # s3://bucket/prefix/: staged locally, each map published when done
    build = BuildDir(spec.build_dir)  # a missing or broken build fails here, before any cluster starts
    find_backend(spec.backend, spec.precision)  # an unknown backend or precision fails before any cluster starts
    spec = replace(spec, build_dir=str(Path(spec.build_dir).resolve()))
    build_sha256 = file_sha256(build.path / BUILD_REPORT)
    outdir.mkdir(parents=True, exist_ok=True)
    with outdir_lock(outdir):  # two runs in one OUTDIR would run every job twice
        manifest.write_items()
        fingerprints = {job.id: job_fingerprint(job, build_sha256, spec, options) for job in manifest.jobs}
        entries: dict[str, dict] = {}
        for job in manifest.jobs:
            done = finished_output(outdir, job, fingerprints[job.id], build.profile, options) if store is None else \
                stored_output(store, job.id, fingerprints[job.id],
                              [p.name for p in extra_outputs(Path(f"{job.id}.tif"), options)])
            entries[job.id] = job_entry(job, "pending") if done is None else job_entry(
                job, "skipped", tiles=done.get("tiles"), km2=done.get("km2"),
                output=str(output_paths(outdir, job.id)[0]))
        todo = [job for job in manifest.jobs if entries[job.id]["status"] == "pending"]
        for job in manifest.jobs:  # no run is in progress in OUTDIR: whatever temporary files are there are garbage
            remove_leftovers(outdir, job.id)
        report = {"manifest": str(manifest.source), "engine": spec.build_dir, "profile": build.profile.name,
                  "backend": spec.backend, "precision": spec.precision, "outdir": str(outdir),
                  "retries": options.retries,
                  "started": started, "cluster": None, "startup_seconds": None, "unpaired": manifest.unpaired}
        if not todo:  # nothing will run: the rates stay those of the run that made the maps
            keep_rates(outdir, report)
        write_report(outdir, report, entries, None)
        log(f"{len(manifest.jobs)} jobs: {len(manifest.jobs) - len(todo)} already done, {len(todo)} to run")
        ready = end = None
        if todo:
            with connect(options) as client:
                log(f"dashboard: {client.dashboard_link}")
                failures = failure_settings(client)
                if options.scheduler and (failures["worker_ttl_s"] or float("inf")) > 60:
                    log(f"note: the scheduler removes a silent worker only after worker-ttl = "
                        f"{failures['worker_ttl_s']} s; see stsun.app.many.CLUSTER_CONFIG for seconds")
                shipment = ship_build(build, spec.backend, spec.precision) if options.scheduler else None
                run_key = f"predict-{uuid.uuid4().hex[:8]}"  # one task group: a big run queues on the scheduler
                # a plugin of this run's own: another run on a shared scheduler keeps its engine, and the
                # scheduler drops the shipped files when this run ends
                plugin = f"{PLUGIN}-{run_key}"
                workers = start_engines(client, spec, options, shipment, plugin)
                report["cluster"] = {"scheduler": client.scheduler.address, "dashboard": client.dashboard_link,
                                     **failures, "workers": workers}
                log(f"{len(workers)} worker(s) loaded the engine: " + ", ".join(
                    f"{w['threads']} thread(s)" + (f" -> {w['url']}" if "url" in w else "") for w in workers.values()))
                ready = time.perf_counter()
                report["startup_seconds"] = round(ready - clock, 3)  # reading outputs, cluster start, engine loads
                futures = {client.submit(run_job, job, store or str(outdir), fingerprints[job.id], options, plugin,
                                         pure=False, key=(run_key, job.id)): job for job in todo}
                written = time.perf_counter()
                with progress_bar(total=len(futures), desc="jobs", unit="scene", show=options.progress) as bar:
                    for future in as_completed(futures):
                        job = futures[future]
                        try:
                            entries[job.id] = future.result()
                        except Exception as err:  # the worker died (KilledWorker) or the job was cancelled
                            # KilledWorker: each allowed failure was a worker dying on it, then one more
                            died = type(err).__name__ == "KilledWorker"
                            entries[job.id] = job_entry(job, "failed", error=describe(err),
                                                        attempts=failures["allowed_failures"] + 1 if died else 0)
                        bar.update()
                        if time.perf_counter() - written > REPORT_EVERY_S:  # not after every job: each write is O(jobs)
                            write_report(outdir, report, entries, ready)
                            written = time.perf_counter()
                        end = time.perf_counter()  # before the cluster shuts down
                client.unregister_worker_plugin(plugin)  # a shared scheduler forgets the shipped files
        report = write_report(outdir, report, entries, ready, end)
        publish_catalogue(outdir, store, [j["id"] for j in report["jobs"] if j["status"] in ("done", "skipped")])
        return report


def keep_rates(outdir: Path, report: dict) -> None:
    """Carry the rates of the last run that computed maps into a run that computed none."""
    try:
        old = json.loads((outdir / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return
    if isinstance(old, dict) and old.get("scenes_per_hour"):
        report["rates_from"] = old.get("rates_from", old.get("started"))
        report.update({k: old.get(k) for k in ("seconds", "scenes_per_hour", "km2_per_hour")})


def write_report(outdir: Path, report: dict, entries: dict[str, dict], ready: float | None,
                 end: float | None = None) -> dict:
    """``report`` with the jobs, counts and rates so far, written to ``OUTDIR/report.json``. The
    rates are over the jobs phase: from ``ready`` (the engines loaded) to ``end`` (default: now);
    a report whose ``rates_from`` names an earlier run keeps that run's rates."""
    jobs = list(entries.values())
    counts = {s: sum(j["status"] == s for j in jobs) for s in ("done", "skipped", "failed", "pending")}
    report.update(counts=counts, jobs=jobs)
    if "rates_from" in report:
        atomic_write(outdir / REPORT_NAME, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
        return report
    seconds = (end or time.perf_counter()) - ready if ready else 0.0
    done = [j for j in jobs if j["status"] == "done"]
    rate = 3600 / seconds if done and seconds else None
    report.update(seconds=round(seconds, 3), scenes_per_hour=round(len(done) * rate, 2) if rate else None,
                  km2_per_hour=round(sum(j["km2"] for j in done) * rate, 1) if rate else None)
    atomic_write(outdir / REPORT_NAME, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    return report
