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
         "--backends", "eager,folded,onnxruntime,onnxruntime-int8,tensorrt", "--batch", "2",
         "--build-dir", str(tmp_path / "build"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    recs = {r["backend"]: r for r in result["records"]}
    assert set(recs) == {"eager", "folded", "onnxruntime", "onnxruntime-int8"}
    for r in recs.values():
        assert r["batch"] == 2 and r["throughput"] > 0 and r["peak_mem_mb"] > 0 and r["flops_per_tile"] > 1e8
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert {"backend", "batch", "throughput", "latency_ms", "peak_mem_mb", "argmax_agreement", "device"} <= set(r)
    assert recs["eager"]["speedup_vs_eager"] == 1.0
    assert recs["folded"]["argmax_agreement"] > 0.999
    assert [s["backend"] for s in result["skipped"]] == ["tensorrt"]
    assert "tensorrt" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
