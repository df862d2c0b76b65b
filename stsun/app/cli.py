"""The ``stsun`` command line."""
from __future__ import annotations

import json
import os
import textwrap
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from stsun.errors import StsunError, StsunWarning
from stsun.precision import PRECISIONS
from stsun.profiles import Profile, builtin_profiles, load_profile

# Markup and highlighting off: paths, ids and GDAL's messages are printed verbatim ("[map.tif: ...]"
# would otherwise be read as a markup tag and vanish); styled words are Text.
console = Console(markup=False, highlight=False)
errors = Console(stderr=True, markup=False, highlight=False)


def styled(label: str, style: str, message: str) -> Text:
    """``label`` in ``style``, then ``message`` as it is."""
    return Text.assemble((label, style), " ", message)


DEBUG_ENV = "STSUN_DEBUG"  # or --debug: expected failures keep their traceback too


def _terminate(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary files are removed on the way out."""
    raise SystemExit(128 + signum)


class _OneLineErrors:
    """An expected failure (StsunError, or an OSError such as a full disk) ends the command with
    one line on stderr and exit 2; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        import signal

        if threading_main():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except (StsunError, OSError) as err:
            if os.environ.get(DEBUG_ENV):
                raise
            message = str(err) if isinstance(err, StsunError) else f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")
            message = message or type(err).__name__  # some OSErrors (a timeout) carry no text
            errors.print(styled("error:", "bold red", message), soft_wrap=True)
            raise typer.Exit(2) from None


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class StsunGroup(_OneLineErrors, TyperGroup):
    pass


class StsunCommand(_OneLineErrors, TyperCommand):
    pass


app = typer.Typer(help="STSUN deployment runtime.", no_args_is_help=True, add_completion=False, cls=StsunGroup)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, StsunWarning):  # ours: one plain line, like errors
        errors.print(styled("warning:", "bold yellow", str(message)), soft_wrap=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


# Modules only the `build` extra installs: a command that imports one in the runtime install says so.
BUILD_EXTRA_MODULES = frozenset({"torch", "onnx", "onnxscript", "safetensors", "triton"})


def main() -> None:
    """The ``stsun`` entry point."""
    warnings.showwarning = _show_warning
    try:
        app()
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] not in BUILD_EXTRA_MODULES or os.environ.get(DEBUG_ENV):
            raise
        errors.print(styled("error:", "bold red", f"this needs the build extra ({err.name} is not installed): "
                            "pip install 'stsun[build]'"), soft_wrap=True)
        raise SystemExit(2) from None


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for expected failures too.")] = False) -> None:
    """STSUN deployment runtime: profiles, export, inference, serving."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _backend_help() -> str:
    from stsun.runtime.backends import BACKENDS

    return f"One of: {', '.join(b.name + (' (GPU)' if b.needs_gpu else '') for b in BACKENDS.values())}."


@app.command()
def profiles(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    extra: Annotated[Optional[list[Path]], typer.Option("--file", help="Also show these profile files.")] = None,
) -> None:
    """List the deployment profiles (built-in, plus any --file)."""
    items = builtin_profiles() + [load_profile(p) for p in extra or []]
    if as_json:
        print(json.dumps([p.summary() for p in items], indent=2))
        return
    # One line of facts per profile (fits 80 columns), its classes wrapped beneath it.
    rows = [(p.name, p.task, p.sensor, f"{p.c_in} x {p.gsd_m:g} m", str(p.tile_size), f"{p.t_in}->{p.t_out}")
            for p in items]
    header = ("name", "task", "sensor", "bands x GSD", "tile", "dates")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    console.print(line.format(*header), style="bold", highlight=False)
    for p, row in zip(items, rows):
        console.print(line.format(*row), highlight=False)
        classes = f"{p.c_out} class{'es' if p.c_out > 1 else ''}: {', '.join(p.classes)}"
        console.print(textwrap.fill(classes, min(console.width, 100), initial_indent="    ",
                                    subsequent_indent="      "), highlight=False)


DATA_HELP = ("A labelled dataset folder: A/ B/ label/ (binary change), im1/ im2/ label1/ label2/ (semantic change), "
             "images/ labels/ (segmentation) or GeoTIFF stacks (date1.tif ... with labels), optionally in "
             "train/ val/ test/.")
SYNTHETIC_PROFILES = "sentinel2-scd,sentinel2-bcd,sentinel2-ss"


def _only_with_data(data: Optional[Path], **given) -> None:
    """Options of the dataset path must not be given without --data (and vice versa)."""
    wrong = [f"--{k.replace('_', '-')}" for k, v in given.items() if v not in (None, False)]
    if wrong:
        raise typer.BadParameter(f"{', '.join(wrong)} {'can only' if data is None else 'cannot'} be used with --data")


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Option(help=DATA_HELP)] = None,
    profile: Annotated[Optional[str], typer.Option(help="With --data: the profile the data is for (name or .toml).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="With --data: start from this checkpoint "
                                                            "(default: the demo checkpoint).")] = None,
    scratch: Annotated[bool, typer.Option(help="With --data: start from random weights of --size.")] = False,
    epochs: Annotated[int, typer.Option(min=1, help="With --data: epochs to train.")] = 20,
    epoch_steps: Annotated[Optional[int], typer.Option(min=1, help="With --data: steps per epoch (default: the "
                                                                   "training tiles' area once).")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="With --data and no val split: the part of "
                                                                       "the training data held out.")] = 0.2,
    resume: Annotated[bool, typer.Option(help="With --data: continue the run saved in OUT.state.pt.")] = False,
    device: Annotated[Optional[str], typer.Option(help="With --data: cpu or cuda (default: cuda when there is one).")] = None,
    profiles_: Annotated[Optional[str], typer.Option("--profiles", help="Without --data: comma-separated profiles to "
                                                                       f"train on jointly (default: {SYNTHETIC_PROFILES}).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Without --data: training steps (default: 1800).")] = None,
    size: Annotated[str, typer.Option(help="Model size (synthetic training, or --scratch).")] = "tiny",
    batch: Annotated[int, typer.Option(min=1)] = 4,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: 2e-3; with --data from a "
                                                     "checkpoint 1e-3).")] = None,
    seed: int = 0,
    time_limit: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (synthetic default 1140).")] = None,
    out: Annotated[Path, typer.Option(help="Checkpoint path (.safetensors; config .json beside it).")] = Path("checkpoint.safetensors"),
) -> None:
    """Train on your labelled data (--data, --profile), or one model jointly on synthetic scenes."""
    import sys

    from stsun.model.checkpoint import save_checkpoint

    if data is None:
        _only_with_data(data, profile=profile, checkpoint=checkpoint, scratch=scratch, resume=resume, device=device,
                        epoch_steps=epoch_steps)
        from stsun.training.train import train as run_training

        profs = [load_profile(p.strip()) for p in (profiles_ or SYNTHETIC_PROFILES).split(",")]
        model, info = run_training(profs, size=size, steps=steps or 1800, batch=batch, lr=lr or 2e-3, seed=seed,
                                   time_limit_s=1140.0 if time_limit is None else time_limit)
        info["command"] = "stsun " + " ".join(sys.argv[1:])
        path = save_checkpoint(model, out, extra={"training": info})
        console.print(f"saved {path} after {info['steps_done']} steps ({info['seconds']} s), loss {info['final_loss_avg20']:.3f}")
        return
    _only_with_data(data, profiles=profiles_, steps=steps)
    if profile is None:
        raise typer.BadParameter("--data needs --profile (the profile the data is for)")
    if scratch and checkpoint is not None:
        raise typer.BadParameter("give --checkpoint or --scratch, not both")
    from stsun.data.datasets import open_dataset
    from stsun.training.finetune import FineTuneOptions, fine_tune

    dataset = open_dataset(data, load_profile(profile))
    options = FineTuneOptions(epochs=epochs, epoch_steps=epoch_steps, batch=batch, lr=lr, val_fraction=val_fraction,
                              seed=seed, time_limit_s=time_limit, device=device)
    fine_tune(dataset, out, "scratch" if scratch else checkpoint, options, resume=resume, size=size)


@app.command()
def evaluate(
    data: Annotated[Optional[Path], typer.Option(help=DATA_HELP)] = None,
    profile: Annotated[Optional[str], typer.Option(help="With --data: the profile the data is for (name or .toml).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint (default: the demo checkpoint).")] = None,
    engine_dir: Annotated[Optional[Path], typer.Option("--engine", help="With --data: also score this build "
                                                                        "directory's artifact.")] = None,
    backend: Annotated[str, typer.Option(help="With --engine: " + _backend_help())] = "onnxruntime",
    precision: Annotated[Optional[str], typer.Option(help="With --engine: the artifact's precision (default fp32).")] = None,
    split: Annotated[Optional[str], typer.Option(help="With --data: test, val, train, all, or heldout (the validation "
                                                      "part the checkpoint's training kept). Default: test if the data "
                                                      "has one, else heldout if the checkpoint names one, else val, "
                                                      "else all.")] = None,
    tiles: Annotated[int, typer.Option(min=1, help="Without --data: held-out tiles per setting.")] = 8,
    batch: Annotated[int, typer.Option(min=1, help="With --data: tiles per forward pass.")] = 4,
    out: Annotated[Optional[Path], typer.Option(help="Write the results JSON here (and a .md table beside it).")] = None,
    figure: Annotated[Optional[Path], typer.Option(help="Write a prediction-vs-label PNG of one tile here (with "
                                                        "--data, the split's first tile; needs matplotlib).")] = None,
) -> None:
    """Score a checkpoint (and with --engine a built artifact) against trivial baselines: on your
    labelled data (--data, --profile) with the paper's metrics, or on held-out synthetic scenes."""
    from stsun.atomic import atomic_write
    from stsun.model.checkpoint import load_model

    if data is None:
        _only_with_data(data, profile=profile, engine_dir=engine_dir, split=split, precision=precision)
        from stsun.training.evaluate import demo_figure, evaluate as run_eval, markdown_table

        model = load_model(checkpoint)
        results = run_eval(model, tiles=tiles)
        table = markdown_table(results)
    else:
        if profile is None:
            raise typer.BadParameter("--data needs --profile (the profile the data is for)")
        results = _evaluate_data(data, load_profile(profile), checkpoint, engine_dir, backend, precision, split, batch,
                                 figure)
        from stsun.training.evaluate import data_markdown

        table = data_markdown(results)
    print(table)
    if out:
        atomic_write(out, lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
        atomic_write(out.with_suffix(".md"), lambda tmp: tmp.write_text(table + "\n"))
    if figure and data is None:
        demo_figure(model, figure)
    if figure:
        console.print(f"wrote {figure}")


def _evaluate_data(data: Path, profile: Profile, checkpoint: Optional[Path], engine_dir: Optional[Path],
                   backend: str, precision: Optional[str], split: Optional[str], batch: int,
                   figure: Optional[Path] = None) -> dict:
    """``stsun evaluate --data``: the checkpoint, and a built artifact run by its backend, scored
    on the same tiles of the chosen split."""
    from stsun.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
    from stsun.data.datasets import open_dataset
    from stsun.errors import EngineError
    from stsun.training.evaluate import evaluate_data, model_predictor
    from stsun.training.finetune import evaluation_regions

    dataset = open_dataset(data, profile)
    ckpt = checkpoint or DEMO_CHECKPOINT
    model, meta = load_checkpoint(ckpt)
    split, regions = evaluation_regions(dataset, split, meta.get("training", {}))
    console.print(f"{dataset.describe()}\nscoring split '{split}': {len(regions)} regions", highlight=False)
    predictors = {f"checkpoint {ckpt.name}": model_predictor(model, profile)}
    if engine_dir is not None:
        from stsun.runtime import load_engine

        engine = load_engine(engine_dir, backend=backend, precision=precision)
        if engine.profile != profile:
            raise EngineError(f"{engine_dir} was built for profile '{engine.profile.name}' "
                              f"({engine.profile.task}, tile {engine.profile.tile_size}), not this '{profile.name}'")
        predictors[f"{backend} {engine.precision}"] = engine
    report = evaluate_data(predictors, dataset, regions, batch=batch, figure=figure)
    report["split"] = split
    return report


@app.command()
def predict(
    dates: Annotated[list[Path], typer.Argument(help="One input per date, in date order: a multi-band raster, a "
                                                     "directory of band files (Sentinel-2 SAFE, Landsat, COGs) or "
                                                     "a STAC Item JSON.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output map (a Cloud-Optimized GeoTIFF).")],
    engine_dir: Annotated[Path, typer.Option("--engine", help="Build directory from build_engine.py.")],
    profile: Annotated[Optional[str], typer.Option(help="Expected profile (checked against the build).")] = None,
    backend: Annotated[str, typer.Option(help=_backend_help())] = "onnxruntime",
    precision: Annotated[Optional[str], typer.Option(help=f"One of the backend's precisions ({', '.join(PRECISIONS)}; "
                                                          "default fp32, compiled on a GPU bf16).")] = None,
    overlap: Annotated[Optional[int], typer.Option(help="Tile overlap in pixels (default: tile / 4).")] = None,
    align: Annotated[bool, typer.Option(help="Reproject later dates onto the first date's grid.")] = False,
    dn_offset: Annotated[Optional[float], typer.Option(help="Added to raw values before scaling, for every band "
                                                            "(default: the product's metadata, e.g. a Sentinel-2 SAFE's "
                                                            "BOA_ADD_OFFSET, else the profile's scaling.dn_offset).")] = None,
    probabilities: Annotated[bool, typer.Option(help="Also write OUTPUT.probs.tif.")] = False,
    probabilities_encoding: Annotated[str, typer.Option(help="float32, or uint8 (p * 254, 255 = nodata, band scale "
                                                             "1/254: a quarter of the size).")] = "float32",
    mask_quality: Annotated[bool, typer.Option(help="Mask cloud, shadow, saturated and no-data pixels with the "
                                                    "product's quality band (Sentinel-2 SCL, Landsat QA_PIXEL).")] = False,
    url: Annotated[Optional[str], typer.Option(help="--backend triton: the server (host:port; default 127.0.0.1 "
                                                    "port 8000 for http, 8001 for grpc).")] = None,
    protocol: Annotated[str, typer.Option(help="--backend triton: http or grpc.")] = "http",
    preview: Annotated[Optional[Path], typer.Option(help="Also write a PNG overview of inputs and maps.")] = None,
) -> None:
    """Whole-scene inference: tiled, blended and streamed into a Cloud-Optimized GeoTIFF."""
    from stsun.errors import EngineError
    from stsun.runtime import load_engine
    from stsun.runtime.scene import SceneOptions, predict_scene, preview as write_preview

    remote = {"url": url, "protocol": protocol} if backend == "triton" else {}
    engine = load_engine(engine_dir, backend=backend, precision=precision, **remote)
    if profile and load_profile(profile).name != engine.profile.name:
        raise EngineError(f"{engine_dir} was built for profile '{engine.profile.name}', not '{profile}'")
    summary: dict = {}
    predict_scene(engine, list(dates), output, SceneOptions(
        overlap=overlap, align=align, dn_offset=dn_offset, probabilities=probabilities,
        probabilities_encoding=probabilities_encoding, mask_quality=mask_quality, summary=summary))
    if preview:
        write_preview(list(dates), output, preview, engine.profile, dn_offset=dn_offset)
    written = [output] + ([output.with_suffix(".probs.tif")] if probabilities else []) + ([preview] if preview else [])
    console.print(f"wrote {', '.join(map(str, written))}", soft_wrap=True)
    for line in summary_lines(summary):
        console.print(line, soft_wrap=True)


def summary_lines(summary: dict, shown: int = 6) -> list[str]:
    """A map's summary (``Tally.summary``) in a few lines: area with data, the largest classes per
    date, the changed area."""
    lines = [f"area with data: {summary['km2']:,.2f} km² ({summary['valid_share']:.1%} of the scene)"]
    for band, shares in summary["bands"].items():
        if band in summary["changed_km2"]:
            lines.append(f"{band}: changed {summary['changed_km2'][band]:,.2f} km² ({shares['changed']:.1%})")
        else:
            top = sorted(shares.items(), key=lambda kv: -kv[1])[:shown]
            lines.append(f"{band}: " + ", ".join(f"{c} {v:.1%}" for c, v in top))
    return lines


@app.command("predict-many")
def predict_many(
    manifest: Annotated[Path, typer.Argument(help="The jobs, each an id and its dates: a JSON list of "
                                                  "{\"id\": ..., \"dates\": [...]}, a CSV with columns id,date1,date2,... "
                                                  "or a STAC ItemCollection (paired per tile by --pair-rule).")],
    engine_dir: Annotated[Path, typer.Option("--engine", help="Build directory from build_engine.py (the same path "
                                                              "on every worker).")],
    outdir: Annotated[Path, typer.Option("-o", "--output-dir", help="Writes OUTDIR/<id>.tif per job, and "
                                                                    "OUTDIR/report.json.")],
    scheduler: Annotated[Optional[str], typer.Option(help="An existing Dask cluster's scheduler (tcp://host:8786); "
                                                          "default: a local cluster on this machine.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Local cluster: worker processes (default: one per "
                                                                "core).")] = None,
    dashboard_address: Annotated[str, typer.Option(help="Local cluster: where its Dask dashboard listens (another "
                                                        "free port when this one is taken; :0 any).")] = "127.0.0.1:8787",
    threads: Annotated[Optional[int], typer.Option(min=1, help="Engine threads per worker (default: the host's cores "
                                                                "shared among its workers' task slots).")] = None,
    retries: Annotated[int, typer.Option(min=0, help="Further attempts of a failing job before it is reported "
                                                     "failed.")] = 2,
    profile: Annotated[Optional[str], typer.Option(help="Expected profile (checked against the build).")] = None,
    backend: Annotated[str, typer.Option(help=_backend_help())] = "onnxruntime",
    precision: Annotated[Optional[str], typer.Option(help="One of the backend's precisions (default fp32).")] = None,
    url: Annotated[Optional[list[str]], typer.Option(help="--backend triton: a server (host:port); repeat it to "
                                                          "spread the workers over several.")] = None,
    protocol: Annotated[str, typer.Option(help="--backend triton: http or grpc.")] = "http",
    pair_rule: Annotated[str, typer.Option(help="STAC ItemCollection: how a tile's items make jobs: "
                                                "consecutive, or START/END date windows, one per date.")] = "consecutive",
    tile_property: Annotated[Optional[str], typer.Option(help="STAC ItemCollection: the item property that names "
                                                              "the tile (default: grid:code, s2:mgrs_tile, mgrs:*, "
                                                              "landsat:wrs_path/row).")] = None,
    overlap: Annotated[Optional[int], typer.Option(help="Tile overlap in pixels (default: tile / 4).")] = None,
    align: Annotated[bool, typer.Option(help="Reproject later dates onto the first date's grid.")] = False,
    dn_offset: Annotated[Optional[float], typer.Option(help="Added to raw values before scaling (default: the "
                                                            "product's metadata, else the profile's).")] = None,
    mask_quality: Annotated[bool, typer.Option(help="Mask cloud, shadow, saturated and no-data pixels with the "
                                                    "product's quality band.")] = False,
    probabilities: Annotated[bool, typer.Option(help="Also write OUTDIR/<id>.probs.tif (float32).")] = False,
    preview: Annotated[bool, typer.Option(help="Also write OUTDIR/<id>.png, an overview of inputs and maps.")] = False,
) -> None:
    """Many scenes on a Dask cluster: every job of MANIFEST as `stsun predict` would run it, skipping
    jobs whose map is already done, retrying failures, with a report. Exit 1 if any job failed."""
    from stsun.errors import EngineError
    from stsun.app.manifest import read_manifest
    from stsun.app.many import REPORT_NAME, EngineSpec, RunOptions, predict_many as run
    from stsun.runtime.engine import BuildDir

    if scheduler and workers:
        raise typer.BadParameter("--workers sizes the local cluster; with --scheduler the cluster's own workers run")
    if url and backend != "triton":
        raise typer.BadParameter("--url is for --backend triton")
    build = BuildDir(engine_dir)
    if profile and load_profile(profile).name != build.profile.name:
        raise EngineError(f"{engine_dir} was built for profile '{build.profile.name}', not '{profile}'")
    jobs = read_manifest(manifest, build.profile.t_in, outdir / "items", pair_rule, tile_property)
    for line in jobs.unpaired:
        errors.print(f"no job for tile {line}", highlight=False, soft_wrap=True)
    report = run(jobs, EngineSpec(str(engine_dir), backend, precision, tuple(url or ()), protocol), outdir,
                 RunOptions(scheduler=scheduler, workers=workers, threads=threads, retries=retries, overlap=overlap,
                            dashboard_address=dashboard_address,
                            align=align, dn_offset=dn_offset, mask_quality=mask_quality,
                            probabilities=probabilities, preview=preview),
                 log=lambda text: console.print(text, highlight=False, soft_wrap=True))
    counts = report["counts"]
    rate = f", {report['scenes_per_hour']:g} scenes/h" if report["scenes_per_hour"] else ""
    console.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed{rate}; "
                  f"report: {outdir / REPORT_NAME}", highlight=False, soft_wrap=True)
    for job in report["jobs"]:
        if job["status"] == "failed":
            errors.print(styled("failed:", "bold red", f"{job['id']}: {job['error']}"), soft_wrap=True)
    if counts["failed"]:
        raise typer.Exit(1)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the demo inputs into.")],
    size: Annotated[int, typer.Option(min=256, help="Width and height of the Sentinel-2 scene, pixels.")] = 512,
) -> None:
    """Write inputs to try every journey on: a two-date Sentinel-2 scene, the same dates as SAFE
    products and as STAC items (with an ItemCollection), and a LEVIR-style change dataset with a
    256 px profile; then print the commands that use them."""
    import shlex

    from stsun.data.demo import write_demo

    w = write_demo(output, size=size)
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    out, build, stac = output / "out", Path("build") / "sentinel2-scd", w["catalogue"].parent
    console.print(f"wrote a {size} x {size} px two-date Sentinel-2 scene ({q(w['scene'])}), its SAFE products "
                  f"(baseline 05.10, {q(w['safe1'].parent)}), STAC items ({q(stac)}) and a LEVIR-style dataset "
                  f"({q(w['levir'])}, profile {q(w['levir_profile'])}). Next:", soft_wrap=True)
    commands = [
        *(["python export/build_engine.py --profile sentinel2-scd"] if not (build / "build_report.json").is_file() else []),
        f"stsun predict {q(w['scene'] / 'date1.tif')} {q(w['scene'] / 'date2.tif')} --engine {build} "
        f"-o {q(out / 'scene.tif')} --preview {q(out / 'scene.png')}",
        f"stsun predict {q(w['safe1'])} {q(w['safe2'])} --engine {build} -o {q(out / 'safe.tif')}",
        f"stsun predict {q(stac / 'date1' / 'item.json')} {q(stac / 'date2' / 'item.json')} --engine {build} "
        f"-o {q(out / 'stac.tif')}",
        f"stsun predict-many {q(w['catalogue'])} --engine {build} -o {q(out / 'many')}",
        f"stsun train --data {q(w['levir'])} --profile {q(w['levir_profile'])} --epochs 2 "
        f"--out {q(out / 'levir.safetensors')}",
        f"stsun evaluate --data {q(w['levir'])} --profile {q(w['levir_profile'])} "
        f"--checkpoint {q(out / 'levir.safetensors')}",
    ]
    for command in commands:
        console.print(f"  {command}", soft_wrap=True)


@app.command("calibrate-bn")
def calibrate_bn(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint to calibrate.")],
    profiles_: Annotated[str, typer.Option("--profiles", help="Profiles whose tasks to calibrate.")] = "sentinel2-scd,sentinel2-bcd,sentinel2-ss",
    out: Annotated[Optional[Path], typer.Option(help="Where to write (default: overwrite the checkpoint).")] = None,
) -> None:
    """Recompute per-task BatchNorm statistics on unlabeled generated tiles of the given profiles."""
    import sys

    from stsun.model.checkpoint import load_checkpoint, save_checkpoint
    from stsun.training.train import calibrate_batchnorm

    model, meta = load_checkpoint(checkpoint)
    profs = [load_profile(p.strip()) for p in profiles_.split(",")]
    info = calibrate_batchnorm(model, profs)
    info["command"] = "stsun " + " ".join(sys.argv[1:])
    extra = {k: v for k, v in meta.items() if k not in ("format", "config")}
    extra.setdefault("training", {})["batchnorm_calibration"] = info
    save_checkpoint(model.eval(), out or checkpoint, extra=extra)
    console.print(f"calibrated {', '.join(sorted({p.task for p in profs}))} statistics -> {out or checkpoint}")


@app.command("import-research")
def import_research(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint of the authors' training code: a Lightning .ckpt, "
                                                    "or a state dict of their encoder.* / decoder.* tensors "
                                                    "(.pt/.pth via torch.save, or .safetensors).")],
    dataset: Annotated[str, typer.Option(help="Their dataset whose settings to deploy: whu, whucd, levircd or tscd.")],
    out: Annotated[Path, typer.Option(help="Our checkpoint to write (.safetensors; config .json beside it).")],
    heads: Annotated[int, typer.Option(min=1, help="Attention heads it was trained with (shapes cannot tell).")] = 16,
    trust_pickle: Annotated[bool, typer.Option(help="Allow Python objects besides tensors in the file (full pickle: "
                                                    "only for files you trust).")] = False,
) -> None:
    """Import a checkpoint of the authors' code as a research-variant STSUN checkpoint."""
    from stsun.model.research_import import import_research as run_import

    path, settings = run_import(checkpoint, dataset, out, heads=heads, trust_pickle=trust_pickle)
    console.print(f"wrote {path} (research variant, dataset '{dataset}': {settings['t_in']} -> {settings['t_out']} dates, "
                  f"{settings['classes']} class(es), {settings['tile_size']} px tiles)", highlight=False, soft_wrap=True)
    if settings["profile"]:
        console.print(f"build it: python export/build_engine.py --profile {settings['profile']} --checkpoint {path}",
                      highlight=False, soft_wrap=True)


@app.command("triton-repo")
def triton_repo(
    build_dir: Annotated[Path, typer.Argument(help="Build directory from build_engine.py.")],
    repo: Annotated[Path, typer.Option(help="Model repository to write into.")] = Path("triton_repo"),
    precision: Annotated[str, typer.Option(help="Which ONNX artifact the models serve.")] = "fp32",
    instances: Annotated[int, typer.Option(min=1, help="Model instances per model.")] = 2,
    intra_op_threads: Annotated[Optional[int], typer.Option(
        min=0, help="onnxruntime threads per instance (default: this machine's cores / instances).")] = None,
    max_queue_size: Annotated[int, typer.Option(min=1, help="Requests waiting per model; more are rejected.")] = 32,
    queue_timeout: Annotated[float, typer.Option(help="Seconds a request may wait; longer ones are rejected.")] = 10.0,
) -> None:
    """Write this build's Triton models (python, onnxruntime_onnx, tensorrt_plan flavours)."""
    from stsun.runtime.serving.repository import ServingConfig, write_triton_repo

    names = write_triton_repo(build_dir, repo, precision, ServingConfig(
        instances=instances, intra_op_threads=intra_op_threads, max_queue_size=max_queue_size,
        queue_timeout_s=queue_timeout))
    console.print(f"wrote {', '.join(names)} into {repo}")


@app.command()
def serve(
    repo: Annotated[Path, typer.Option(help="Model repository.")] = Path("triton_repo"),
    http_port: Annotated[int, typer.Option(help="HTTP port (the guarded front; Triton's own HTTP port is internal).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (Triton's, serving only the client APIs).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    log: Annotated[Optional[Path], typer.Option(help="Triton's log file (default: "
                                                     "$XDG_STATE_HOME/stsun/triton-HTTP_PORT.log).")] = None,
    drain_timeout: Annotated[float, typer.Option(help="Seconds in-flight requests get to finish on SIGTERM/SIGINT.")] = 30.0,
    max_request_mb: Annotated[Optional[float], typer.Option(help="Largest HTTP request body, counted after "
                                                                 "decompression (default: a full batch as JSON text).")] = None,
    request_timeout: Annotated[float, typer.Option(help="Seconds the HTTP front waits for Triton's answer (then 504).")] = 60.0,
    restarts: Annotated[int, typer.Option(help="Restarts of a failed tritonserver allowed within --restart-window.")] = 5,
    restart_window: Annotated[float, typer.Option(help="Seconds over which --restarts is counted.")] = 600.0,
    probe_interval: Annotated[float, typer.Option(help="Seconds between health probes of each model (an inference "
                                                       "answered without compute; counted in Triton's statistics); "
                                                       "0: none.")] = 5.0,
    open_control_api: Annotated[bool, typer.Option(
        "--open-control-api",
        help="UNSAFE: let every client that reaches the ports load, unload and replace models (which runs any "
             "code a client uploads, as this user), change logging and register shared memory. Only behind an "
             "authenticating proxy.")] = False,
) -> None:
    """Run Triton Inference Server on 127.0.0.1 with the repository's python-backend models, behind a
    guard that serves only inference, health and metadata, bounds requests, heals crashed or frozen
    model processes and drains on SIGTERM."""
    import signal
    import threading

    from stsun.runtime.serving.supervisor import ServeOptions, Supervisor

    if open_control_api:
        errors.print("stsun serve: WARNING: the control APIs are open: any client that reaches the ports can "
                     "load models and so run code as this user", highlight=False, markup=False)
    sup = Supervisor(ServeOptions(repo, http_port, grpc_port, metrics_port, log, drain_timeout, max_request_mb,
                                  request_timeout, restarts, restart_window, probe_s=probe_interval,
                                  open_control=open_control_api),
                     report=lambda m: errors.print(f"stsun serve: {m}", highlight=False, soft_wrap=True,
                                                   markup=False))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sup.start()
    console.print(f"serving {', '.join(sup.server.models)}: http://{sup.http_url}  grpc://{sup.grpc_url}  "
                  f"metrics http://127.0.0.1:{metrics_port}/metrics  log {sup.server.log}  (Ctrl-C to stop)",
                  markup=False, highlight=False, soft_wrap=True)  # one line: a log path is not broken
    while not stop.wait(0.5):
        if sup.failure is not None:
            sup.stop()
            raise sup.failure
    left = sup.stop()
    if left:
        errors.print(f"stsun serve: stopped with {left} request(s) unfinished after {drain_timeout:g} s")
        raise typer.Exit(1)
    console.print("stopped: every in-flight request finished")


def _register_build() -> None:
    from stsun.export.build_engine import build_command

    app.command("build")(build_command)


_register_build()

if __name__ == "__main__":
    main()
