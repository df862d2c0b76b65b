"""The ``stsun`` command line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from stsun.profiles import ProfileError, builtin_profiles, load_profile

app = typer.Typer(help="STSUN deployment runtime.", no_args_is_help=True, add_completion=False)
console = Console()


@app.callback()
def main() -> None:
    """STSUN deployment runtime: profiles, export, inference, serving."""


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


@app.command()
def profiles(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    extra: Annotated[Optional[list[Path]], typer.Option("--file", help="Also show these profile files.")] = None,
) -> None:
    """List the deployment profiles (built-in, plus any --file)."""
    try:
        items = builtin_profiles() + [load_profile(p) for p in extra or []]
    except ProfileError as err:
        fail(str(err))
    if as_json:
        print(json.dumps([p.summary() for p in items], indent=2))
        return
    table = Table(title="STSUN profiles")
    table.add_column("name", no_wrap=True)
    for col in ("task", "sensor", "bands", "GSD m", "tile", "T_in", "T_out", "classes"):
        table.add_column(col)
    for p in items:
        table.add_row(p.name, p.task, p.sensor, str(p.c_in), f"{p.gsd_m:g}", str(p.tile_size),
                      str(p.t_in), str(p.t_out), f"{p.c_out}: {', '.join(p.classes)}")
    console.print(table)


@app.command()
def train(
    profiles_: Annotated[str, typer.Option("--profiles", help="Comma-separated profiles to train on jointly.")] = "sentinel2-scd,sentinel2-bcd,sentinel2-ss",
    size: Annotated[str, typer.Option(help="Model size.")] = "tiny",
    steps: Annotated[int, typer.Option(min=1)] = 1800,
    batch: Annotated[int, typer.Option(min=1)] = 4,
    lr: float = 2e-3,
    seed: int = 0,
    time_limit: Annotated[float, typer.Option(help="Stop after this many seconds.")] = 1140.0,
    out: Annotated[Path, typer.Option(help="Checkpoint path (.safetensors; config .json beside it).")] = Path("checkpoint.safetensors"),
) -> None:
    """Train one model jointly on several profiles from synthetic scenes (CPU-friendly)."""
    import sys

    from stsun.checkpoint import save_checkpoint
    from stsun.train import train as run_training

    try:
        profs = [load_profile(p.strip()) for p in profiles_.split(",")]
    except ProfileError as err:
        fail(str(err))
    model, info = run_training(profs, size=size, steps=steps, batch=batch, lr=lr, seed=seed, time_limit_s=time_limit)
    info["command"] = "stsun " + " ".join(sys.argv[1:])
    path = save_checkpoint(model, out, extra={"training": info})
    console.print(f"saved {path} after {info['steps_done']} steps ({info['seconds']} s), loss {info['final_loss_avg20']:.3f}")


@app.command()
def evaluate(
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint (default: the demo checkpoint).")] = None,
    tiles: Annotated[int, typer.Option(min=1, help="Held-out tiles per setting.")] = 8,
    out: Annotated[Optional[Path], typer.Option(help="Write the results JSON here (and a .md table beside it).")] = None,
    figure: Annotated[Optional[Path], typer.Option(help="Write a prediction-vs-label PNG here (needs matplotlib).")] = None,
) -> None:
    """F1 / IoU / OA per task and profile on held-out synthetic scenes, with trivial baselines."""
    from stsun.atomic import atomic_write
    from stsun.checkpoint import CheckpointError, load_model
    from stsun.evaluate import demo_figure, evaluate as run_eval, markdown_table

    try:
        model = load_model(checkpoint)
    except CheckpointError as err:
        fail(str(err))
    results = run_eval(model, tiles=tiles)
    table = markdown_table(results)
    print(table)
    if out:
        atomic_write(out, lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
        atomic_write(out.with_suffix(".md"), lambda tmp: tmp.write_text(table + "\n"))
    if figure:
        demo_figure(model, figure)


@app.command()
def predict(
    dates: Annotated[list[Path], typer.Argument(help="One multi-band GeoTIFF per date, in date order.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output GeoTIFF.")],
    engine_dir: Annotated[Path, typer.Option("--engine", help="Build directory from build_engine.py.")],
    profile: Annotated[Optional[str], typer.Option(help="Expected profile (checked against the build).")] = None,
    backend: Annotated[str, typer.Option(help="eager, folded, onnxruntime or tensorrt.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="Artifact precision: fp32, fp16, int8.")] = "fp32",
    overlap: Annotated[Optional[int], typer.Option(help="Tile overlap in pixels (default: tile / 4).")] = None,
    align: Annotated[bool, typer.Option(help="Reproject later dates onto the first date's grid.")] = False,
    dn_offset: Annotated[float, typer.Option(help="Added to raw values before scaling (Sentinel-2 baseline >= 04.00: -1000).")] = 0.0,
    probabilities: Annotated[bool, typer.Option(help="Also write OUTPUT.probs.tif (float32).")] = False,
    preview: Annotated[Optional[Path], typer.Option(help="Also write a PNG overview of inputs and maps.")] = None,
) -> None:
    """Whole-scene inference: tiled, blended and streamed into a georeferenced GeoTIFF."""
    from stsun.runtime import EngineError, load_engine
    from stsun.runtime.scene import SceneError, SceneOptions, predict_scene, preview as write_preview

    try:
        engine = load_engine(engine_dir, backend=backend, precision=precision)
        if profile and load_profile(profile).name != engine.profile.name:
            fail(f"{engine_dir} was built for profile '{engine.profile.name}', not '{profile}'")
        predict_scene(engine, list(dates), output, SceneOptions(overlap=overlap, align=align, dn_offset=dn_offset,
                                                                probabilities=probabilities))
        if preview:
            write_preview(list(dates), output, preview, engine.profile)
    except (EngineError, SceneError, ProfileError) as err:
        fail(str(err))
    console.print(f"wrote {output}")


@app.command("calibrate-bn")
def calibrate_bn(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint to calibrate.")],
    profiles_: Annotated[str, typer.Option("--profiles", help="Profiles whose tasks to calibrate.")] = "sentinel2-scd,sentinel2-bcd,sentinel2-ss",
    out: Annotated[Optional[Path], typer.Option(help="Where to write (default: overwrite the checkpoint).")] = None,
) -> None:
    """Recompute per-task BatchNorm statistics on unlabeled generated tiles of the given profiles."""
    import sys

    from stsun.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from stsun.train import calibrate_batchnorm

    try:
        model, meta = load_checkpoint(checkpoint)
        profs = [load_profile(p.strip()) for p in profiles_.split(",")]
    except (CheckpointError, ProfileError) as err:
        fail(str(err))
    info = calibrate_batchnorm(model, profs)
    info["command"] = "stsun " + " ".join(sys.argv[1:])
    extra = {k: v for k, v in meta.items() if k not in ("format", "config")}
    extra.setdefault("training", {})["batchnorm_calibration"] = info
    save_checkpoint(model.eval(), out or checkpoint, extra=extra)
    console.print(f"calibrated {', '.join(sorted({p.task for p in profs}))} statistics -> {out or checkpoint}")


@app.command("triton-repo")
def triton_repo(
    build_dir: Annotated[Path, typer.Argument(help="Build directory from build_engine.py.")],
    repo: Annotated[Path, typer.Option(help="Model repository to write into.")] = Path("triton_repo"),
    precision: Annotated[str, typer.Option(help="Which ONNX artifact the models serve.")] = "fp32",
) -> None:
    """Write this build's Triton models (python, onnxruntime_onnx, tensorrt_plan flavours)."""
    from stsun.runtime import EngineError
    from stsun.runtime.triton_repo import write_triton_repo

    try:
        names = write_triton_repo(build_dir, repo, precision)
    except EngineError as err:
        fail(str(err))
    console.print(f"wrote {', '.join(names)} into {repo}")


@app.command()
def serve(
    repo: Annotated[Path, typer.Option(help="Model repository.")] = Path("triton_repo"),
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
) -> None:
    """Run Triton Inference Server on 127.0.0.1 with the repository's python-backend models."""
    import signal
    import threading

    from stsun.runtime.server import ServerError, TritonServer

    server = TritonServer(repo, http_port, grpc_port, metrics_port)
    try:
        server.start()
    except ServerError as err:
        fail(str(err))
    console.print(f"serving {', '.join(server.models)}: http://{server.http_url}  grpc://{server.grpc_url}  "
                  f"metrics http://127.0.0.1:{metrics_port}/metrics  (Ctrl-C to stop)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if server.proc.poll() is not None:
            fail(f"tritonserver exited with code {server.proc.returncode}")
    server.stop()
    console.print("stopped")


def _register_build() -> None:
    from stsun.export.build_engine import build_command

    app.command("build")(build_command)


_register_build()

if __name__ == "__main__":
    app()
