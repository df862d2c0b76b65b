"""The fused window-attention kernel against what generic exporters run, on a GPU.

python benchmarks/attention.py                      # the paper's large config, on CUDA
python benchmarks/attention.py --quick              # CPU smoke run under TRITON_INTERPRET=1

Kernel level (32x32 tokens, C=1024, 16 heads; batch x dates 1..32; windows 32x8, 16x16,
8x32 and global; fp16 and bf16): the Triton kernel vs pad+partition+SDPA+reverse (the
model's reference path) vs pad+partition+explicit softmax(QK^T)V+reverse. Milliseconds
(triton.testing.do_bench: median, L2 flushed between runs), useful TFLOP/s over valid tokens,
and the percentage of this device's measured bf16 matmul peak. Every implementation's output
is checked against a float64 reference first.

Model level (sentinel2-scd, large model, bf16): eager (dynamic model under bf16 autocast, SDPA),
folded (SDPA), folded + kernel, and compiled (folded + kernel + torch.compile with CUDA graphs);
``model_rows`` also runs eager fp32, the baseline of benchmarks/gpu.py.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import torch
import typer
from rich.console import Console

from stsun.atomic import atomic_write
from stsun.kernels.reference import window_attention_reference
from stsun.precision import PRECISIONS

console = Console(stderr=True)
WINDOWS = {"32x8": (32, 8), "16x16": (16, 16), "8x32": (8, 32), "global": (32, 32)}


def bench_ms(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def matmul_peak_tflops(device: str, dtype: torch.dtype) -> float:
    n = 8192 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / bench_ms(lambda: a @ b, device) / 1e9


def implementations(grid: tuple[int, int], window: tuple[int, int], heads: int) -> dict[str, Callable]:
    from stsun.kernels import window_attention

    return {
        "kernel": lambda qkv: window_attention(qkv, grid, window, heads),
        "sdpa": lambda qkv: window_attention_reference(qkv, grid, window, heads),
        "explicit": lambda qkv: window_attention_reference(qkv, grid, window, heads, explicit_softmax=True),
    }


def kernel_rows(grid: tuple[int, int], channels: int, heads: int, batches: list[int], dtypes: list[str],
                windows: dict[str, tuple[int, int]], device: str, peak: float) -> list[dict]:
    from stsun.kernels.window_kernel import attention_flops

    rows = []
    for dtype in dtypes:
        for wname, window in windows.items():
            impls = implementations(grid, window, heads)
            # correctness first, on a small batch against float64
            check = torch.randn(2, grid[0] * grid[1], 3 * channels, device=device, dtype=PRECISIONS[dtype].torch_dtype)
            ref = window_attention_reference(check.double(), grid, window, heads)
            errors = {name: float((fn(check).double() - ref).abs().max()) for name, fn in impls.items()}
            for batch in batches:
                qkv = torch.randn(batch, grid[0] * grid[1], 3 * channels, device=device,
                                  dtype=PRECISIONS[dtype].torch_dtype)
                flops = attention_flops(batch, grid, window, channels)
                for name, fn in impls.items():
                    try:
                        ms = bench_ms(lambda: fn(qkv), device)
                    except torch.OutOfMemoryError:
                        rows.append({"dtype": dtype, "window": wname, "batch": batch, "impl": name, "oom": True})
                        torch.cuda.empty_cache()
                        continue
                    tflops = flops / ms / 1e9
                    rows.append({"dtype": dtype, "window": wname, "batch": batch, "impl": name, "ms": ms,
                                 "tflops": tflops, "pct_peak": 100 * tflops / peak, "max_abs_err": errors[name]})
                by = {r["impl"]: r for r in rows[-3:] if "ms" in r}
                if "kernel" in by:
                    console.print(f"{dtype} {wname:>6} b{batch:<3} kernel {by['kernel']['ms']:.3f} ms "
                                  f"{by['kernel']['tflops']:.1f} TFLOP/s; kernel speedup"
                                  + "".join(f" vs {k} {by[k]['ms'] / by['kernel']['ms']:.2f}x"
                                            for k in by if k != "kernel"))
    return rows


# name -> (folded, dtype, fused kernel, torch.compile): the whole-model variants. The dynamic
# model's hypernetworks take fp32 metadata, so it runs bf16 under autocast; the folded one is cast.
MODEL_VARIANTS: dict[str, tuple[bool, torch.dtype, bool, bool]] = {
    "eager-fp32": (False, torch.float32, False, False),
    "eager": (False, torch.bfloat16, False, False),
    "folded": (True, torch.bfloat16, False, False),
    "folded+kernel": (True, torch.bfloat16, True, False),
    "compiled": (True, torch.bfloat16, True, True),
}


def model_rows(size: str, batches: list[int], device: str, variants: tuple[str, ...] = (
        "eager", "folded", "folded+kernel", "compiled"),
        on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Whole-model effect of the kernel: same weights, same tiles. The first variant is the
    baseline of ``x_base`` (speed) and ``argmax_agreement``. Compiled variants run last, largest
    batch first (their compilation is the slow part); ``on_row`` sees the rows after each one."""
    from stsun import Metadata
    from stsun.classmaps import predicted_classes
    from stsun.data.synthetic import synthetic_tiles
    from stsun.model.checkpoint import load_model
    from stsun.model.folding import fold
    from stsun.model.lgwa import use_fused_kernel
    from stsun.profiles import load_profile

    profile = load_profile("sentinel2-scd")
    model = load_model(None, size=size).eval()
    meta = Metadata.from_profile(profile)
    folded = fold(model, profile)
    modules: dict[tuple[bool, torch.dtype], torch.nn.Module] = {}
    compiled: dict[torch.dtype, Callable] = {}
    mode = "reduce-overhead" if device == "cuda" else "default"  # CUDA graphs on a GPU, as the compiled backend
    tiles = {b: synthetic_tiles(profile, b, seed=0)[0] for b in batches}
    rows: list[dict] = []
    baseline: dict[int, tuple[float, np.ndarray]] = {}
    order = [(n, b) for n in variants if not MODEL_VARIANTS[n][3] for b in batches]
    order += [(n, b) for n in variants if MODEL_VARIANTS[n][3] for b in sorted(batches, reverse=True)]
    for name, batch in order:
        is_folded, dtype, kernel, compile_it = MODEL_VARIANTS[name]
        weights = dtype if is_folded else torch.float32
        key = (is_folded, weights)
        if key not in modules:
            modules[key] = copy.deepcopy(folded if is_folded else model).to(device=device, dtype=weights)
        module = modules[key]
        use_fused_kernel(module, kernel)
        if compile_it:
            fn = compiled.setdefault(dtype, torch.compile(module, mode=mode, dynamic=False))
        else:
            fn = module if is_folded else (lambda x, m=module: m(x, meta))
        x = torch.from_numpy(tiles[batch]).to(device, weights)
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype != weights):
            start = time.perf_counter()
            out = fn(x).float().cpu().numpy()  # the first call includes compilation
            first_s = time.perf_counter() - start
            ms = bench_ms(lambda: fn(x), device)
        classes = predicted_classes(out)
        if batch not in baseline:
            baseline[batch] = (ms, classes)
        base_ms, base_classes = baseline[batch]
        rows.append({"variant": name, "batch": batch, "ms": ms, "ms_per_tile": ms / batch,
                     "tiles_per_s": batch / ms * 1e3, "x_base": base_ms / ms, "first_call_s": first_s,
                     "argmax_agreement": float((classes == base_classes).mean())})
        if on_row:
            on_row(rows)
    for batch in batches:
        mine = [r for r in rows if r["batch"] == batch]
        console.print(f"model {size} b{batch}: " + "  ".join(f"{r['variant']} x{r['x_base']:.2f}" for r in mine))
    return rows


def config(quick: bool) -> tuple[tuple[int, int], int, int, dict[str, tuple[int, int]]]:
    """(grid, channels, heads, windows): the paper's large size, or CPU smoke-run shapes (a 12x10
    grid exercises partial windows; 2 heads of 16 keep the interpreter fast)."""
    if quick:
        return (12, 10), 32, 2, {"8x4": (8, 4), "4x8": (4, 8), "global": (12, 10)}
    return (32, 32), 1024, 16, WINDOWS


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r["dtype"] for r in rows})
    windows = list(dict.fromkeys(r["window"] for r in rows))
    fig, axes = plt.subplots(len(dtypes), len(windows), figsize=(4 * len(windows), 3.2 * len(dtypes)), squeeze=False)
    for i, dtype in enumerate(dtypes):
        for j, window in enumerate(windows):
            ax = axes[i][j]
            for impl in ("kernel", "sdpa", "explicit"):
                pts = [(r["batch"], r["tflops"]) for r in rows
                       if r["dtype"] == dtype and r["window"] == window and r["impl"] == impl and "tflops" in r]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{dtype}, window {window}")
            ax.set_xlabel("batch x dates")
            ax.set_ylabel("TFLOP/s")
            ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def main(
    batch: Annotated[str, typer.Option(help="Comma-separated batch x dates.")] = "1,2,4,8,16,32",
    dtype: Annotated[str, typer.Option(help="Comma-separated: fp16, bf16 (fp32 too).")] = "fp16,bf16",
    model_size: Annotated[str, typer.Option(help="Whole-model comparison size ('' to skip).")] = "large",
    out: Annotated[Path, typer.Option(help="Output prefix: writes .json and .png.")] = Path(
        "benchmarks/results/attention_gpu"),
    quick: Annotated[bool, typer.Option(help="CPU smoke run: tiny shapes under TRITON_INTERPRET=1, no model.")] = False,
) -> None:
    """Benchmark the fused window-attention kernel (see module docstring)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not quick:
        console.print("[red]error:[/] the kernel benchmark needs a CUDA GPU; --quick runs a CPU smoke test")
        raise typer.Exit(2)
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        console.print("[red]error:[/] on CPU the kernel runs only under TRITON_INTERPRET=1")
        raise typer.Exit(2)
    batches = [int(b) for b in batch.split(",")]
    dtypes = [d.strip() for d in dtype.split(",")]
    grid, channels, heads, windows = config(quick)
    if quick:
        batches, model_size = batches[:1], ""
    peak_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = matmul_peak_tflops(device, peak_dtype)
    console.print(f"{device}: measured {str(peak_dtype).split('.')[-1]} matmul peak {peak:.1f} TFLOP/s")
    result = {
        "device": device_name(device),
        "torch": torch.__version__, "triton": __import__("triton").__version__, "quick": quick,
        "config": {"grid": grid, "channels": channels, "heads": heads, "windows": windows},
        "matmul_peak_tflops": peak, "peak_dtype": str(peak_dtype).split(".")[-1],
        "kernel": kernel_rows(grid, channels, heads, batches, dtypes, windows, device, peak),
        "model": model_rows(model_size, batches, device) if model_size else [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    plot(result["kernel"], out.with_suffix(".png"))
    console.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    typer.run(main)
