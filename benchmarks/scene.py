"""Whole-scene efficiency, throughput and peak memory of `stsun predict`.

python benchmarks/scene.py [--efficiency-size 2048] [--sizes 8192x2048,8192x8192] [--backend onnxruntime]

Efficiency: on a two-date scene (default 2048 x 2048), the engine alone is timed on exactly the
batches the scene run sends it, and divided by the scene run's wall time with the engine already
loaded, for a multi-band GeoTIFF per date and for a directory of band files per date with the
20 m bands at 20 m. Runs alternate (engine, multi-band, band directory) so machine drift hits all
alike; the medians are reported with the scene runner's time per stage.

Memory: each size of ``--sizes`` runs in a fresh worker process so its peak resident memory is its
own. The default sizes share a width and differ 4x in height: peak memory must not grow with the
height (it grows with the width, which sets the strip). Throughput is extrapolated to a
Sentinel-2 tile (10980 x 10980 px at 10 m).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

S2_SCENE_PX = 10980
def band_directory(date_file: Path, profile, out_dir: Path) -> Path:
    """The date as a directory of single-band deflate GeoTIFFs, the 20 m bands at 20 m (2x2 mean)."""
    from stsun.data.synthetic import S2_20M_BANDS, write_band_files

    write_band_files(date_file, profile, out_dir, lambda band, _: f"T33UUP_B{band[1:].zfill(2)}.tif", S2_20M_BANDS)
    return out_dir


def efficiency(prof, build_dir: Path, work: Path, backend: str, size: int, reps: int) -> dict:
    """Engine-only time of the scene's own batches over the scene run's wall time."""
    from stsun.runtime import load_engine

    return engine_efficiency(prof, load_engine(build_dir, backend=backend), work, size, reps)


def efficiency_scene(prof, work: Path, size: int) -> list[Path]:
    """The efficiency scene's dates (``size`` px square), written under ``work`` unless already there."""
    from stsun.data.synthetic import write_scene

    scene = work / f"{prof.name}-eff-{size}"
    dates = [scene / f"date{t + 1}.tif" for t in range(prof.t_in)]
    if not all(d.is_file() for d in dates):
        write_scene(prof, scene, size=size, seed=size)
    return dates


def engine_efficiency(prof, engine, work: Path, size: int, reps: int,
                      kinds: tuple[str, ...] = ("multi-band", "band directory")) -> dict:
    """``efficiency`` for an engine already made, on the kinds of input named."""
    import numpy as np

    from stsun.data.synthetic import synthetic_tiles
    from stsun.runtime.scene import SceneOptions, predict_scene
    from stsun.tiling import TileGrid

    dates = efficiency_scene(prof, work, size)
    scene = dates[0].parent
    tile = prof.tile_size
    starts = TileGrid(size, size, tile).cols  # the scene default overlap
    step = engine.max_batch or 8
    batch_sizes = [min(step, len(starts) - i) for i in range(0, len(starts), step)] * len(starts)
    x, _ = synthetic_tiles(prof, step, seed=5)
    engine(x)  # warm-up
    predict_scene(engine, dates, work / "warm.tif", SceneOptions(progress=False))
    configs = [("multi-band", dates)] if "multi-band" in kinds else []
    if "band directory" in kinds:
        configs.append(("band directory", [d if (d := scene / f"bands{t + 1}").is_dir() else
                                           band_directory(dates[t], prof, d) for t in range(prof.t_in)]))
    runs: dict[str, list[float]] = {"engine": [], **{name: [] for name, _ in configs}}
    stages: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for _ in range(reps):
        start = time.perf_counter()
        for b in batch_sizes:
            engine(x[:b])
        runs["engine"].append(time.perf_counter() - start)
        for name, inputs in configs:
            timings: dict = {}
            start = time.perf_counter()
            predict_scene(engine, inputs, work / f"eff-{name.replace(' ', '-')}.tif",
                          SceneOptions(progress=False, timings=timings))
            runs[name].append(time.perf_counter() - start)
            stages[name].append(timings)
    med = {k: float(np.median(v)) for k, v in runs.items()}
    km2 = size * size * (prof.gsd_m / 1000) ** 2
    return {
        "scene_px": size, "dates": prof.t_in, "tiles": len(starts) ** 2, "backend": engine.backend, "reps": reps,
        "engine_only_seconds": med["engine"],
        "inputs": {name: {"seconds": med[name], "efficiency": med["engine"] / med[name], "km2_per_s": km2 / med[name],
                          "stage_seconds": {k: float(np.median([t[k] for t in stages[name]])) for k in stages[name][0]}}
                   for name in stages},
        "runs": runs,
    }



def worker(build_dir: Path, scene_dir: Path, backend: str, out: Path) -> dict:
    from stsun.runtime import load_engine
    from stsun.runtime.scene import SceneOptions, predict_scene

    engine = load_engine(build_dir, backend=backend)
    dates = sorted(scene_dir.glob("date*.tif"))
    start = time.perf_counter()
    predict_scene(engine, dates, out, SceneOptions(progress=False))
    seconds = time.perf_counter() - start
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"seconds": seconds, "peak_rss_mb": hwm / 1024}


def main(
    sizes: Annotated[str, typer.Option(
        help="Comma-separated scene sizes WIDTHxHEIGHT (or one number: square).")] = "8192x2048,8192x8192",
    backend: Annotated[str, typer.Option()] = "onnxruntime",
    profile: Annotated[str, typer.Option()] = "sentinel2-scd",
    build_dir: Annotated[Path | None, typer.Option()] = None,
    work: Annotated[Path, typer.Option(help="Where scenes and outputs are written.")] = Path("build/scene-bench"),
    out: Annotated[Path, typer.Option()] = Path("benchmarks/results/scene_cpu.json"),
    efficiency_size: Annotated[int, typer.Option(help="Side of the efficiency scene (0: skip).")] = 2048,
    reps: Annotated[int, typer.Option(min=1, help="Efficiency repetitions (medians are reported).")] = 3,
    worker_scene: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    from stsun.app.pipeline import build_artifacts
    from stsun.atomic import atomic_write
    from stsun.data.synthetic import write_scene
    from stsun.precision import ONNX_PRECISIONS
    from stsun.profiles import load_profile

    prof = load_profile(profile)
    bdir = build_dir or Path("build") / f"bench-{prof.name}-tiny"
    if worker_scene is not None:
        print(json.dumps(worker(bdir, worker_scene, backend, worker_scene / "prediction.tif")))
        return
    if not (bdir / "build_report.json").is_file():
        build_artifacts(prof, bdir, size="tiny", precisions=ONNX_PRECISIONS, max_batch=4)
    result: dict = {"profile": prof.name, "backend": backend}
    if efficiency_size:
        result["efficiency"] = eff = efficiency(prof, bdir, work, backend, efficiency_size, reps)
        for name, r in eff["inputs"].items():
            print(f"efficiency, {efficiency_size}^2 px, {name}: engine alone {eff['engine_only_seconds']:.1f} s, "
                  f"scene {r['seconds']:.1f} s -> {r['efficiency']:.2f}, {r['km2_per_s']:.1f} km2/s; stages "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in r["stage_seconds"].items()))
    records = []
    for spec in filter(None, sizes.split(",")):
        width, height = (int(v) for v in (spec.split("x") if "x" in spec else (spec, spec)))
        scene = work / f"{prof.name}-{width}x{height}"
        if not (scene / "date1.tif").is_file():
            write_scene(prof, scene, size=width, height=height, seed=width + height)
        res = subprocess.run([sys.executable, __file__, "--profile", profile, "--backend", backend,
                              "--build-dir", str(bdir), "--worker-scene", str(scene)],
                             capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        km2 = width * height * (prof.gsd_m / 1000) ** 2
        r.update(width_px=width, height_px=height, km2=km2, km2_per_s=km2 / r["seconds"],
                 seconds_per_s2_scene=(S2_SCENE_PX * prof.gsd_m / 1000) ** 2 / (km2 / r["seconds"]))
        records.append(r)
        print(f"{width} x {height} px: {r['seconds']:.1f} s, {r['km2_per_s']:.2f} km2/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"~{r['seconds_per_s2_scene']:.0f} s per Sentinel-2 scene")
    result["records"] = records
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))


if __name__ == "__main__":
    typer.run(main)
