"""Load test of the served model: throughput and latency against concurrency, on loopback.

python benchmarks/serve.py --concurrency 1,2,4,8 --requests 20   (needs the serve extra)

Starts a real tritonserver on 127.0.0.1 with a repository written from the build, then for
each concurrency runs that many client threads, each sending a bounded number of one-tile
requests; records throughput, p50/p99 latency and how many requests each execution batched.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer


def main(
    profile: Annotated[str, typer.Option()] = "sentinel2-scd",
    concurrency: Annotated[str, typer.Option()] = "1,2,4,8",
    requests: Annotated[int, typer.Option(min=1, help="Requests per client thread.")] = 20,
    build_dir: Annotated[Path | None, typer.Option()] = None,
    out: Annotated[Path, typer.Option()] = Path("benchmarks/results/serve_cpu.json"),
) -> None:
    import tritonclient.http as httpclient

    from stsun.atomic import atomic_write
    from stsun.pipeline import build_artifacts
    from stsun.profiles import load_profile
    from stsun.runtime import load_engine
    from stsun.runtime.serving.server import TritonServer
    from stsun.runtime.serving.repository import write_triton_repo
    from stsun.synthetic import synthetic_tiles

    prof = load_profile(profile)
    bdir = build_dir or Path("build") / f"serve-{prof.name}"
    if not (bdir / "build_report.json").is_file():
        build_artifacts(prof, bdir, precisions=("fp32",), max_batch=8)
    x, _ = synthetic_tiles(prof, 1, seed=31)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        write_triton_repo(bdir, Path(tmp) / "repo")
        with TritonServer(Path(tmp) / "repo", 18000, 18001, 18002) as server:
            stats = httpclient.InferenceServerClient(server.http_url)
            for c in (int(v) for v in concurrency.split(",")):
                load_engine(bdir, backend="triton", url=server.http_url)(x)  # warm-up
                before = stats.get_inference_statistics(prof.name)["model_stats"][0]
                latencies: list[float] = []
                errors: list[BaseException] = []
                lock = threading.Lock()
                go = threading.Barrier(c + 1)

                def client() -> None:
                    try:  # tritonclient.http uses greenlets: each thread needs its own client
                        engine = load_engine(bdir, backend="triton", url=server.http_url)
                        go.wait()
                        for _ in range(requests):
                            start = time.perf_counter()
                            engine(x)
                            with lock:
                                latencies.append(time.perf_counter() - start)
                    except BaseException as err:  # reported after join
                        errors.append(err)
                        go.abort()

                threads = [threading.Thread(target=client) for _ in range(c)]
                for t in threads:
                    t.start()
                go.wait()
                start = time.perf_counter()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - start
                if errors:
                    raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
                after = stats.get_inference_statistics(prof.name)["model_stats"][0]
                inf = after["inference_count"] - before["inference_count"]
                exe = after["execution_count"] - before["execution_count"]
                lat = np.array(latencies) * 1000
                records.append({"concurrency": c, "requests": len(latencies), "throughput": len(latencies) / wall,
                                "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
                                "inferences_per_execution": inf / max(exe, 1)})
                r = records[-1]
                print(f"concurrency {c}: {r['throughput']:.2f} tiles/s, p50 {r['latency_ms']['p50']:.0f} ms, "
                      f"p99 {r['latency_ms']['p99']:.0f} ms, {r['inferences_per_execution']:.2f} requests per execution")
    result = {"profile": prof.name, "server": "tritonserver 2.51 (nvidia-pytriton 0.7.0), python backend + onnxruntime CPU",
              "records": records}
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))


if __name__ == "__main__":
    typer.run(main)
