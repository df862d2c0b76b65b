import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_quick_smoke(tmp_path):
    """benchmarks/run.py --quick writes JSON, markdown and a plot, and lists what it could not run."""
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--profile", "sentinel2-bcd", "--quick",
         "--backends", "eager,folded,onnxruntime,onnxruntime-nospin,onnxruntime-int8,tensorrt", "--batch", "2",
         "--build-dir", str(tmp_path / "build"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    recs = {r["backend"]: r for r in result["records"]}
    assert set(recs) == {"eager", "folded", "onnxruntime", "onnxruntime-nospin", "onnxruntime-int8"}
    for r in recs.values():
        assert r["batch"] == 2 and r["throughput"] > 0 and r["peak_mem_mb"] > 0 and r["flops_per_tile"] > 1e8
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert {"backend", "batch", "throughput", "latency_ms", "peak_mem_mb", "argmax_agreement", "device"} <= set(r)
    assert recs["eager"]["speedup_vs_eager"] == 1.0
    assert recs["folded"]["argmax_agreement"] > 0.999
    assert recs["onnxruntime-nospin"]["argmax_agreement"] == recs["onnxruntime"]["argmax_agreement"]  # same graph
    assert [s["backend"] for s in result["skipped"]] == ["tensorrt"]
    assert "tensorrt" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_attention_benchmark_quick_smoke(tmp_path):
    """benchmarks/attention.py --quick (CPU, Triton interpreter): every implementation is checked
    against float64 and timed, JSON and plot written; without --quick a CPU run refuses."""
    import os

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = str(ROOT / "benchmarks" / "attention.py")
    res = subprocess.run([sys.executable, script, "--quick", "--dtype", "fp32,fp16", "--out", str(tmp_path / "a")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "a.json").read_text())
    rows = result["kernel"]
    assert {(r["dtype"], r["window"], r["impl"]) for r in rows} == {
        (d, w, i) for d in ("fp32", "fp16") for w in ("8x4", "4x8", "global") for i in ("kernel", "sdpa", "explicit")}
    for r in rows:
        assert r["ms"] > 0 and r["tflops"] > 0 and r["pct_peak"] > 0
        assert r["max_abs_err"] < (1e-4 if r["dtype"] == "fp32" else 1e-2), r
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    res = subprocess.run([sys.executable, script, "--out", str(tmp_path / "b")], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path, env=env)
    assert res.returncode == 2 and "needs a CUDA GPU" in res.stderr
