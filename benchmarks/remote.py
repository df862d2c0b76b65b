"""Remote-input throughput: the same scene read from local files and from nginx over HTTP, with
0 and 20 ms added to every request's round trip, and the bytes fetched over the bytes needed.

python benchmarks/remote.py [--size 1024] [--reps 3] [--delays 0,20] [--out benchmarks/results/remote_cpu.json]

The scene is the demo's two-date Sentinel-2 STAC layout (one tiled deflate GeoTIFF per band, the
20 m bands at 20 m, a STAC Item per date). nginx serves it on 127.0.0.1 behind ``DelayProxy``
(an asyncio TCP proxy that holds every request the given milliseconds; ``tc netem`` is not
available on these machines); at 0 ms the scene is read from nginx directly. Runs alternate (local, then each delay) so machine drift hits all
alike; the medians are compared: ratio = local seconds / remote seconds (1.0: latency fully
hidden). Bytes fetched are nginx's ``$bytes_sent`` of one remote run (headers included); bytes
needed are the band files' sizes (the whole scene is read, every block once at least).
"""  # noqa: E501
from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: benchmarks.servers

from benchmarks.servers import DelayProxy, access_log, nginx  # noqa: E402


def main(size: Annotated[int, typer.Option(help="Scene side in pixels.")] = 1024,
         reps: Annotated[int, typer.Option(help="Runs of each kind.")] = 3,
         delays: Annotated[str, typer.Option(help="Added round-trip latencies in ms, comma-separated.")] = "0,20",
         out: Annotated[Path, typer.Option(help="Results JSON.")] = Path("benchmarks/results/remote_cpu.json"),
         work: Annotated[Path | None, typer.Option(help="Working folder (default: a temporary one).")] = None) -> None:
    from stsun import load_profile
    from stsun.app.pipeline import build_artifacts
    from stsun.data.demo import write_stac
    from stsun.data.synthetic import write_scene
    from stsun.runtime import load_engine
    from stsun.runtime.readahead import DEPTH
    from stsun.runtime.scene import SceneOptions, predict_scene

    profile = load_profile("sentinel2-scd")
    with tempfile.TemporaryDirectory(prefix="stsun-remote-bench-") as tmp:
        root = Path(work or tmp)
        build = root / "build"
        if not (build / "build_report.json").is_file():
            build_artifacts(profile, build, precisions=("fp32",), max_batch=8, fidelity_tiles=1)
        engine = load_engine(build, backend="onnxruntime")
        stac = root / "stac"
        if not (stac / "date1" / "item.json").is_file():
            write_stac(write_scene(profile, root / "scene", size=size, seed=size)["dates"], stac)
        needed = sum(f.stat().st_size for f in stac.rglob("*.tif"))
        ms = [int(d) for d in delays.split(",")]
        seconds: dict[str, list[float]] = {"local": [], **{f"http_{d}ms": [] for d in ms}}
        fetched: dict[str, dict] = {}

        def timed(dates: list[str], name: str) -> float:
            start = time.perf_counter()
            predict_scene(engine, dates, root / f"{name}.tif", SceneOptions(progress=False))
            return time.perf_counter() - start

        local_dates = [str(stac / f"date{t + 1}" / "item.json") for t in range(profile.t_in)]
        with nginx(stac, root / "nginx") as (base, log):
            port = int(base.rsplit(":", 1)[1])
            timed(local_dates, "warm")  # the engine's first batches, the page cache
            for rep in range(reps):
                seconds["local"].append(timed(local_dates, "local"))
                for d in ms:  # 0 ms: nginx itself, no proxy in the way
                    with DelayProxy(port, d / 1000) if d else contextlib.nullcontext() as proxy:
                        url = f"http://127.0.0.1:{proxy.port if d else port}"
                        dates = [f"{url}/date{t + 1}/item.json" for t in range(profile.t_in)]
                        before = len(access_log(log))
                        seconds[f"http_{d}ms"].append(timed(dates, f"http_{d}"))
                        rows = access_log(log)[before:]
                    if rep == 0:
                        tif = [r for r in rows if r[2].endswith(".tif")]
                        fetched[f"http_{d}ms"] = {"requests": len(rows), "tif_requests": len(tif),
                                                  "bytes_fetched": sum(r[1] for r in tif),
                                                  "bytes_needed": needed,
                                                  "ratio": round(sum(r[1] for r in tif) / needed, 3)}
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        megapixels = size * size / 1e6
        result = {
            "benchmark": "remote inputs: local files vs nginx over HTTP with added round-trip latency",
            "command": f"python benchmarks/remote.py --size {size} --reps {reps} --delays {delays}",
            "scene": f"{size} x {size} px, {profile.t_in} dates, {profile.c_in} bands as per-band tiled GeoTIFFs "
                     f"(20 m bands at 20 m) with a STAC Item per date",
            "engine": "onnxruntime fp32, sentinel2-scd (demo checkpoint)", "read_ahead_strips": DEPTH,
            "seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
            "median_seconds": {k: round(v, 3) for k, v in medians.items()},
            "megapixels_per_s": {k: round(megapixels / v, 3) for k, v in medians.items()},
            "remote_over_local_throughput": {k: round(medians["local"] / v, 3)
                                             for k, v in medians.items() if k != "local"},
            "targets": {"http_0ms": 0.95, "http_20ms": 0.8},
            "bytes": fetched,
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_seconds", "remote_over_local_throughput", "bytes")}, indent=1))


if __name__ == "__main__":
    typer.run(main)
