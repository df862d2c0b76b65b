"""The prepared GPU run (benchmarks/gpu.py) rehearsed on CPU: every section through the code the
GPU run uses, at toy sizes, with its file writing and time-boxing. Run as subprocesses (the
dry run sets TRITON_INTERPRET for its children only), so nothing here is process-wide."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (the dev or gpu extra)")
pytest.importorskip("rasterio", reason="the scene and training sections read GeoTIFFs")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "benchmarks" / "gpu.py")
SECTIONS = ["kernel", "attention", "model", "scene", "train", "cpp"]


def dry_run(out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=out.parent)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("c++")), reason="the cpp section builds runtime/cpp")
def test_dry_run_runs_every_section(tmp_path):
    out = tmp_path / "out"
    res = dry_run(out, "--work", str(tmp_path / "work"))
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("device: ") and "torch" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == SECTIONS  # one summary line per section, in order
    assert sorted(p.name for p in out.iterdir()) == sorted(
        # 8 files: what a device call returns
        [f"{s}_gpu.json" for s in SECTIONS] + ["gpu_summary.json", "gpu_log.txt"])
    files = {s: json.loads((out / f"{s}_gpu.json").read_text()) for s in SECTIONS}
    for name, data in files.items():
        assert data["complete"] and data["status"] == "ok" and data["dry_run"], name
        assert {"device", "torch", "triton", "python"} <= set(data["identity"]) and data["summary"], name
        assert data["seconds"] <= data["box_s"]

    kernel = files["kernel"]["cases"]
    assert files["kernel"]["passed"] and all(c["passed"] for c in kernel)
    assert {(c["dtype"], c["window"]) for c in kernel} >= {(d, w) for d in ("fp32", "fp16", "bf16")
                                                            for w in ("32x8", "16x16", "8x32", "global")}
    attention = files["attention"]["kernel"]
    assert {r["impl"] for r in attention} == {"kernel", "sdpa", "explicit"} and all(r["ms"] > 0 for r in attention)
    assert all(r["max_abs_err"] < 5e-2 for r in attention)
    model = {r["variant"]: r for r in files["model"]["rows"]}
    assert list(model) == ["eager-fp32", "eager", "folded", "folded+kernel", "compiled"]
    assert model["eager-fp32"]["x_base"] == 1.0 and all(r["ms"] > 0 for r in model.values())
    assert all(r["argmax_agreement"] > 0.95 for r in model.values())  # bf16 against fp32, same weights
    eff = files["scene"]["efficiency"]
    assert eff["backend"] == "compiled" and eff["scene_px"] == 512 and files["scene"]["max_batch"] == 3
    assert eff["inputs"]["multi-band"]["km2_per_s"] > 0 and eff["inputs"]["multi-band"]["efficiency"] > 0
    run = files["train"]["runs"][0]
    assert run["size"] == "tiny" and run["steps"] >= 1 and run["steps_per_second"] > 0
    assert files["cpp"]["passed"] and files["cpp"]["max_abs"] < 1e-4 and files["cpp"]["cpp_median_ms"] > 0

    summary = json.loads((out / "gpu_summary.json").read_text())
    assert list(summary["sections"]) == SECTIONS and all(s["status"] == "ok" for s in summary["sections"].values())


def test_a_section_past_its_box_is_ended_and_the_run_goes_on(tmp_path):
    """A 1-second box ends the kernel section (its file says so, with the log's tail); the next
    section still runs; the exit code reports the time-out."""
    out = tmp_path / "out"
    res = dry_run(out, "--sections", "kernel,attention", "--box", "kernel=1", timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr[-3000:]
    kernel = json.loads((out / "kernel_gpu.json").read_text())
    assert kernel["status"] == "timed out" and not kernel["complete"] and kernel["box_s"] == 1
    assert kernel["identity"]["torch"]
    attention = json.loads((out / "attention_gpu.json").read_text())
    assert attention["status"] == "ok" and attention["complete"]
    assert [line.split()[:2] for line in res.stdout.splitlines()[1:]] == [["kernel", "timed"], ["attention", "ok"]]


def test_unknown_section_is_refused(tmp_path):
    res = dry_run(tmp_path / "out", "--sections", "kernel,warp", timeout=120)
    assert res.returncode == 2 and "unknown section(s) warp" in res.stderr


def test_the_real_run_needs_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real run would start")
    res = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "needs a CUDA device" in res.stderr and "--dry-run" in res.stderr


def test_children_end_when_the_run_is_killed(tmp_path):
    """A device call's time limit kills the run: its section children (sessions of their own) must
    not live on holding the GPU."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    # the model section runs for half a minute or more: longer than the wait below
    parent = subprocess.Popen([sys.executable, SCRIPT, "--dry-run", "--out", str(out), "--sections", "model"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)

    def children() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if proc.name.isdigit() and int(proc.name) != parent.pid and str(out) in cmdline:
                found.append(int(proc.name))
        return found

    deadline = time.monotonic() + 120
    while not (out / "model_gpu.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert children(), "the model section's child should be running"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while children() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert children() == []
