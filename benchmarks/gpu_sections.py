"""What each section of the prepared GPU run (benchmarks/gpu.py) measures, at its real and its
dry-run (CPU, toy) sizes. Every section calls the project's own code: the kernel check shared
with tests/test_kernel.py, benchmarks/attention.py, benchmarks/scene.py, the compiled backend,
fine-tuning on a dataset, the AOTInductor export and the C++ example.

A section gets a ``Report`` and saves into it after each measurement, so whatever it measured
survives a time-out; it returns its one-line summary.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stsun.atomic import atomic_write

TRAIN_DATA = "train-data"
PREPARED = "prepared.json"

# Real sizes: what the issue asks for, sized to the time boxes of benchmarks/gpu.py.
REAL: dict[str, dict] = {
    "kernel": {"grids": [[32, 32], [30, 27], [20, 36]], "dtypes": ["fp32", "fp16", "bf16"], "paper": True},
    "attention": {"quick": False, "batches": [1, 2, 4, 8, 16, 32], "dtypes": ["bf16", "fp16"]},
    "model": {"size": "large", "batches": [1, 8]},
    "scene": {"size": "large", "px": 4096, "reps": 1},
    "train": {"sizes": ["tiny", "large"], "data_px": 1024, "seconds": 10, "batch": 4},
    "cpp": {"size": "tiny", "batch": 4},
}
# Dry run: the same code paths at toy sizes on the CPU.
DRY: dict[str, dict] = {
    "kernel": {"grids": [[20, 12]], "dtypes": ["fp32", "fp16", "bf16"], "paper": False},
    "attention": {"quick": True, "batches": [1], "dtypes": ["bf16"]},
    "model": {"size": "tiny", "batches": [1]},
    "scene": {"size": "tiny", "px": 512, "reps": 1},
    "train": {"sizes": ["tiny"], "data_px": 512, "seconds": 3, "batch": 2},
    "cpp": {"size": "tiny", "batch": 2},
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Report:
    """A section's JSON file, rewritten atomically on every save; ``complete`` stays false until
    the section ends."""

    def __init__(self, path: Path, **fields) -> None:
        self.path, self.data = path, {**fields, "complete": False}
        self.save()

    def save(self, **fields) -> None:
        self.data.update(fields)
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n"))


def identity(device: str) -> dict:
    """The machine the numbers come from: device, driver and library versions."""
    import triton
    from attention import device_name

    ident = {"device": device_name(device), "torch": torch.__version__, "triton": triton.__version__,
             "cuda": torch.version.cuda, "python": platform.python_version()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        ident.update(capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                     memory_gib=round(props.total_memory / 2 ** 30, 1), driver=driver_version())
    else:
        ident["threads"] = torch.get_num_threads()
    return ident


def driver_version() -> str | None:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None


def scd_profile():
    from stsun.profiles import load_profile

    return load_profile("sentinel2-scd")


# -- background preparation (CPU only: runs while the first sections use the GPU) ------------------
def prepare(cfg: dict[str, dict], work: Path) -> None:
    """Write the training dataset and the scene, and build the C++ example; ``work/prepared.json``
    records each step as it ends (its seconds, or its failure) for the sections waiting on it."""
    import scene as scene_bench

    from stsun.data.synthetic import write_scene
    from stsun.runtime.cpp_io import build_example

    prof, record = scd_profile(), {"pid": os.getpid()}
    steps: dict[str, Callable[[], object]] = {
        "train_data": lambda: write_scene(prof, work / TRAIN_DATA, size=cfg["train"]["data_px"], seed=7),
        "scene": lambda: scene_bench.efficiency_scene(prof, work, cfg["scene"]["px"]),
        # a quarter of the cores: the sections in the foreground compile too
        "cpp_build": lambda: build_example(work / "cpp", jobs=max(1, (os.cpu_count() or 1) // 4)),
    }
    for name, step in steps.items():
        start = time.perf_counter()
        try:
            step()
            record[name] = {"seconds": round(time.perf_counter() - start, 1)}
        except Exception as err:  # recorded for the section that needs it; the other steps go on
            detail = getattr(err, "stderr", None) or f"{type(err).__name__}: {err}"
            record[name] = {"error": str(detail)[-3000:]}
        atomic_write(work / PREPARED, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def running(pid: int) -> bool:
    """Whether process ``pid`` is alive (a zombie, dead but not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_prepared(work: Path, step: str) -> dict:
    """``prepare``'s record of ``step`` once it has ended; {} if no preparation runs or it died
    first (a section then makes what it needs itself, or says what is missing)."""
    while True:
        record = json.loads((work / PREPARED).read_text()) if (work / PREPARED).is_file() else {}
        if step in record or not running(record.get("pid", -1)):
            return record.get(step, {})
        time.sleep(0.5)


# -- sections, in order of value --------------------------------------------------------------------
def kernel(report: Report, cfg: dict, device: str, work: Path) -> str:
    """The fused kernel against float64: every window kind, even and uneven grids, each dtype; head
    dims 16 to 128; on a GPU also the paper's large attention (16 heads of 64)."""
    from stsun.kernels.check import HEAD_DIMS, WINDOWS, kernel_error, tolerance

    # the paper's attention first: the benchmarks after this section run it (and reuse its compiled kernels)
    cases = [dict(grid=[32, 32], window=w, dtype=d, heads=16, head_dim=64, batch=2)
             for d in ("bf16", "fp16") for w in WINDOWS] if cfg["paper"] else []
    cases += [dict(grid=g, window=w, dtype=d, heads=2, head_dim=16, batch=1)
              for d in cfg["dtypes"] for g in cfg["grids"] for w in WINDOWS]
    cases += [dict(grid=[12, 10], window="8x8", dtype="fp32", heads=1, head_dim=hd, batch=2) for hd in HEAD_DIMS]
    rows = []
    for i, case in enumerate(cases):
        dtype = DTYPES[case["dtype"]]
        window = (8, 8) if case["window"] == "8x8" else WINDOWS[case["window"]]
        try:
            err = kernel_error(tuple(case["grid"]), window, case["heads"], case["head_dim"], dtype, device,
                               case["batch"], seed=1000 + i)
            rows.append({**case, **err, "tolerance": tolerance(dtype, device),
                         "passed": err["max_abs"] < tolerance(dtype, device)})
        except Exception as err:  # one case's compile or launch failure must not hide the others
            rows.append({**case, "error": f"{type(err).__name__}: {err}"[:2000], "passed": False})
        report.save(cases=rows)
    passed = sum(r["passed"] for r in rows)
    worst = {d: max((r["max_abs"] for r in rows if r["dtype"] == d and "max_abs" in r), default=float("nan"))
             for d in cfg["dtypes"]}
    report.save(passed=passed == len(rows))
    return f"{passed}/{len(rows)} cases within tolerance; worst max|err| " + ", ".join(
        f"{d} {e:.1e}" for d, e in worst.items())


def attention(report: Report, cfg: dict, device: str, work: Path) -> str:
    """benchmarks/attention.py's kernel benchmark, one dtype and window at a time."""
    import attention as bench

    grid, channels, heads, windows = bench.config(cfg["quick"])
    peak_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = bench.matmul_peak_tflops(device, peak_dtype)
    rows: list[dict] = []
    report.save(config={"grid": grid, "channels": channels, "heads": heads, "windows": windows},
                matmul_peak_tflops=peak, peak_dtype=str(peak_dtype).split(".")[-1], kernel=rows)
    for dtype in cfg["dtypes"]:
        for wname, window in windows.items():
            rows += bench.kernel_rows(grid, channels, heads, cfg["batches"], [dtype], {wname: window}, device, peak)
            report.save(kernel=rows)
    top = max(cfg["batches"])
    kern = {(r["window"], r["batch"]): r for r in rows
            if r["impl"] == "kernel" and r["dtype"] == cfg["dtypes"][0] and "ms" in r}
    sdpa = {(r["window"], r["batch"]): r for r in rows
            if r["impl"] == "sdpa" and r["dtype"] == cfg["dtypes"][0] and "ms" in r}
    big = [k for k in kern if k in sdpa and k[1] >= min(16, top)]
    speedup = min((sdpa[k]["ms"] / kern[k]["ms"] for k in big), default=float("nan"))
    best = max((r["tflops"] for r in kern.values()), default=float("nan"))
    return (f"{cfg['dtypes'][0]} kernel best {best:.1f} TFLOP/s "
            f"({100 * best / peak:.0f}% of the measured matmul peak); "
            f"vs SDPA at batch >= {min(16, top)}: {speedup:.2f}x at worst (target 2x)")


def model(report: Report, cfg: dict, device: str, work: Path) -> str:
    """sentinel2-scd whole model: eager fp32 (the baseline) and bf16, folded, folded + kernel, compiled."""
    import attention as bench

    rows = bench.model_rows(cfg["size"], cfg["batches"], device, tuple(bench.MODEL_VARIANTS),
                            on_row=lambda rows: report.save(rows=rows))
    report.save(rows=rows, baseline="eager-fp32", size=cfg["size"], profile="sentinel2-scd")
    top = max(cfg["batches"])
    at_top = {r["variant"]: r for r in rows if r["batch"] == top}
    return f"{cfg['size']} batch {top}, x eager fp32 (target: compiled 10x): " + ", ".join(
        f"{v} {r['x_base']:.2f}x ({r['ms_per_tile']:.1f} ms/tile)" for v, r in at_top.items())


def scene(report: Report, cfg: dict, device: str, work: Path) -> str:
    """A two-date scene through the compiled backend (the runtime's GPU engine): km^2/s and the
    scene runner's efficiency (engine time over wall time)."""
    import scene as scene_bench

    from stsun.model.checkpoint import load_model
    from stsun.runtime.backends.compiled import CompiledEngine
    from stsun.tiling import TileGrid

    prof = scd_profile()
    report.save(prepared=wait_prepared(work, "scene"))
    tile = prof.tile_size
    cols = len(TileGrid(cfg["px"], cfg["px"], tile).cols)  # the scene default overlap
    # every strip then splits into equal batches: one compiled graph, not one per batch size
    batch = max(b for b in range(1, 9) if cols % b == 0)
    engine = CompiledEngine(load_model(None, size=cfg["size"]), prof, max_batch=batch, device=device)
    report.save(backend=engine.backend, precision=engine.precision, model_size=cfg["size"], max_batch=batch)
    eff = scene_bench.engine_efficiency(prof, engine, work, cfg["px"], cfg["reps"], kinds=("multi-band",))
    report.save(efficiency=eff)
    r = eff["inputs"]["multi-band"]
    return (f"{cfg['px']}^2 px, compiled {engine.precision} batch {batch}: {r['km2_per_s']:.1f} km2/s, efficiency "
            f"{r['efficiency']:.2f} (engine alone {eff['engine_only_seconds']:.1f} s, scene {r['seconds']:.1f} s)")


def train(report: Report, cfg: dict, device: str, work: Path) -> str:
    """`stsun train --data` (fine_tune from scratch) for a fixed time per model size: steps/s."""
    from stsun.data.datasets import open_dataset
    from stsun.data.synthetic import write_scene
    from stsun.training.finetune import FineTuneOptions, fine_tune

    prof = scd_profile()
    report.save(prepared=wait_prepared(work, "train_data"))
    data_dir = work / TRAIN_DATA
    if not (data_dir / "labels_date1.tif").is_file():  # the background preparation did not write it
        write_scene(prof, data_dir, size=cfg["data_px"], seed=7)
    dataset = open_dataset(data_dir, prof)
    runs = []
    for size in cfg["sizes"]:
        shutil.rmtree(work / f"train-{size}", ignore_errors=True)  # a rerun starts afresh, not resumes
        options = FineTuneOptions(epochs=1, epoch_steps=100_000, batch=cfg["batch"], val_fraction=0.0,
                                  time_limit_s=cfg["seconds"], device=device, calibration_batches=2)
        rec = fine_tune(dataset, work / f"train-{size}" / "model.safetensors", "scratch", options, size=size,
                        progress=False)
        runs.append({"size": size, "batch": cfg["batch"], "steps": rec["steps_done"],
                     "train_seconds": rec["train_seconds"],
                     "steps_per_second": rec["steps_per_second"], "device": rec["device"]})
        report.save(runs=runs)
    return "; ".join(f"{r['size']} {r['steps_per_second']:.2f} steps/s ({r['steps']} steps of {r['batch']} tiles)"
                     for r in runs)


def cpp(report: Report, cfg: dict, device: str, work: Path) -> str:
    """The AOTInductor package built for the device and run by the C++ example; logits against Python."""
    from stsun.classmaps import predicted_classes
    from stsun.data.synthetic import synthetic_tiles
    from stsun.export.aoti_export import export_aoti
    from stsun.model.checkpoint import load_model
    from stsun.model.folding import fold
    from stsun.model.lgwa import use_fused_kernel
    from stsun.runtime.cpp_io import read_tensor, write_tensor

    prof = scd_profile()
    folded = fold(load_model(None, size=cfg["size"]), prof).to(device)
    use_fused_kernel(folded, False)  # the kernel's custom op is Python-only: the package runs SDPA
    start = time.perf_counter()
    pt2 = export_aoti(folded, prof, work / "model.pt2", cfg["batch"], {}, device=device)
    report.save(model_size=cfg["size"], batch=cfg["batch"], export_seconds=round(time.perf_counter() - start, 1))
    built = wait_prepared(work, "cpp_build")
    report.save(prepared=built)
    exe = work / "cpp" / "stsun_example"
    if not exe.is_file():
        raise RuntimeError(f"the C++ example was not built: {built.get('error', 'no build was attempted')}")
    x, _ = synthetic_tiles(prof, cfg["batch"], seed=21)
    write_tensor(work / "input.bin", x)
    res = subprocess.run([str(exe), str(pt2), str(work / "input.bin"), str(work / "out"), "10"],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"stsun_example failed ({res.returncode}): {res.stderr[-2000:]}")
    logits = read_tensor(work / "out.logits.bin", np.float32)
    with torch.inference_mode():
        want = folded(torch.from_numpy(x).to(device)).float().cpu().numpy()
    diff = logits.astype(np.float64) - want
    cpp_ms = float(res.stdout.split("median ")[1].split(" ms")[0])
    result = {"max_abs": float(np.abs(diff).max()), "rel_l2": float(np.linalg.norm(diff) / np.linalg.norm(want)),
              "argmax_agreement": float((predicted_classes(logits) == predicted_classes(want)).mean()),
              "cpp_median_ms": cpp_ms, "cpp_stdout": res.stdout.strip()}
    # cuDNN convolutions default to TF32 on a GPU, in both Python and the package, by different algorithms
    report.save(**result, passed=result["rel_l2"] < (1e-2 if device == "cuda" else 1e-4))
    return (f"{cfg['size']} batch {cfg['batch']} on {device}: C++ {cpp_ms:.2f} ms; vs Python rel err "
            f"{result['rel_l2']:.1e}, argmax agreement {result['argmax_agreement']:.4f}")


SECTIONS: dict[str, Callable[[Report, dict, str, Path], str]] = {
    "kernel": kernel, "attention": attention, "model": model, "scene": scene, "train": train, "cpp": cpp}
