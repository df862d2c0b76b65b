"""Whole-scene throughput and peak memory of `stsun predict`, at two scene sizes.

python benchmarks/scene.py --sizes 8192x2048,8192x8192 --backend onnxruntime

Each size runs in a fresh worker process so its peak resident memory is its own. The default
sizes share a width and differ 4x in height: peak memory must not grow with the height (it
grows with the width, which sets the strip). Throughput is extrapolated to a Sentinel-2 tile
(10980 x 10980 px at 10 m).
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
    sizes: Annotated[str, typer.Option(help="Comma-separated scene sizes WIDTHxHEIGHT (or one number: square).")] = "8192x2048,8192x8192",
    backend: Annotated[str, typer.Option()] = "onnxruntime",
    profile: Annotated[str, typer.Option()] = "sentinel2-scd",
    build_dir: Annotated[Path | None, typer.Option()] = None,
    work: Annotated[Path, typer.Option(help="Where scenes and outputs are written.")] = Path("build/scene-bench"),
    out: Annotated[Path, typer.Option()] = Path("benchmarks/results/scene_cpu.json"),
    worker_scene: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    from stsun.atomic import atomic_write
    from stsun.pipeline import build_artifacts
    from stsun.profiles import load_profile
    from stsun.synthetic import write_scene

    prof = load_profile(profile)
    bdir = build_dir or Path("build") / f"bench-{prof.name}-tiny"
    if worker_scene is not None:
        print(json.dumps(worker(bdir, worker_scene, backend, worker_scene / "prediction.tif")))
        return
    if not (bdir / "build_report.json").is_file():
        build_artifacts(prof, bdir, size="tiny", precisions=("fp32", "fp16", "int8"), max_batch=4)
    records = []
    for spec in sizes.split(","):
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
        print(f"{width} x {height} px: {r['seconds']:.1f} s, {r['km2_per_s']:.2f} km2/s, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"~{r['seconds_per_s2_scene']:.0f} s per Sentinel-2 scene")
    result = {"profile": prof.name, "backend": backend, "records": records}
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))


if __name__ == "__main__":
    typer.run(main)
