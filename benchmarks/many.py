"""Scaling of `stsun predict-many` on a local Dask cluster: scenes per hour and scaling efficiency.

python benchmarks/many.py [--scenes 8] [--size 1536] [--configs 1x1,1x2,2x1] [--reps 1] [--quiet-machine]

The same generated two-date Sentinel-2 scenes (``--scenes`` of ``--size``^2 px) run once per
configuration WORKERSxTHREADS: that many worker processes, each engine using that many threads
(default: one worker single-threaded, one worker using every core, one single-threaded worker per
core, so no configuration oversubscribes the cores). Each run starts with an empty output folder;
the time is the jobs phase of the run report (engines loaded, first job submitted, to the last job
done), so the cluster's start-up is reported apart. With ``--reps`` > 1 the configurations
alternate and medians are reported.

Scaling efficiency = throughput(one worker per core) / (cores x throughput(one single-threaded
worker)): 1.0 means that N workers do N times the work of one. ``--quiet-machine`` records that
nothing else ran on the machine; without it the result is marked ``"quiet": false``.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import sys
from pathlib import Path
from typing import Annotated

import typer


def scenes(prof, work: Path, count: int, size: int) -> dict[str, list[str]]:
    from stsun.data.synthetic import write_scene

    jobs = {}
    for i in range(count):
        folder = work / f"scenes-{size}" / f"scene{i}"
        dates = [folder / f"date{t + 1}.tif" for t in range(prof.t_in)]
        if not all(d.is_file() for d in dates):
            dates = write_scene(prof, folder, size=size, seed=1000 + i)["dates"]
        jobs[f"scene{i}"] = [str(Path(d).resolve()) for d in dates]
    return jobs


def run_config(manifest, build_dir: Path, work: Path, workers: int, threads: int) -> dict:
    from stsun.app.many import EngineSpec, RunOptions, predict_many

    outdir = work / f"out-{workers}x{threads}"
    shutil.rmtree(outdir, ignore_errors=True)
    report = predict_many(manifest, EngineSpec(str(build_dir)), outdir,
                          RunOptions(workers=workers, threads=threads, retries=0, progress=False,
                                     dashboard_address="127.0.0.1:0"), log=lambda _: None)
    if report["counts"]["done"] != len(manifest.jobs):
        raise SystemExit(f"{workers}x{threads}: not every job ran: {report['counts']}")
    return {"seconds": report["seconds"], "startup_seconds": report["startup_seconds"],
            "scene_seconds": [j["seconds"] for j in report["jobs"]]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stsun.atomic import atomic_write

    recs = result["records"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [f"{r['workers']} worker(s)\nx {r['threads']} thread(s)" for r in recs]
    bars = ax.bar(labels, [r["scenes_per_hour"] for r in recs], color="#4878a8")
    ax.bar_label(bars, fmt="%.0f")
    ax.margins(y=0.15)
    ax.set_ylabel("scenes / hour")
    eff = result["scaling_efficiency"]
    ax.set_title(f"{result['scenes']} scenes of {result['size']}² px, {result['cores']} cores"
                 + (f": scaling efficiency {eff:.2f}" if eff is not None else "")
                 + ("" if result["quiet"] else " (machine not quiet)"), fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


def main(
    scene_count: Annotated[int, typer.Option("--scenes", min=1, help="Generated scenes (jobs) per run.")] = 8,
    size: Annotated[int, typer.Option(min=256, help="Scene side in pixels.")] = 1536,
    configs: Annotated[str | None, typer.Option(help="Comma-separated WORKERSxTHREADS (default: 1x1, 1xCORES, "
                                                     "CORESx1).")] = None,
    reps: Annotated[int, typer.Option(min=1, help="Runs per configuration (medians are reported).")] = 1,
    profile: Annotated[str, typer.Option()] = "sentinel2-scd",
    build_dir: Annotated[Path | None, typer.Option()] = None,
    work: Annotated[Path, typer.Option(help="Where scenes and outputs are written.")] = Path("build/many-bench"),
    out: Annotated[Path, typer.Option(help="Writes this JSON and a .png beside it.")] = Path(
        "benchmarks/results/many_cpu.json"),
    quiet_machine: Annotated[bool, typer.Option(help="State that nothing else ran on the machine meanwhile.")] = False,
) -> None:
    from stsun.app.manifest import read_manifest
    from stsun.app.many import cores
    from stsun.app.pipeline import build_artifacts
    from stsun.atomic import atomic_write
    from stsun.profiles import load_profile

    command = shlex.join(["python", "benchmarks/many.py", *sys.argv[1:]])
    print(f"command: {command}")
    n = cores()
    pairs = [tuple(int(v) for v in c.split("x")) for c in (configs or f"1x1,1x{n},{n}x1").split(",")]
    pairs = list(dict.fromkeys(pairs))
    prof = load_profile(profile)
    bdir = build_dir or Path("build") / f"bench-many-{prof.name}-tiny"
    if not (bdir / "build_report.json").is_file():
        build_artifacts(prof, bdir, size="tiny", precisions=("fp32",), max_batch=4)
    work.mkdir(parents=True, exist_ok=True)
    manifest_path = work / f"jobs-{scene_count}x{size}.json"
    jobs = scenes(prof, work, scene_count, size)
    manifest_path.write_text(json.dumps([{"id": k, "dates": v} for k, v in jobs.items()], indent=1))
    manifest = read_manifest(manifest_path, prof.t_in, work / "items")
    load_before = os.getloadavg()
    runs: dict[tuple[int, int], list[dict]] = {p: [] for p in pairs}
    for rep in range(reps):
        for workers, threads in pairs if rep % 2 == 0 else pairs[::-1]:
            r = run_config(manifest, bdir, work, workers, threads)
            runs[(workers, threads)].append(r)
            print(f"{workers} worker(s) x {threads} thread(s): {r['seconds']:.1f} s for {scene_count} scenes "
                  f"({scene_count / r['seconds'] * 3600:.0f} scenes/h), start-up {r['startup_seconds']:.1f} s")
    records = []
    for (workers, threads), rs in runs.items():
        seconds = statistics.median(r["seconds"] for r in rs)
        records.append({"workers": workers, "threads": threads, "seconds": seconds,
                        "scenes_per_hour": scene_count / seconds * 3600,
                        "startup_seconds": statistics.median(r["startup_seconds"] for r in rs),
                        "median_scene_seconds": statistics.median(s for r in rs for s in r["scene_seconds"]),
                        "runs": rs})
    rate = {(r["workers"], r["threads"]): r["scenes_per_hour"] for r in records}
    km2 = size * size * (prof.gsd_m / 1000) ** 2
    result = {
        "command": command, "profile": prof.name, "backend": "onnxruntime", "scenes": scene_count, "size": size,
        "km2_per_scene": km2, "cores": n, "reps": reps, "quiet": quiet_machine,
        "machine_note": "nothing else ran meanwhile" if quiet_machine else
        "NOT quiet: other jobs may have shared the machine (see the load averages), so these timings are indicative "
        "only; re-run on an idle machine with --quiet-machine",
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "scaling_efficiency": rate[(n, 1)] / (n * rate[(1, 1)]) if (n, 1) in rate and (1, 1) in rate else None,
        "workers_vs_threads": rate[(n, 1)] / rate[(1, n)] if (n, 1) in rate and (1, n) in rate else None,
        "records": records,
    }
    print(f"scaling efficiency {n} workers vs 1: {result['scaling_efficiency']}; "
          f"{n} single-threaded workers vs 1 worker x {n} threads: {result['workers_vs_threads']}")
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
