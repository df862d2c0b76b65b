"""The build: profile + checkpoint -> folded model -> ONNX (fp32/fp16/int8) -> TensorRT,
each artifact checked against the eager model and recorded in ``build_report.json``."""
from __future__ import annotations

import datetime as dt
import json
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

import stsun
from stsun.atomic import atomic_write
from stsun.checkpoint import DEMO_CHECKPOINT, file_sha256, load_model, resolve_checkpoint, save_checkpoint
from stsun.profiles import Profile
from stsun.runtime import EagerEngine, FoldedEngine, OnnxRuntimeEngine
from stsun.runtime.engine import REPORT_NAME
from stsun.synthetic import synthetic_tiles
from stsun.train import calibrate_batchnorm

from .fidelity import fidelity
from .onnx_export import convert_fp16, export_fp32, model_metadata, quantize_int8
from .plugin_artifacts import PLUGIN_OP, run_with_reference, write_kernels
from .tensorrt_build import build_engine, tensorrt_unavailable_reason
from .trt_compat import check_tensorrt_compat

PRECISIONS = ("fp32", "fp16", "int8")
ATTENTION = ("tensorrt", "plugin")  # how LGWA attention reaches TensorRT (see build())
PLUGIN_CHECK_TILES = 1  # onnx's reference evaluator is pure numpy: seconds per tile
FIDELITY_SEED, CALIBRATION_SEED = 20260101, 7  # held-out tiles differ from calibration tiles


def build(profile: Profile, out: Path, checkpoint: Path | None = None, size: str | None = None,
          precisions: tuple[str, ...] = PRECISIONS, max_batch: int = 8, fidelity_tiles: int = 4,
          calibration_tiles: int = 16, calibrate_bn: bool = False, cpp: bool = False,
          attention: str = "tensorrt", console: Console | None = None) -> dict:
    """``attention="tensorrt"`` exports attention as MatMul/Softmax for TensorRT to fuse;
    ``"plugin"`` also exports ``model.<p>.plugin.onnx`` with one ``stsun::WindowAttention`` node
    per LGWA attention, writes the fused kernel's PTX for sm_80/sm_90, and builds the TensorRT
    engines from those graphs with the plugin (stsun.export.tensorrt_plugin)."""
    console = console or Console(stderr=True)
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precision {sorted(unknown)}; choose from {PRECISIONS}")
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention mode {attention!r}; choose from {ATTENTION}")
    if attention == "plugin" and "int8" in precisions:
        raise ValueError("the attention plugin path has fp32 and fp16 engines only; drop int8 or use "
                         "--attention tensorrt")
    out.mkdir(parents=True, exist_ok=True)
    size = size or (None if checkpoint else profile.model_size)
    resolved = resolve_checkpoint(checkpoint, size)
    model = load_model(resolved, size=size)
    source = "random init (seed 0)" if resolved is None else (
        "demo checkpoint" if resolved == DEMO_CHECKPOINT else str(resolved))
    if resolved is None:
        console.print(f"[yellow]warning:[/] no checkpoint given and no demo checkpoint for size "
                      f"'{model.config.size}': building from randomly initialised weights")
    if calibrate_bn:  # a sensor the checkpoint was not calibrated for: its task's statistics from this profile
        calibrate_batchnorm(model, [profile])
        model.eval()
        source += f", BatchNorm statistics recalibrated on generated {profile.name} tiles"
    ckpt = save_checkpoint(model, out / "checkpoint")
    sha = file_sha256(ckpt)
    report: dict = {
        "profile": json.loads(profile.model_dump_json()), "model_size": model.config.size,
        "checkpoint": {"source": source, "file": ckpt.name, "sha256": sha},
        "stsun_version": stsun.__version__, "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.machine(), "max_batch": max_batch, "attention": attention, "artifacts": [],
    }
    console.print(f"[bold]{profile.name}[/]: {model.config.size} model from {source} -> {out}")
    # The same pixel budget as `fidelity_tiles` two-date 256 px tiles, at least one tile.
    n_tiles = max(1, fidelity_tiles * 2 * 256 ** 2 // (profile.t_in * profile.tile_size ** 2))
    x, _ = synthetic_tiles(profile, n_tiles, seed=FIDELITY_SEED)
    eager = EagerEngine(model, profile, max_batch)
    ref = eager(x)

    def record(name: str, kind: str, precision: str, path: Path | None, seconds: float, outputs: np.ndarray,
               **extra) -> None:
        entry = {"name": name, "format": kind, "precision": precision,
                 "path": path.name if path else None, "bytes": path.stat().st_size if path else None,
                 "build_seconds": round(seconds, 2), "fidelity": fidelity(outputs, ref[:len(outputs)], precision),
                 **extra}
        report["artifacts"].append(entry)
        f = entry["fidelity"]
        mark = "[green]ok[/]" if f["gate"]["passed"] else "[red]FAILED[/]"
        console.print(f"  {name:<14} agreement {f['argmax_agreement']:.6f}  max|err| {f['max_abs_err']:.2e}  {mark}")

    t = time.perf_counter()
    folded = FoldedEngine(model, profile, max_batch)
    record("folded", "torch", "fp32", None, time.perf_counter() - t, folded(x))

    meta = model_metadata(profile, {"checkpoint_sha256": sha, "stsun_version": stsun.__version__,
                                    "model_size": model.config.size, "max_batch": max_batch})
    onnx_paths: dict[str, Path] = {}
    for precision in ("fp32", *[p for p in precisions if p != "fp32"]):
        t = time.perf_counter()
        path = out / f"model.{precision}.onnx"
        if precision == "fp32":
            export_fp32(folded.module, profile, path, meta)
        elif precision == "fp16":
            convert_fp16(onnx_paths["fp32"], path)
        else:
            calib, _ = synthetic_tiles(profile, calibration_tiles, seed=CALIBRATION_SEED)
            quantize_int8(onnx_paths["fp32"], path, calib)
        seconds = time.perf_counter() - t
        onnx_paths[precision] = path
        engine = OnnxRuntimeEngine(path, profile, max_batch, providers=["CPUExecutionProvider"])
        compat = check_tensorrt_compat(path).to_dict()
        record(f"onnx-{precision}", "onnx", precision, path, seconds, engine(x), tensorrt_compat=compat)
        if not compat["compatible"]:
            console.print(f"  [yellow]not TensorRT-compatible:[/] {escape('; '.join(compat['problems'][:2]))}")

    engine_onnx = onnx_paths
    if attention == "plugin":
        engine_onnx = _plugin_artifacts(folded.module, profile, out, meta, precisions, x[:PLUGIN_CHECK_TILES], record,
                                        report, console)

    if cpp:  # AOTInductor package for C++ services (runtime/cpp)
        from torch._inductor import aoti_load_package

        from .aoti_export import export_aoti

        t = time.perf_counter()
        pt2 = export_aoti(folded.module, profile, out / "model.fp32.pt2", max_batch,
                          {"checkpoint_sha256": sha, "stsun_version": stsun.__version__})
        seconds = time.perf_counter() - t
        runner = aoti_load_package(str(pt2))
        with torch.no_grad():
            outputs = np.concatenate([runner(torch.from_numpy(x[i:i + max_batch])).numpy()
                                      for i in range(0, len(x), max_batch)])
        record("aoti-fp32", "aoti", "fp32", pt2, seconds, outputs)

    reason = tensorrt_unavailable_reason()
    report["tensorrt"] = {"built": reason is None, "reason": reason}
    if reason:
        console.print(f"  [yellow]TensorRT engine skipped:[/] {escape(reason)}")
    else:
        from stsun.runtime import TensorRTEngine

        for precision in precisions:
            suffix = "-plugin" if attention == "plugin" else ""
            compat = next(a["tensorrt_compat"] for a in report["artifacts"]
                          if a["name"] == f"onnx-{precision}{suffix}")
            if not compat["compatible"]:
                report["tensorrt"].setdefault("skipped", {})[precision] = "; ".join(compat["problems"][:2])
                continue
            plan = out / f"model.{precision}.plan"
            info = build_engine(engine_onnx[precision], plan, profile, precision, max_batch, out / "timing.cache")
            engine = TensorRTEngine(plan, profile, max_batch)
            record(f"tensorrt-{precision}", "tensorrt", precision, plan, info.pop("build_seconds"), engine(x),
                   engine_info=info)

    report["passed"] = all(a["fidelity"]["gate"]["passed"] for a in report["artifacts"])
    atomic_write(out / REPORT_NAME, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    return report


def _plugin_artifacts(folded: torch.nn.Module, profile: Profile, out: Path, meta: dict[str, str],
                      precisions: tuple[str, ...], x: np.ndarray, record: Callable[..., None], report: dict,
                      console: Console) -> dict[str, Path]:
    """Plugin ONNX per precision, checked on the CPU with the reference attention in place of the
    plugin, plus the kernels' PTX; returns the ONNX each TensorRT engine is built from."""
    paths: dict[str, Path] = {}
    for precision in ("fp32", *[p for p in precisions if p != "fp32"]):
        t = time.perf_counter()
        path = out / f"model.{precision}.plugin.onnx"
        if precision == "fp32":
            export_fp32(folded, profile, path, meta, attention_plugin=True)
        else:
            convert_fp16(paths["fp32"], path)
        seconds = time.perf_counter() - t
        paths[precision] = path
        compat = check_tensorrt_compat(path, plugin_ops=(PLUGIN_OP,)).to_dict()
        record(f"onnx-{precision}-plugin", "onnx", precision, path, seconds, run_with_reference(path, x),
               tensorrt_compat=compat, checked_with="onnx reference evaluator, PyTorch reference attention "
                                                    f"for {PLUGIN_OP}, {len(x)} tile(s)")
    t = time.perf_counter()
    # TensorRT engines are strongly typed: fp32 kernels for the fp32 graph, fp16 for the fp16 one
    kernels = write_kernels(list(paths.values()), out / "kernels")
    worst = max(k["ptxas"]["spill_bytes"] for k in kernels)
    report["attention_plugin"] = {"kernels": kernels, "seconds": round(time.perf_counter() - t, 2)}
    console.print(f"  kernels        {len(kernels)} PTX (sm_80, sm_90a) assembled by ptxas, max spill {worst} B")
    return paths
