"""The ``stsun`` command line.

Light to import (``stsun --help`` loads no torch): each command imports what it runs.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

# typer (0.2x) bundles its own click; its exceptions are what the parser raises.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, NoSuchOption, UsageError
from typer.core import TyperCommand, TyperGroup

from stsun.app.options import (
    ALIASES,
    Align,
    Backend,
    Batch,
    Build,
    Checkpoint,
    DnOffset,
    ExpectedProfile,
    MaskQuality,
    Overlap,
    Precision,
    Probabilities,
    Protocol,
    Seed,
    backend_help,
)
from stsun.errors import EngineError, StsunError, StsunWarning
from stsun.export.build_engine import build_command
from stsun.profiles import Profile, builtin_profiles, load_profile

# Markup and highlighting off: paths, ids and GDAL's messages are printed verbatim ("[map.tif: ...]"
# would otherwise be read as a markup tag and vanish); styled words are Text.
# Emoji codes off too: a path holding ":thumbs_up:" is printed as typed.
console = Console(markup=False, highlight=False, emoji=False)
errors = Console(stderr=True, markup=False, highlight=False, emoji=False)


def styled(label: str, style: str, message: str) -> Text:
    """``label`` in ``style``, then ``message`` as it is."""
    return Text.assemble((label, style), " ", message)


DEBUG_ENV = "STSUN_DEBUG"  # or --debug: expected failures keep their traceback too


def _terminate(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary files are removed on the way out."""
    raise SystemExit(128 + signum)


def _error_line(message: str) -> None:
    errors.print(styled("error:", "bold red", message), soft_wrap=True)


class _OneLineErrors:
    """An expected failure (StsunError, or an OSError such as a full disk) ends the command with
    one line on stderr and exit 2, and so does a usage error (a bad option, a missing argument);
    anything else is a bug and keeps its traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as err:  # bare `stsun`: the help, as click shows it
            err.show()
            sys.exit(err.exit_code)
        except ClickException as err:  # UsageError (exit 2) and click's own file errors
            if isinstance(err, NoSuchOption) and err.possibilities:  # suggest no old spelling
                err.possibilities = [o for o in err.possibilities if o not in ALIASES]
            _error_line(err.format_message())
            sys.exit(err.exit_code)
        except typer.Abort:
            _error_line("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        import signal

        if threading_main():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except (StsunError, OSError) as err:
            if os.environ.get(DEBUG_ENV):
                raise
            message = (str(err) if isinstance(err, StsunError)
                       else f"{err.strerror or err}: {err.filename or ''}".rstrip(": "))
            _error_line(message or type(err).__name__)  # some OSErrors (a timeout) carry no text
            raise typer.Exit(2) from None


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class StsunGroup(_OneLineErrors, TyperGroup):
    pass


class StsunCommand(_OneLineErrors, TyperCommand):
    """Also parses the old spellings of its options (``options.ALIASES``), unlisted in its help."""

    def make_parser(self, ctx):
        names = {opt for param in self.params for opt in getattr(param, "opts", ())}
        added = []
        for param in self.params:
            old = [a for a, new in ALIASES.items() if new in getattr(param, "opts", ()) and a not in names]
            if old:
                added.append((param, param.opts))
                param.opts = [*param.opts, *old]
        try:
            return super().make_parser(ctx)
        finally:  # help and error messages name the new spelling only
            for param, opts in added:
                param.opts = opts

    # Arguments as NAME, NAME... or [NAME] (typer's own help shows `{dates}...` and the Python type).
    def collect_usage_pieces(self, ctx) -> list[str]:
        arguments = [p for p in self.get_params(ctx) if p.param_type_name == "argument" and not p.hidden]
        return [self.options_metavar, *(_argument_name(p) if p.required else f"[{_argument_name(p)}]"
                                        for p in arguments)]

    def format_options(self, ctx, formatter) -> None:
        params = [p for p in self.get_params(ctx) if not p.hidden]
        arguments = [(_argument_name(p), p.help + ("  [required]" if p.required else ""))
                     for p in params if p.param_type_name == "argument"]
        options = [p.get_help_record(ctx) for p in params if p.param_type_name == "option"]
        for title, rows in (("Arguments", arguments), ("Options", [r for r in options if r])):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _argument_name(param) -> str:
    return (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")


def usage(message: str) -> UsageError:
    """A wrong combination of options: printed as one ``error:`` line, exit 2."""
    return UsageError(message)


app = typer.Typer(help="STSUN deployment runtime.", no_args_is_help=True, add_completion=False, cls=StsunGroup,
                  rich_markup_mode=None, pretty_exceptions_enable=False)


def command(name: Optional[str] = None, hidden: bool = False):
    return app.command(name, cls=StsunCommand, hidden=hidden)


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


def _print_version(value: bool) -> None:
    if value:
        from stsun import __version__

        console.print(f"stsun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for expected failures too.")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """STSUN deployment runtime: profiles, export, inference, serving."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def check_built_for(build_dir: Path, built: Profile, expected: Profile) -> None:
    """A build answers for the profile it was made for: another one is an error before any work."""
    if built == expected:
        return
    if built.name != expected.name:
        raise EngineError(f"{build_dir} was built for profile '{built.name}', not '{expected.name}'")
    raise EngineError(f"{build_dir} was built for profile '{built.name}' ({built.task}, tile {built.tile_size}), "
                      f"not this '{expected.name}' ({expected.task}, tile {expected.tile_size})")


def build_or_positional(build: Optional[Path], positional: Optional[Path]) -> Path:
    if build is not None and positional is not None and build != positional:
        raise usage(f"two build directories: {positional} and --build {build}")
    if build is None and positional is None:
        raise usage("Missing option '--build'.")
    return build or positional


# Commands in the order a user meets them.

@command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR",
                                         help="Folder to write the demo inputs into.")],
    size: Annotated[int, typer.Option(min=256, metavar="PIXELS",
                                      help="Width and height of the Sentinel-2 scene, pixels.")] = 512,
) -> None:
    """Write inputs to try every command on, and print the commands that use them: a two-date
    Sentinel-2 scene, the same dates as SAFE products and as STAC items (with an ItemCollection),
    and a LEVIR-style change dataset with a 256 px profile."""
    import shlex

    from stsun.data.demo import write_demo

    w = write_demo(output, size=size)
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    out, build, stac = output / "out", Path("build") / "sentinel2-scd", w["catalogue"].parent
    console.print(f"wrote a {size} x {size} px two-date Sentinel-2 scene ({q(w['scene'])}), its SAFE products "
                  f"(baseline 05.10, {q(w['safe1'].parent)}), STAC items ({q(stac)}) and a LEVIR-style dataset "
                  f"({q(w['levir'])}, profile {q(w['levir_profile'])}). Next:", soft_wrap=True)
    commands = [
        *(["python export/build_engine.py --profile sentinel2-scd"]
          if not (build / "build_report.json").is_file() else []),
        f"stsun predict {q(w['scene'] / 'date1.tif')} {q(w['scene'] / 'date2.tif')} --build {build} "
        f"-o {q(out / 'scene.tif')} --preview {q(out / 'scene.png')}",
        f"stsun predict {q(w['safe1'])} {q(w['safe2'])} --build {build} -o {q(out / 'safe.tif')}",
        f"stsun predict {q(stac / 'date1' / 'item.json')} {q(stac / 'date2' / 'item.json')} --build {build} "
        f"-o {q(out / 'stac.tif')}",
        f"stsun predict-many {q(w['catalogue'])} --build {build} -o {q(out / 'many')}",
        f"stsun train --data {q(w['levir'])} --profile {q(w['levir_profile'])} --epochs 2 "
        f"-o {q(out / 'levir.safetensors')}",
        f"stsun evaluate --data {q(w['levir'])} --profile {q(w['levir_profile'])} "
        f"--checkpoint {q(out / 'levir.safetensors')}",
    ]
    for line in commands:
        console.print(f"  {line}", soft_wrap=True)


@command()
def profiles(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    extra: Annotated[Optional[list[Path]], typer.Option("--file", metavar="FILE",
                                                        help="Also show this profile file (repeatable).")] = None,
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


command("build")(build_command)

DATES_HELP = ("One input per date, in date order: a multi-band raster, a directory of band files (Sentinel-2 SAFE, "
              "Landsat, COGs) or a STAC Item JSON.")


@command()
def predict(
    dates: Annotated[list[Path], typer.Argument(metavar="DATE", help=DATES_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE",
                                         help="Output map (a Cloud-Optimized GeoTIFF).")],
    build: Build,
    profile: ExpectedProfile = None,
    backend: Backend = "onnxruntime",
    precision: Precision = None,
    overlap: Overlap = None,
    align: Align = False,
    dn_offset: DnOffset = None,
    probabilities: Probabilities = False,
    probabilities_encoding: Annotated[str, typer.Option(metavar="NAME", help="float32, or uint8 (p * 254, "
                                                        "255 = nodata, band scale 1/254: a quarter of the "
                                                        "size).")] = "float32",
    mask_quality: MaskQuality = False,
    url: Annotated[Optional[str], typer.Option(metavar="HOST:PORT", help="--backend triton: the server (default "
                                               "127.0.0.1 port 8000 for http, 8001 for grpc).")] = None,
    protocol: Protocol = "http",
    preview: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Also write a PNG overview of inputs "
                                                                         "and maps.")] = None,
) -> None:
    """Whole-scene inference: tiled, blended and streamed into a Cloud-Optimized GeoTIFF."""
    from stsun.app.outputs import scene_output
    from stsun.runtime import load_engine
    from stsun.runtime.preview import preview as write_preview
    from stsun.runtime.remote import as_url
    from stsun.runtime.scene import SceneOptions, predict_scene

    remote = {"url": url, "protocol": protocol} if backend == "triton" else {}
    engine = load_engine(build, backend=backend, precision=precision, **remote)
    if profile:
        check_built_for(build, engine.profile, load_profile(profile))
    summary: dict = {}
    with scene_output(output, dates, engine, build) as local:  # s3://: uploaded, with its STAC Item, on success
        predict_scene(engine, list(dates), local, SceneOptions(
            overlap=overlap, align=align, dn_offset=dn_offset, probabilities=probabilities,
            probabilities_encoding=probabilities_encoding, mask_quality=mask_quality, summary=summary))
        if preview:
            write_preview(list(dates), local, preview, engine.profile, dn_offset=dn_offset)
    written = [output] + ([output.with_suffix(".probs.tif")] if probabilities else []) + ([preview] if preview else [])
    console.print(f"wrote {', '.join(map(as_url, written))}", soft_wrap=True)  # s3://, not Path's s3:/
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


@command("predict-many")
def predict_many(
    manifest: Annotated[Path, typer.Argument(metavar="MANIFEST", help="The jobs, each an id and its dates: a JSON "
                                             "list of {\"id\": ..., \"dates\": [...]}, a CSV with columns "
                                             "id,date1,date2,... or a STAC ItemCollection (paired per tile by "
                                             "--pair-rule).")],
    build: Build,
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR", help="Output folder: DIR/<id>.tif per "
                                                                               "job, and DIR/report.json.")],
    scheduler: Annotated[Optional[str], typer.Option(metavar="ADDRESS", help="An existing Dask cluster's scheduler "
                                                     "(tcp://host:8786); default: a local cluster on this "
                                                     "machine.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Local cluster: worker processes "
                                                                            "(default: one per core).")] = None,
    dashboard_address: Annotated[str, typer.Option(metavar="HOST:PORT", help="Local cluster: where its Dask "
                                                   "dashboard listens (another free port when this one is taken; "
                                                   ":0 any).")] = "127.0.0.1:8787",
    threads: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Engine threads per worker (default: "
                                                   "the host's cores shared among its workers' task "
                                                   "slots).")] = None,
    retries: Annotated[int, typer.Option(min=0, metavar="N", help="Further attempts of a failing job before it is "
                                                                  "reported failed.")] = 2,
    profile: ExpectedProfile = None,
    backend: Backend = "onnxruntime",
    precision: Precision = None,
    url: Annotated[Optional[list[str]], typer.Option(metavar="HOST:PORT", help="--backend triton: a server; "
                                                     "repeat it to spread the workers over several.")] = None,
    protocol: Protocol = "http",
    pair_rule: Annotated[str, typer.Option(metavar="RULE", help="STAC ItemCollection: how a tile's items make "
                                           "jobs: consecutive, or START/END date windows, one per "
                                           "date.")] = "consecutive",
    tile_property: Annotated[Optional[str], typer.Option(metavar="NAME", help="STAC ItemCollection: the item "
                                                         "property that names the tile (default: grid:code, "
                                                         "s2:mgrs_tile, mgrs:*, landsat:wrs_path/row).")] = None,
    overlap: Overlap = None,
    align: Align = False,
    dn_offset: DnOffset = None,
    mask_quality: MaskQuality = False,
    probabilities: Probabilities = False,
    preview: Annotated[bool, typer.Option(help="Also write DIR/<id>.png, an overview of inputs and "
                                               "maps.")] = False,
) -> None:
    """Many scenes on a Dask cluster: every job of MANIFEST as `stsun predict` would run it, skipping
    jobs whose map is already done, retrying failures, with a report. Exit 1 if any job failed."""
    from stsun.app.manifest import read_manifest
    from stsun.app.many import REPORT_NAME, EngineSpec, RunOptions
    from stsun.app.many import predict_many as run
    from stsun.app.outputs import join, local_dir
    from stsun.runtime.engine import BuildDir
    from stsun.runtime.remote import as_url

    if scheduler and workers:
        raise usage("--workers sizes the local cluster; with --scheduler the cluster's own workers run")
    if url and backend != "triton":
        raise usage("--url is for --backend triton")
    built = BuildDir(build)
    if profile:
        check_built_for(build, built.profile, load_profile(profile))
    jobs = read_manifest(manifest, built.profile.t_in, local_dir(output)[0] / "items", pair_rule, tile_property)
    for line in jobs.unpaired:
        errors.print(f"no job for tile {line}", highlight=False, soft_wrap=True)
    report = run(jobs, EngineSpec(str(build), backend, precision, tuple(url or ()), protocol), output,
                 RunOptions(scheduler=scheduler, workers=workers, threads=threads, retries=retries, overlap=overlap,
                            dashboard_address=dashboard_address,
                            align=align, dn_offset=dn_offset, mask_quality=mask_quality,
                            probabilities=probabilities, preview=preview),
                 log=lambda text: console.print(text, highlight=False, soft_wrap=True))

    counts = report["counts"]
    rate = f", {report['scenes_per_hour']:g} scenes/h" if report["scenes_per_hour"] else ""
    console.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed{rate}; "
                  f"report: {join(as_url(output), REPORT_NAME)}", highlight=False, soft_wrap=True)
    for job in report["jobs"]:
        if job["status"] == "failed":
            errors.print(styled("failed:", "bold red", f"{job['id']}: {job['error']}"), soft_wrap=True)
    if counts["failed"]:
        raise typer.Exit(1)


@command("triton-repo")
def triton_repo(
    build_dir: Annotated[Optional[Path], typer.Argument(
        metavar="BUILD", hidden=True, help="The build directory (older spelling of --build).")] = None,
    build: Build = None,
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR",
                                         help="Model repository to write into.")] = Path("triton_repo"),
    precision: Annotated[str, typer.Option(metavar="NAME", help="Which ONNX artifact the models serve.")] = "fp32",
    instances: Annotated[int, typer.Option(min=1, metavar="N", help="Model instances per model.")] = 2,
    intra_op_threads: Annotated[Optional[int], typer.Option(
        min=0, metavar="N", help="onnxruntime threads per instance (default: this machine's cores / "
                                 "instances).")] = None,
    max_queue_size: Annotated[int, typer.Option(min=1, metavar="N", help="Requests waiting per model; more are "
                                                                         "rejected.")] = 32,
    queue_timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds a request may wait; longer ones "
                                                                         "are rejected.")] = 10.0,
) -> None:
    """Write a build's Triton models (python, onnxruntime_onnx, tensorrt_plan flavours)."""
    from stsun.runtime.serving.repository import ServingConfig, write_triton_repo

    names = write_triton_repo(build_or_positional(build, build_dir), output, precision, ServingConfig(
        instances=instances, intra_op_threads=intra_op_threads, max_queue_size=max_queue_size,
        queue_timeout_s=queue_timeout))
    console.print(f"wrote {', '.join(names)} into {output}", soft_wrap=True)


@command()
def serve(
    repo: Annotated[Path, typer.Option(
        metavar="DIR", help="Model repository (from stsun triton-repo).")] = Path("triton_repo"),
    http_port: Annotated[int, typer.Option(metavar="PORT", help="HTTP port (the guarded front; Triton's own HTTP "
                                                                "port is internal).")] = 8000,
    grpc_port: Annotated[int, typer.Option(metavar="PORT", help="gRPC port (Triton's, serving only the client "
                                                                "APIs).")] = 8001,
    metrics_port: Annotated[int, typer.Option(metavar="PORT", help="Prometheus metrics port.")] = 8002,
    log: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Triton's log file (default: "
                                                "$XDG_STATE_HOME/stsun/triton-HTTP_PORT.log).")] = None,
    drain_timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds in-flight requests get to finish "
                                                                         "on SIGTERM/SIGINT.")] = 30.0,
    max_request_mb: Annotated[Optional[float], typer.Option(metavar="MB", help="Largest HTTP request body, counted "
                                                            "after decompression (default: a full batch as JSON "
                                                            "text).")] = None,
    request_timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds the HTTP front waits for "
                                                                           "Triton's answer (then 504).")] = 60.0,
    restarts: Annotated[int, typer.Option(metavar="N", help="Restarts of a failed tritonserver allowed within "
                                                            "--restart-window.")] = 5,
    restart_window: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds over which --restarts is "
                                                                          "counted.")] = 600.0,
    probe_interval: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between health probes of each "
                                                  "model (an inference answered without compute; counted in "
                                                  "Triton's statistics); 0: none.")] = 5.0,
    open_control_api: Annotated[bool, typer.Option(
        "--open-control-api",
        help="UNSAFE: let every client that reaches the ports load, unload and replace models (which runs any "
             "code a client uploads, as this user), change logging and register shared memory. Only behind an "
             "authenticating proxy.")] = False,
    host: Annotated[str, typer.Option(
        metavar="ADDR", help="Address the HTTP and gRPC fronts listen on. SECURITY: anything but 127.0.0.1 lets "
                             "every machine that reaches ADDR send inference, health and metadata requests, "
                             "unauthenticated and unencrypted (the fronts' guards still apply; tritonserver and "
                             "metrics stay on loopback). Use a private network or a proxy that authenticates.")
    ] = "127.0.0.1",
) -> None:
    """Run Triton Inference Server (on 127.0.0.1 unless --host) with the repository's python-backend models, behind a
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
                                  open_control=open_control_api, host=host),
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


DATA_HELP = ("A labelled dataset folder (required): A/ B/ label/ (binary change), im1/ im2/ label1/ label2/ "
             "(semantic change), images/ labels/ (segmentation) or GeoTIFF stacks (date1.tif ... with labels), "
             "optionally in train/ val/ test/.")
DataProfile = Annotated[Optional[str], typer.Option(metavar="NAME", help="The profile the data is for (name or "
                                                                         ".toml; required).")]
SYNTHETIC_PROFILES = ["sentinel2-scd", "sentinel2-bcd", "sentinel2-ss"]
SyntheticProfiles = Annotated[Optional[list[str]], typer.Option(
    "--profile", metavar="NAME", help=f"A profile to train on; repeat it (or give a comma list) for several "
                                      f"(default: {','.join(SYNTHETIC_PROFILES)}).")]
Size = Annotated[str, typer.Option(metavar="NAME", help="Model size: tiny, small or base.")]
LearningRate = Annotated[Optional[float], typer.Option(metavar="NUMBER", help="Peak learning rate (default: 2e-3; "
                                                       "fine-tuning a checkpoint 1e-3).")]
TimeLimit = Annotated[Optional[float], typer.Option(metavar="SECONDS", help="Stop after this many seconds "
                                                    "(train-synthetic default 1140).")]
CheckpointOutput = Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="Checkpoint to write "
                                                "(.safetensors; config .json beside it).")]
Figure = Annotated[Optional[Path], typer.Option(metavar="FILE", help="Write a prediction-vs-label PNG of one tile "
                                                "here (with --data, the split's first tile; needs matplotlib).")]
ResultsOutput = Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Write the results "
                                                       "JSON here (and a .md table beside it).")]


def _profile_names(values: Optional[list[str]]) -> list[str]:
    """Repeated --profile, each possibly a comma list (the older --profiles spelling)."""
    return [n.strip() for v in values or SYNTHETIC_PROFILES for n in v.split(",") if n.strip()]


def _only_with_data(data: Optional[Path], **given) -> None:
    """Options of the dataset path must not be given without --data (and vice versa)."""
    wrong = [f"--{k.replace('_', '-')}" for k, v in given.items() if v not in (None, False)]
    if wrong:
        raise usage(f"{', '.join(wrong)} {'can only' if data is None else 'cannot'} be used with --data")


@command()
def train(
    data: Annotated[Optional[Path], typer.Option(metavar="DIR", help=DATA_HELP)] = None,
    profile: DataProfile = None,
    checkpoint: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Start from this checkpoint "
                                                       "(default: the demo checkpoint).")] = None,
    scratch: Annotated[bool, typer.Option(help="Start from random weights of --size.")] = False,
    epochs: Annotated[int, typer.Option(min=1, metavar="N", help="Epochs to train.")] = 20,
    epoch_steps: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Steps per epoch (default: the "
                                                       "training tiles' area once).")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, metavar="FRACTION", help="Without a val split: "
                                                "the part of the training data held out.")] = 0.2,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in OUTPUT.state.pt.")] = False,
    device: Annotated[Optional[str], typer.Option(metavar="NAME", help="cpu or cuda (default: cuda when there is "
                                                                       "one).")] = None,
    size: Size = "tiny",
    batch: Batch = 4,
    lr: LearningRate = None,
    seed: Seed = 0,
    time_limit: TimeLimit = None,
    output: CheckpointOutput = Path("checkpoint.safetensors"),
    # the older spelling of train-synthetic: `stsun train` without --data
    profiles_: Annotated[Optional[str], typer.Option("--profiles", hidden=True)] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, hidden=True)] = None,
) -> None:
    """Fine-tune on your labelled data (--data, --profile); writes the checkpoint, a training log
    and its plot."""
    if data is None:
        _only_with_data(data, profile=profile, checkpoint=checkpoint, scratch=scratch, resume=resume, device=device,
                        epoch_steps=epoch_steps)
        _train_synthetic(_profile_names([profiles_] if profiles_ else None), size, steps or 1800, batch, lr, seed,
                         time_limit, output)
        return
    _only_with_data(data, profiles=profiles_, steps=steps)
    if profile is None:
        raise usage("--data needs --profile (the profile the data is for)")
    if scratch and checkpoint is not None:
        raise usage("give --checkpoint or --scratch, not both")
    from stsun.data.datasets import open_dataset
    from stsun.training.finetune import FineTuneOptions, fine_tune

    dataset = open_dataset(data, load_profile(profile))
    options = FineTuneOptions(epochs=epochs, epoch_steps=epoch_steps, batch=batch, lr=lr, val_fraction=val_fraction,
                              seed=seed, time_limit_s=time_limit, device=device)
    fine_tune(dataset, output, "scratch" if scratch else checkpoint, options, resume=resume, size=size)


@command()
def evaluate(
    data: Annotated[Optional[Path], typer.Option(metavar="DIR", help=DATA_HELP)] = None,
    profile: DataProfile = None,
    checkpoint: Checkpoint = None,
    build: Annotated[Optional[Path], typer.Option("--build", metavar="DIR", help="Also score this build "
                                                  "directory's artifact.")] = None,
    backend: Annotated[str, typer.Option(metavar="NAME", help="With --build: " + backend_help())] = "onnxruntime",
    precision: Annotated[Optional[str], typer.Option(metavar="NAME", help="With --build: the artifact's precision "
                                                                          "(default fp32).")] = None,
    split: Annotated[Optional[str], typer.Option(metavar="NAME", help="test, val, train, all, or heldout (the "
                                                 "validation part the checkpoint's training kept). Default: test "
                                                 "if the data has one, else heldout if the checkpoint names one, "
                                                 "else val, else all.")] = None,
    batch: Batch = 4,
    output: ResultsOutput = None,
    figure: Figure = None,
    # the older spelling of evaluate-synthetic: `stsun evaluate` without --data
    tiles: Annotated[int, typer.Option(min=1, hidden=True)] = 8,
) -> None:
    """Score a checkpoint (and with --build a built artifact) on your labelled data (--data,
    --profile) with the paper's metrics, beside trivial baselines."""
    if data is None:
        _only_with_data(data, profile=profile, build=build, split=split, precision=precision)
        _evaluate_synthetic(checkpoint, tiles, output, figure)
        return
    if profile is None:
        raise usage("--data needs --profile (the profile the data is for)")
    from stsun.training.evaluate import data_markdown

    results = _evaluate_data(data, load_profile(profile), checkpoint, build, backend, precision, split, batch, figure)
    _write_results(results, data_markdown(results), output)
    if figure:
        console.print(f"wrote {figure}", soft_wrap=True)


def _write_results(results: dict, table: str, output: Optional[Path]) -> None:
    from stsun.atomic import atomic_write

    print(table)
    if output:
        atomic_write(output, lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
        atomic_write(output.with_suffix(".md"), lambda tmp: tmp.write_text(table + "\n"))


def _evaluate_data(data: Path, profile: Profile, checkpoint: Optional[Path], build: Optional[Path],
                   backend: str, precision: Optional[str], split: Optional[str], batch: int,
                   figure: Optional[Path] = None) -> dict:
    """``stsun evaluate --data``: the checkpoint, and a built artifact run by its backend, scored
    on the same tiles of the chosen split."""
    from stsun.data.datasets import open_dataset
    from stsun.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
    from stsun.training.evaluate import evaluate_data, model_predictor
    from stsun.training.finetune import evaluation_regions

    dataset = open_dataset(data, profile)
    ckpt = checkpoint or DEMO_CHECKPOINT
    model, meta = load_checkpoint(ckpt)
    split, regions = evaluation_regions(dataset, split, meta.get("training", {}))
    console.print(f"{dataset.describe()}\nscoring split '{split}': {len(regions)} regions", highlight=False,
                  soft_wrap=True)
    predictors = {f"checkpoint {ckpt.name}": model_predictor(model, profile)}
    if build is not None:
        from stsun.runtime import load_engine

        engine = load_engine(build, backend=backend, precision=precision)
        check_built_for(build, engine.profile, profile)
        predictors[f"{backend} {engine.precision}"] = engine
    report = evaluate_data(predictors, dataset, regions, batch=batch, figure=figure)
    report["split"] = split
    return report


@command("import-research")
def import_research(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint of the authors' training "
                                               "code: a Lightning .ckpt, or a state dict of their encoder.* / "
                                               "decoder.* tensors (.pt/.pth via torch.save, or .safetensors).")],
    dataset: Annotated[str, typer.Option(metavar="NAME", help="Their dataset whose settings to deploy: whu, whucd, "
                                                              "levircd or tscd.")],
    output: CheckpointOutput,
    heads: Annotated[int, typer.Option(min=1, metavar="N", help="Attention heads it was trained with (shapes "
                                                                "cannot tell).")] = 16,
    trust_pickle: Annotated[bool, typer.Option(help="Allow Python objects besides tensors in the file (full pickle: "
                                                    "only for files you trust).")] = False,
) -> None:
    """Import a checkpoint of the authors' code as a research-variant STSUN checkpoint."""
    from stsun.model.research_import import import_research as run_import

    path, settings = run_import(checkpoint, dataset, output, heads=heads, trust_pickle=trust_pickle)
    console.print(f"wrote {path} (research variant, dataset '{dataset}': "
                  f"{settings['t_in']} -> {settings['t_out']} dates, "
                  f"{settings['classes']} class(es), {settings['tile_size']} px tiles)",
                  highlight=False, soft_wrap=True)
    if settings["profile"]:
        console.print(f"build it: stsun build --profile {settings['profile']} --checkpoint {path}",
                      highlight=False, soft_wrap=True)


@command("train-synthetic")
def train_synthetic(
    profile: SyntheticProfiles = None,
    steps: Annotated[int, typer.Option(min=1, metavar="N", help="Training steps.")] = 1800,
    size: Size = "tiny",
    batch: Batch = 4,
    lr: LearningRate = None,
    seed: Seed = 0,
    time_limit: TimeLimit = None,
    output: CheckpointOutput = Path("checkpoint.safetensors"),
) -> None:
    """Train one model jointly on generated scenes of several profiles (how the demo checkpoint
    was made)."""
    _train_synthetic(_profile_names(profile), size, steps, batch, lr, seed, time_limit, output)


def _train_synthetic(names: list[str], size: str, steps: int, batch: int, lr: Optional[float], seed: int,
                     time_limit: Optional[float], output: Path) -> None:
    from stsun.model.checkpoint import save_checkpoint
    from stsun.training.train import train as run_training

    model, info = run_training([load_profile(n) for n in names], size=size, steps=steps, batch=batch,
                               lr=lr or 2e-3, seed=seed, time_limit_s=1140.0 if time_limit is None else time_limit)
    info["command"] = "stsun " + " ".join(sys.argv[1:])
    path = save_checkpoint(model, output, extra={"training": info})
    console.print(f"saved {path} after {info['steps_done']} steps ({info['seconds']} s), "
                  f"loss {info['final_loss_avg20']:.3f}", soft_wrap=True)


@command("evaluate-synthetic")
def evaluate_synthetic(
    checkpoint: Checkpoint = None,
    tiles: Annotated[int, typer.Option(min=1, metavar="N", help="Held-out tiles per setting.")] = 8,
    output: ResultsOutput = None,
    figure: Figure = None,
) -> None:
    """Score a checkpoint on held-out generated scenes of every setting, beside trivial baselines."""
    _evaluate_synthetic(checkpoint, tiles, output, figure)


def _evaluate_synthetic(checkpoint: Optional[Path], tiles: int, output: Optional[Path], figure: Optional[Path]) -> None:
    from stsun.model.checkpoint import load_model
    from stsun.training.evaluate import demo_figure, markdown_table
    from stsun.training.evaluate import evaluate as run_eval

    model = load_model(checkpoint)
    results = run_eval(model, tiles=tiles)
    _write_results(results, markdown_table(results), output)
    if figure:
        demo_figure(model, figure)
        console.print(f"wrote {figure}", soft_wrap=True)


@command("calibrate-bn")
def calibrate_bn(
    checkpoint: Annotated[Path, typer.Option(metavar="FILE", help="Checkpoint to calibrate.")],
    profile: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", help=f"A profile whose task to calibrate; repeat it (or give a comma list) for several "
                             f"(default: {','.join(SYNTHETIC_PROFILES)}).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Where to write (default: "
                                                   "overwrite the checkpoint).")] = None,
) -> None:
    """Recompute per-task BatchNorm statistics on unlabeled generated tiles of the given profiles."""
    from stsun.model.checkpoint import load_checkpoint, save_checkpoint
    from stsun.training.train import calibrate_batchnorm

    model, meta = load_checkpoint(checkpoint)
    profs = [load_profile(p) for p in _profile_names(profile)]
    info = calibrate_batchnorm(model, profs)
    info["command"] = "stsun " + " ".join(sys.argv[1:])
    extra = {k: v for k, v in meta.items() if k not in ("format", "config")}
    extra.setdefault("training", {})["batchnorm_calibration"] = info
    save_checkpoint(model.eval(), output or checkpoint, extra=extra)
    console.print(f"calibrated {', '.join(sorted({p.task for p in profs}))} statistics -> {output or checkpoint}",
                  soft_wrap=True)


if __name__ == "__main__":
    main()
