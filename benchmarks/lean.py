"""The runtime install against the full one (issue 28): size on disk, ``stsun --help`` time, cold
start of ``stsun predict`` to its first tile (a two-date scene of one tile, run to completion),
and its peak RSS.

python benchmarks/lean.py --lean .venv-lean --full .venv --build build/lean-scd

Each environment runs the same commands as fresh processes (median of ``--repeat``). "full,
torch at start" is the full install with torch imported before the CLI, which is what every
command paid before the runtime path stopped importing torch (``stsun.precision`` imported it).
The build directory and scene are made with the full install when missing.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from stsun.atomic import atomic_write


def size_mb(prefix: Path) -> float:
    """Bytes on disk (allocated blocks, as du counts them) under a virtual environment."""
    total = 0
    for root, _, files in os.walk(prefix):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            total += st.st_blocks * 512
    return total / 2**20


def run(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of one fresh process. CPU time (user + system)
    moves far less than wall time when other work shares the machine."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def cli(python: Path, args: list[str], torch_first: bool = False) -> list[str]:
    pre = "import torch; " if torch_first else ""
    return [str(python), "-c", f"{pre}import sys; sys.argv = ['stsun', *sys.argv[1:]]; "
            "from stsun.app.cli import main; main()", *args]


def main(
    lean: Annotated[Path, typer.Option(help="The lean (runtime) virtual environment.")] = Path(".venv-lean"),
    full: Annotated[Path, typer.Option(help="The full virtual environment.")] = Path(".venv"),
    build: Annotated[Path, typer.Option(help="Build directory (made with the full install when missing).")] =
        Path("build/lean-scd"),
    scene_size: Annotated[int, typer.Option(help="Scene width and height in pixels (256: one tile).")] = 256,
    repeat: Annotated[int, typer.Option(min=1)] = 3,
    out: Annotated[Path, typer.Option()] = Path("benchmarks/results/lean_cpu.json"),
) -> None:
    full_py, lean_py = full / "bin" / "python", lean / "bin" / "python"
    if not (build / "build_report.json").is_file():
        subprocess.run([str(full_py), "export/build_engine.py", "--profile", "sentinel2-scd", "--precision", "fp32",
                        "--max-batch", "4", "--out", str(build)], check=True)
    scene = build.parent / f"lean-scene-{scene_size}"
    if not (scene / "date2.tif").is_file():
        subprocess.run([str(full_py), "-c", "import sys; from stsun.data.synthetic import write_scene; "
                        "from stsun.profiles import load_profile; "
                        "write_scene(load_profile('sentinel2-scd'), sys.argv[1], int(sys.argv[2]), seed=3)",
                        str(scene), str(scene_size)], check=True)
    torch_check = subprocess.run([str(lean_py), "-c", "import torch"], capture_output=True)
    setups = {"lean": (lean_py, False), "full": (full_py, False), "full, torch at start": (full_py, True)}
    results = {}
    for name, (python, torch_first) in setups.items():
        predict = ["predict", str(scene / "date1.tif"), str(scene / "date2.tif"), "-o",
                   str(build.parent / f"lean-bench-{name.split(',')[0]}.tif"), "--engine", str(build),
                   "--backend", "onnxruntime", "--overlap", "0"]
        helps = [run(cli(python, ["--help"], torch_first)) for _ in range(repeat)]
        runs = [run(cli(python, predict, torch_first)) for _ in range(repeat)]
        results[name] = {
            "env_mb": round(size_mb(python.parent.parent), 1),
            "help_s": round(statistics.median(r[0] for r in helps), 3),
            "help_cpu_s": round(statistics.median(r[2] for r in helps), 3),
            "predict_cold_s": round(statistics.median(r[0] for r in runs), 3),
            "predict_cold_cpu_s": round(statistics.median(r[2] for r in runs), 3),
            "predict_peak_rss_mb": round(max(r[1] for r in runs), 1),
        }
        typer.echo(f"{name}: {results[name]}", err=True)
    record = {
        "what": f"sentinel2-scd tiny, {scene_size}x{scene_size} px two-date scene, stsun predict --backend onnxruntime "
                "--overlap 0 (to completion; 256 px is one tile), fresh processes",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "repeat": repeat, "torch_importable_in_lean": torch_check.returncode == 0,
        "results": results,
        "predict_cold_ratio_lean_vs_torch_at_start": round(
            results["lean"]["predict_cold_s"] / results["full, torch at start"]["predict_cold_s"], 3),
        "predict_cold_cpu_ratio_lean_vs_torch_at_start": round(
            results["lean"]["predict_cold_cpu_s"] / results["full, torch at start"]["predict_cold_cpu_s"], 3),
    }
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    typer.echo(json.dumps(record, indent=2))


if __name__ == "__main__":
    sys.exit(typer.run(main))
