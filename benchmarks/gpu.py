"""One prepared GPU run: everything the GPU must show, in one command, rehearsed on CPU.

python benchmarks/gpu.py --out DIR                  # on a CUDA machine
python benchmarks/gpu.py --dry-run --out DIR        # CPU rehearsal: toy sizes, kernel under TRITON_INTERPRET=1

Sections, in order of value (benchmarks/gpu_sections.py says what each measures):
  kernel     fused kernel vs float64: every window kind, uneven grids, fp32/fp16/bf16  -> kernel_gpu.json
  attention  benchmarks/attention.py: kernel vs pad+partition+SDPA vs explicit softmax -> attention_gpu.json
  model      paper-large sentinel2-scd: eager fp32/bf16, folded, +kernel, compiled     -> model_gpu.json
  scene      a two-date 4096^2 scene through the compiled backend: km^2/s, efficiency  -> scene_gpu.json
  train      `stsun train --data` steps/s, tiny and large                               -> train_gpu.json
  cpp        AOTInductor package for the device run by the C++ example vs Python      -> cpp_gpu.json

Each section runs in a child process of its own under its time box (cut to what is left of
``--budget``): a hang, a CUDA fault or the box's end costs that section only. A section rewrites
its file after every measurement ("complete" stays false until it ends), so nothing measured is
lost. Every file carries the device's identity; ``gpu_summary.json`` holds each section's status
and ``gpu_log.txt`` the children's output. One line per section goes to stdout. Meanwhile a
background child writes the scene and training data and builds the C++ example, on the CPU; the
sections that need them wait for them within their own boxes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import gpu_sections
import typer

from stsun.atomic import atomic_write

FILES = {name: f"{name}_gpu.json" for name in gpu_sections.SECTIONS}
SUMMARY, LOG = "gpu_summary.json", "gpu_log.txt"
# Seconds per section. The real boxes add up to the real budget, which with the install (about
# 20 s) fits a device call of timeout_s=480 and leaves minutes of a 15-minute lease to run a part
# again. The dry run's budget keeps the CPU rehearsal under 5 minutes.
BOXES = {"kernel": 50, "attention": 60, "model": 120, "scene": 100, "train": 45, "cpp": 65}
DRY_BOXES = {"kernel": 90, "attention": 90, "model": 150, "scene": 150, "train": 90, "cpp": 150}
BUDGET, DRY_BUDGET = 440.0, 290.0
NEEDS_PREPARED = ("scene", "train", "cpp")


def spawn(args: list[str], log, dry_run: bool) -> subprocess.Popen:
    """This script as a child in a session of its own (so a time-out ends its workers too)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "_TYPER_STANDARD_TRACEBACK": "1"}  # plain tracebacks in the log
    env.pop("TRITON_INTERPRET", None)
    if dry_run:
        env["TRITON_INTERPRET"] = "1"  # the kernel on CPU; set before the child imports triton
    return subprocess.Popen([sys.executable, __file__, *args, *(["--dry-run"] if dry_run else [])],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> int | None:
    """The child's exit code, or None after killing its whole session at ``timeout``."""
    try:
        return proc.wait(timeout=max(timeout, 0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):  # one stuck in the kernel must not stop the run
            proc.wait(timeout=30)
        return None


def settle(path: Path, name: str, status: str, seconds: float, box: float, ident: dict, tail: str) -> dict:
    """The section's file with the parent's verdict added (a stub if the child wrote none)."""
    data = json.loads(path.read_text()) if path.is_file() else {"section": name, "identity": ident, "complete": False}
    data.update(status=status, seconds=round(seconds, 1), box_s=round(box))
    if status != "ok":
        data["log_tail"] = tail
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))
    return data


def run_section(name: str, seconds: float, out: Path, work: Path, log, dry_run: bool) -> tuple[str, str]:
    """(status, the tail of its output unless it ended well) of one section given ``seconds``."""
    log.write(f"\n===== {name} =====\n")
    log.flush()
    offset = os.fstat(log.fileno()).st_size
    rc = finish(spawn(["--section", name, "--out", str(out), "--work", str(work)], log, dry_run), seconds)
    status = "timed out" if rc is None else "ok" if rc == 0 else f"failed (exit {rc})"
    if status == "ok":
        return status, ""
    with open(log.name, "rb") as f:
        f.seek(offset)
        return status, f.read().decode(errors="replace")[-3000:]


def run_all(out: Path, work: Path, names: list[str], boxes: dict[str, float], budget: float, dry_run: bool) -> int:
    deadline = time.monotonic() + budget
    ident = gpu_sections.identity("cpu" if dry_run else "cuda")
    print("device: " + ", ".join(f"{k} {v}" for k, v in ident.items()), flush=True)
    summary = {"identity": ident, "dry_run": dry_run, "budget_s": budget, "sections": {}}
    with open(out / LOG, "a") as log:
        prepared = None
        if any(n in NEEDS_PREPARED for n in names):
            prepared = spawn(["--section", "prepare", "--out", str(out), "--work", str(work)], log, dry_run)
            # before any section looks for it: the sections wait on this process, never start its work
            work.mkdir(parents=True, exist_ok=True)
            atomic_write(work / gpu_sections.PREPARED, lambda tmp: tmp.write_text(json.dumps({"pid": prepared.pid})))
        for name in names:
            start = time.monotonic()
            box = min(boxes[name], deadline - start)
            status, tail = "skipped (budget spent)", ""
            if deadline - start >= 5:
                status, tail = run_section(name, start + box - time.monotonic(), out, work, log, dry_run)
            seconds = time.monotonic() - start
            data = settle(out / FILES[name], name, status, seconds, box, ident, tail)
            if data.get("passed") is False and status == "ok":
                status = "ok, FAILED its check"
            summary["sections"][name] = {"status": status, "seconds": round(seconds, 1), "box_s": round(box),
                                         "summary": data.get("summary", ""), "file": FILES[name]}
            atomic_write(out / SUMMARY, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
            print(f"{name:<10}{status:<22}{seconds:6.1f} s of {box:4.0f}  {data.get('summary', '')}", flush=True)
        if prepared is not None:
            finish(prepared, 0)
    return 0 if all(s["status"] == "ok" for s in summary["sections"].values()) else 1


def end_with_parent() -> None:
    """A child has a session of its own (a time-out ends it with its workers), so it would outlive a
    killed run (the device call's limit) and hold the GPU: it ends itself once its parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def run_child(name: str, out: Path, work: Path, dry_run: bool) -> None:
    end_with_parent()
    device = "cpu" if dry_run else "cuda"
    cfg = gpu_sections.DRY if dry_run else gpu_sections.REAL
    if name == "prepare":
        gpu_sections.prepare(cfg, work)
        return
    report = gpu_sections.Report(out / FILES[name], section=name, dry_run=dry_run,
                                 identity=gpu_sections.identity(device), config=cfg[name])
    summary = gpu_sections.SECTIONS[name](report, cfg[name], device, work)
    report.save(summary=summary, complete=True)


def main(
    out: Annotated[Path, typer.Option(help="Where the JSON files go (8 files at most).")] = Path("gpu-results"),
    dry_run: Annotated[bool, typer.Option(
        help="Rehearse on CPU: toy sizes, the kernel under TRITON_INTERPRET=1.")] = False,
    sections: Annotated[str, typer.Option(help="Comma-separated sections to run, in this order.")] = ",".join(FILES),
    budget: Annotated[Optional[float], typer.Option(help=f"Seconds for the whole run (default {BUDGET:g}, dry run "
                                                        f"{DRY_BUDGET:g}); boxes are cut to what is left.")] = None,
    box: Annotated[Optional[list[str]], typer.Option(help="NAME=SECONDS: another time box for a section.")] = None,
    work: Annotated[Optional[Path], typer.Option(help="Scratch folder (default: a temporary one, removed).")] = None,
    section: Annotated[Optional[str], typer.Option(
        hidden=True, help="Run one section here (the child's side).")] = None,
) -> None:
    """Run every GPU check, time-boxed, each section's JSON written as it goes (see the module doc)."""
    out.mkdir(parents=True, exist_ok=True)
    if section is not None:
        run_child(section, out, work, dry_run)
        return
    names = [n.strip() for n in sections.split(",") if n.strip()]
    boxes = dict(DRY_BOXES if dry_run else BOXES)
    for item in box or []:
        key, _, value = item.partition("=")
        boxes[key] = float(value)
    unknown = sorted(set(names) - set(FILES)) + sorted(set(boxes) - set(FILES))
    if unknown:
        raise typer.BadParameter(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(FILES)}")
    if not dry_run:
        import torch

        if not torch.cuda.is_available():
            typer.echo("error: the GPU run needs a CUDA device; --dry-run rehearses it on CPU", err=True)
            raise typer.Exit(2)
    scratch = work or Path(tempfile.mkdtemp(prefix="stsun-gpu-"))
    try:
        code = run_all(out, scratch, names, boxes, budget or (DRY_BUDGET if dry_run else BUDGET), dry_run)
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    raise typer.Exit(code)


if __name__ == "__main__":
    typer.run(main)
