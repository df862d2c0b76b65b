"""Load test of `stsun serve` with NVIDIA's own load client, perf_analyzer, on loopback.

python benchmarks/serve.py                      # both input forms at concurrency 1,2,4,8,16, plus tuning
python benchmarks/serve.py --concurrency 1,4 --no-tune

perf_analyzer 2.51 ships in the tritonclient wheel of the serve extra (its two shared libraries
come from the nvidia-pytriton wheel; linked here in a temporary folder). For each input form
(scaled float32 ``x`` -> logits on ``<profile>``; raw uint16 ``dn`` -> maps and logits on
``<profile>-dn``: perf_analyzer always asks for every output) and each concurrency it records
throughput, p50/p99 latency and the server-side split perf_analyzer reports (queue, compute),
then what the HTTP guard costs (the same load on Triton's internal port, unguarded).
``--tune`` first measures a few model configurations at one concurrency and keeps the fastest
for the sweep. Results: benchmarks/results/serve_cpu.json and serve_cpu.png.
"""
from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

PA_LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
CORES = os.cpu_count() or 1
TUNING = {  # name -> a ServingConfig; the fastest at concurrency 8 runs the sweep
    f"1 instance x {CORES} threads, 2 ms batching delay": {"instances": 1, "intra_op_threads": CORES},
    f"2 instances x {max(1, CORES // 2)} threads": {"instances": 2, "intra_op_threads": max(1, CORES // 2)},
    f"1 instance x {CORES} threads, no batching delay": {"instances": 1, "intra_op_threads": CORES,
                                                       "max_queue_delay_us": 0},
    f"1 instance x {CORES} threads, 20 ms batching delay": {"instances": 1, "intra_op_threads": CORES,
                                                          "max_queue_delay_us": 20000},
}


def perf_analyzer(tmp: Path) -> tuple[str, dict[str, str]]:
    """The binary and an environment in which its libraries resolve."""
    binary = shutil.which("perf_analyzer", path=str(Path(sys.executable).parent)) or shutil.which("perf_analyzer")
    if binary is None:
        raise SystemExit("perf_analyzer not found: pip install 'stsun[serve]' (tritonclient 2.51 ships it)")
    import pytriton

    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    folder = tmp / "palibs"
    folder.mkdir()
    for name, pattern in PA_LIBS.items():
        found = sorted(libs.glob(pattern))
        if found:
            (folder / name).symlink_to(found[0])
    env = dict(os.environ, LD_LIBRARY_PATH=f"{folder}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}")
    return binary, env


def input_file(path: Path, name: str, array: np.ndarray) -> Path:
    path.write_text(json.dumps({"data": [{name: {"b64": base64.b64encode(array.tobytes()).decode(),
                                                 "shape": list(array.shape)}}]}))
    return path


def measure(pa: tuple[str, dict], model: str, url: str, data: Path, concurrency: int, interval_ms: int,
            csv_path: Path, headers: dict[str, str] | None = None) -> dict:
    """One perf_analyzer measurement: time windows of ``interval_ms`` until three agree within 50 %
    (a count-based measurement reports throughput over whole seconds: too coarse at ~10 inf/s)."""
    binary, env = pa
    run = None
    for interval in (interval_ms, 2 * interval_ms):  # an unstable load gets one longer try
        cmd = [binary, "-m", model, "-u", url, "-i", "http", "--input-data", str(data),
               "--concurrency-range", str(concurrency), "--measurement-interval", str(interval),
               "-s", "50", "-r", "4", "-f", str(csv_path), "--verbose-csv",
               *[arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}:{v}")]]
        csv_path.unlink(missing_ok=True)  # never read an earlier run's numbers
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode == 0 and csv_path.is_file():
            break
    else:
        raise RuntimeError(f"perf_analyzer failed ({run.returncode}): {run.stderr.strip() or run.stdout[-500:]}")
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    us = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "Concurrency"}
    return {"concurrency": concurrency, "throughput": us["Inferences/Second"],
            "latency_ms": {"p50": us["p50 latency"] / 1e3, "p99": us["p99 latency"] / 1e3},
            "server_ms": {"queue": us["Server Queue"] / 1e3,
                          "compute": (us["Server Compute Input"] + us["Server Compute Infer"]
                                      + us["Server Compute Output"]) / 1e3},
            "client_ms": {"send": us["Client Send"] / 1e3, "receive": us["Client Recv"] / 1e3}}


def main(
    profile: Annotated[str, typer.Option()] = "sentinel2-scd",
    concurrency: Annotated[str, typer.Option()] = "1,2,4,8,16",
    interval: Annotated[int, typer.Option(help="perf_analyzer measurement window, ms.")] = 5000,
    tune: Annotated[bool, typer.Option(
        help="Measure the TUNING configurations first (concurrency 8, float input).")] = True,
    build_dir: Annotated[Path | None, typer.Option()] = None,
    out: Annotated[Path, typer.Option()] = Path("benchmarks/results/serve_cpu.json"),
) -> None:
    from stsun.app.pipeline import build_artifacts
    from stsun.atomic import atomic_write
    from stsun.data.synthetic import synthetic_tiles
    from stsun.profiles import load_profile
    from stsun.runtime.serving.repository import ServingConfig, write_triton_repo
    from stsun.runtime.serving.server import ADMIN_HEADER, free_port
    from stsun.runtime.serving.supervisor import ServeOptions, Supervisor

    prof = load_profile(profile)
    bdir = build_dir or Path("build") / f"serve-{prof.name}"
    if not (bdir / "build_report.json").is_file():
        build_artifacts(prof, bdir, precisions=("fp32",), max_batch=8)
    x, _ = synthetic_tiles(prof, 1, seed=31)
    s = prof.scaling
    dn = np.clip(np.rint((x[0] - s.offset) / s.scale - s.dn_offset), 1, np.iinfo(s.dtype).max).astype(s.dtype)
    levels = [int(v) for v in concurrency.split(",")]
    result = {"profile": prof.name, "command": " ".join(["python", *sys.argv]),
              "server": "stsun serve: tritonserver 2.51 (nvidia-pytriton 0.7.0) python backend + onnxruntime CPU, "
                        "behind the stsun HTTP guard",
              "client": "perf_analyzer 2.51, HTTP, binary tensors, 1 tile per request",
              "machine": f"{os.cpu_count()} CPU cores, no GPU; server and client share them",
              "tuning": [], "records": [], "guard": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pa = perf_analyzer(tmp)
        forms = {"float32 x -> logits": (prof.name, input_file(tmp / "x.json", "x", x[0]), x[0].nbytes),
                 f"{s.dtype} dn -> maps + logits": (f"{prof.name}-dn", input_file(tmp / "dn.json", "dn", dn),
                                                    dn.nbytes)}

        def serve(config: ServingConfig) -> Supervisor:
            repo = tmp / "repo"
            shutil.rmtree(repo, ignore_errors=True)
            write_triton_repo(bdir, repo, serving=config)
            ports = [free_port() for _ in range(3)]
            return Supervisor(ServeOptions(repo, *ports, log=tmp / "triton.log"), report=lambda m: None)

        best, best_rate = ServingConfig(), 0.0
        for name, change in (TUNING.items() if tune else ()):
            config = replace(ServingConfig(), **change)
            with serve(config) as sup:
                model, data, _ = forms["float32 x -> logits"]
                r = measure(pa, model, sup.http_url, data, 8, interval, tmp / "tune.csv")
            result["tuning"].append({"name": name, "config": asdict(config), **r})
            print(f"tuning  {name}: {r['throughput']:.2f} inf/s, p99 {r['latency_ms']['p99']:.0f} ms")
            if r["throughput"] > best_rate:
                best, best_rate = config, r["throughput"]
        result["config"] = asdict(best)
        with serve(best) as sup:
            for form, (model, data, nbytes) in forms.items():
                for c in levels:
                    r = measure(pa, model, sup.http_url, data, c, interval, tmp / f"{model}-{c}.csv")
                    result["records"].append({"input": form, "model": model, "request_tensor_bytes": nbytes, **r})
                    print(f"{form:28s} concurrency {c:2d}: {r['throughput']:6.2f} inf/s, "
                          f"p50 {r['latency_ms']['p50']:5.0f} ms, "
                          f"p99 {r['latency_ms']['p99']:5.0f} ms, server queue {r['server_ms']['queue']:5.0f} ms, "
                          f"compute {r['server_ms']['compute']:4.0f} ms")
            model, data, _ = forms["float32 x -> logits"]
            for c in (1, 4):  # what the HTTP guard costs: the same load on Triton's own (internal) port
                # Triton's internal port answers only the supervisor's secret
                for where, url, headers in (("guard", sup.http_url, None), ("tritonserver directly",
                                            sup.server.http_url, {ADMIN_HEADER: sup.server.admin_key})):
                    r = measure(pa, model, url, data, c, interval, tmp / "guard.csv", headers)
                    result["guard"].append({"via": where, **r})
                    print(f"via {where:22s} concurrency {c}: {r['throughput']:6.2f} inf/s, "
                          f"p50 {r['latency_ms']['p50']:4.0f} ms")
    atomic_write(out, lambda t: t.write_text(json.dumps(result, indent=2) + "\n"))
    plot(result, out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for form in dict.fromkeys(r["input"] for r in result["records"]):
        rows = [r for r in result["records"] if r["input"] == form]
        cs = [r["concurrency"] for r in rows]
        a.plot(cs, [r["throughput"] for r in rows], marker="o", label=form)
        b.plot(cs, [r["latency_ms"]["p99"] for r in rows], marker="o", label=form)
    for ax, label in ((a, "inferences / s"), (b, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (perf_analyzer)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"stsun serve, {result['profile']}, {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    typer.run(main)
