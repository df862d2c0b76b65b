"""Latency / throughput of every backend against eager PyTorch, on the same tiles.

python benchmarks/run.py --profile sentinel2-scd --backends eager,folded,onnxruntime,onnxruntime-int8 --batch 1,4

Backends run interleaved in rounds (machine drift hits all alike), warm-up excluded. Each
record carries latency percentiles, throughput (tiles/s, km^2/s), peak host RSS, counted
FLOPs against this machine's measured matmul peak, and fidelity (argmax agreement vs eager).
Backends that cannot run here are listed with the reason.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import torch
import typer
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from stsun.app.pipeline import build_artifacts
from stsun.atomic import atomic_write
from stsun.classmaps import predicted_classes
from stsun.data.synthetic import synthetic_tiles
from stsun.precision import ONNX_PRECISIONS
from stsun.profiles import load_profile
from stsun.runtime import EngineError, load_engine
from stsun.runtime.backends import BACKENDS

console = Console(stderr=True)
# benchmark name -> (runtime backend, precision): every backend of the table at each of its
# precisions; the plain name is its first precision (fp32), e.g. onnxruntime, onnxruntime-fp16
RUNTIME_BACKENDS = {(b.name if i == 0 else f"{b.name}-{p}"): (b.name, p)
                    for b in BACKENDS.values() for i, p in enumerate(b.precisions)}
# onnxruntime fp32 with other session options (issue 28): worker threads that sleep between ops
# instead of spinning, and one intra-op thread.
SESSION_VARIANTS = {"onnxruntime-nospin": {"spinning": False}, "onnxruntime-1thread": {"threads": 1}}
RUNTIME_BACKENDS |= {name: ("onnxruntime", "fp32") for name in SESSION_VARIANTS}


def peak_rss_reset() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def make_runner(name: str, build_dir: Path, triton_url: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    if name == "torch-compile":
        engine = load_engine(build_dir, backend="eager")
        compiled = torch.compile(engine.model)
        meta = engine.meta

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return compiled(torch.from_numpy(x), meta).numpy()
        return run
    if name not in RUNTIME_BACKENDS:
        raise EngineError(f"unknown benchmark backend '{name}'")
    backend, precision = RUNTIME_BACKENDS[name]
    if reason := BACKENDS[backend].unavailable_reason():
        raise EngineError(reason)
    if backend == "triton":
        if not triton_url:
            raise EngineError("needs a running server: start `stsun serve` and pass --triton-url 127.0.0.1:8000")
        return load_engine(build_dir, backend="triton", url=triton_url)
    return load_engine(build_dir, backend=backend, precision=precision, **SESSION_VARIANTS.get(name, {}))


def main(
    profile: Annotated[str, typer.Option()] = "sentinel2-scd",
    size: Annotated[str, typer.Option()] = "tiny",
    backends: Annotated[str, typer.Option()] = ("eager,torch-compile,folded,compiled,onnxruntime,onnxruntime-nospin,"
                                                "onnxruntime-1thread,onnxruntime-fp16,onnxruntime-int8,tensorrt-fp16,"
                                                "triton"),
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4",
    rounds: Annotated[int, typer.Option(min=1)] = 10,
    warmup: Annotated[int, typer.Option(min=1)] = 2,
    build_dir: Annotated[Path | None, typer.Option(help="Reuse this build directory.")] = None,
    out: Annotated[Path, typer.Option()] = Path("benchmarks/results/cpu.json"),
    quick: Annotated[bool, typer.Option(help="Smoke test: 2 rounds, first batch size, no torch.compile.")] = False,
    triton_url: Annotated[str | None, typer.Option(help="Benchmark the triton backend against this server.")] = None,
) -> None:
    prof = load_profile(profile)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    batches = [int(b) for b in batch.split(",")]
    if quick:
        rounds, warmup, batches = 2, 1, batches[:1]
        names = [n for n in names if n not in ("torch-compile", "compiled")]
    bdir = build_dir or Path("build") / f"bench-{prof.name}-{size}"
    if not (bdir / "build_report.json").is_file():
        build_artifacts(prof, bdir, size=size, precisions=ONNX_PRECISIONS, max_batch=max(batches), console=console)
    report = json.loads((bdir / "build_report.json").read_text())
    fidelity = {(a["format"], a["precision"]): a["fidelity"]["argmax_agreement"] for a in report["artifacts"]}

    x_all, _ = synthetic_tiles(prof, max(batches), seed=424242)
    reference = load_engine(bdir, backend="eager")
    ref_pred = predicted_classes(reference(x_all))
    folded = load_engine(bdir, backend="folded").module
    with FlopCounterMode(display=False) as counter:
        folded(torch.from_numpy(x_all[:1]))
    flops_per_tile = counter.get_total_flops()
    peak = matmul_peak_gflops()
    console.print(f"{prof.name} {size}: {flops_per_tile / 1e9:.2f} GFLOP per tile; fp32 matmul peak {peak:.0f} GFLOP/s")

    runners, skipped = {}, []
    for name in names:
        try:
            runners[name] = make_runner(name, bdir, triton_url)
        except (EngineError, RuntimeError, ImportError) as err:
            skipped.append({"backend": name, "reason": str(err).splitlines()[0]})
            console.print(f"  skip {name}: {skipped[-1]['reason']}")
    agreement, mem, added = {}, {}, {}
    for name, run in runners.items():  # warm-up at every batch size, fidelity, peak memory
        peak_rss_reset()
        before = peak_rss_mb()
        for _ in range(warmup):
            for b in batches:
                y = run(x_all[:b])
        mem[name] = peak_rss_mb()
        added[name] = mem[name] - before
        agreement[name] = float((predicted_classes(y) == ref_pred).mean())
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in runners for b in batches}
    for _ in range(rounds):
        for b in batches:
            for name, run in runners.items():
                start = time.perf_counter()
                run(x_all[:b])
                times[(name, b)].append(time.perf_counter() - start)
    device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    km2_per_tile = (prof.tile_size * prof.gsd_m / 1000) ** 2
    records = []
    for (name, b), ts in times.items():
        t = np.array(ts)
        thr = b / np.median(t)
        backend, precision = RUNTIME_BACKENDS.get(name, ("torch-compile", "fp32"))
        records.append({
            "backend": name, "precision": precision, "batch": b, "throughput": thr, "km2_per_s": thr * km2_per_tile,
            "latency_ms": {q: float(np.percentile(t, int(q[1:])) * 1000) for q in ("p50", "p90", "p99")},
            "peak_mem_mb": mem[name], "peak_mem_added_mb": added[name], "argmax_agreement": agreement[name],
            "build_argmax_agreement": fidelity.get(
                (BACKENDS[backend].artifact if backend in BACKENDS else None, precision)),
            "flops_per_tile": flops_per_tile, "achieved_gflops": thr * flops_per_tile / 1e9,
            "fraction_of_matmul_peak": thr * flops_per_tile / 1e9 / peak, "device": device, "rounds": rounds,
        })
    eager = {r["batch"]: r["throughput"] for r in records if r["backend"] == "eager"}
    for r in records:
        r["speedup_vs_eager"] = r["throughput"] / eager[r["batch"]] if r["batch"] in eager else None
    result = {"profile": prof.name, "size": size, "machine": {"device": device, "matmul_peak_gflops": peak,
              "torch": torch.__version__}, "quick": quick, "records": records, "skipped": skipped}
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    table = markdown(result)
    atomic_write(out.with_suffix(".md"), lambda tmp: tmp.write_text(table + "\n"))
    plot(result, out.with_suffix(".png"))
    print(table)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"`{result['profile']}` `{result['size']}` on {m['device']} "
             f"(fp32 matmul peak {m['matmul_peak_gflops']:.0f} GFLOP/s), "
             f"torch {m['torch']}; ratios are against eager PyTorch measured in the same run.", "",
             "Peak RSS is the whole process while that backend ran (backends loaded earlier stay resident); "
             "'+RSS' is what running it added on top.", "",
             "| backend | batch | tiles/s | x eager | p50 ms | p90 ms | p99 ms | km²/s | GFLOP/s | % peak "
             "| peak RSS MB | +RSS MB | argmax agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["records"], key=lambda r: (r["batch"], r["backend"])):
        lat = r["latency_ms"]
        lines.append(f"| {r['backend']} | {r['batch']} | {r['throughput']:.2f} | {r['speedup_vs_eager']:.2f} | "
                     f"{lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {r['km2_per_s']:.1f} | "
                     f"{r['achieved_gflops']:.0f} | {100 * r['fraction_of_matmul_peak']:.0f} | "
                     f"{r['peak_mem_mb']:.0f} | "
                     f"{r['peak_mem_added_mb']:.0f} | "
                     f"{r['argmax_agreement']:.4f} |")
    for s in result["skipped"]:
        lines.append(f"\nNot run: **{s['backend']}**: {s['reason']}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["records"]
    backends = sorted({r["backend"] for r in recs})
    batches = sorted({r["batch"] for r in recs})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(batches)
    for i, b in enumerate(batches):
        rows = {r["backend"]: r for r in recs if r["batch"] == b}
        xs = np.arange(len(backends)) + i * width
        axes[0].bar(xs, [rows[n]["throughput"] if n in rows else 0 for n in backends], width, label=f"batch {b}")
        axes[1].bar(xs, [rows[n]["latency_ms"]["p50"] if n in rows else 0 for n in backends], width, label=f"batch {b}")
    for ax, title in zip(axes, ("throughput (tiles/s)", "latency p50 (ms per call)")):
        ax.set_xticks(np.arange(len(backends)) + width * (len(batches) - 1) / 2, backends, rotation=30, ha="right")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"{result['profile']} {result['size']}: {result['machine']['device']}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


if __name__ == "__main__":
    typer.run(main)
