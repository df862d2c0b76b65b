"""python export/build_engine.py --profile sentinel2-scd [options]   (the same as ``stsun build``)

Fold, export, check and (where TensorRT exists) build engines for one profile. Exits 1 when
a fidelity gate fails, 2 on bad arguments or any other expected failure (one line on stderr;
STSUN_DEBUG=1 shows its traceback).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from stsun.precision import ONNX_PRECISIONS

console = Console(stderr=True)


def build_command(
    profile: Annotated[str, typer.Option(metavar="NAME", help="Built-in profile name or a profile .toml file.")],
    checkpoint: Annotated[Optional[Path], typer.Option(metavar="FILE", help="safetensors checkpoint (default: the "
                                                                            "demo checkpoint).")] = None,
    size: Annotated[Optional[str], typer.Option(metavar="NAME", help="Model size: tiny, small or base (default: the "
                                                                     "checkpoint's, else the profile's).")] = None,
    precision: Annotated[str, typer.Option(metavar="LIST", help=f"Comma-separated ONNX precisions: "
                                           f"{', '.join(ONNX_PRECISIONS)} (int8: onnxruntime CPU).")] = "fp32,fp16",
    max_batch: Annotated[int, typer.Option(min=1, metavar="N", help="Largest batch the engines take.")] = 8,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="DIR", help="Build directory to write "
                                                   "(default: build/<profile>).")] = None,
    calibrate_bn: Annotated[bool, typer.Option(help="Recalibrate the task's BatchNorm statistics on generated tiles "
                                                    "of this profile, or on --data's calibration tiles (for a sensor "
                                                    "the checkpoint never saw).")] = False,
    data: Annotated[Optional[list[Path]], typer.Option(
        metavar="PATH",
        help="Your imagery, for int8 and BatchNorm calibration and the fidelity gates instead of generated tiles: "
             "a dataset folder (as `stsun train --data`), a predict-many manifest, or a scene's dates (--data once "
             "per date). Labelled data gates fp16/int8 on the task metric.")] = None,
    cpp: Annotated[bool, typer.Option(
        help="Also write an AOTInductor package (model.fp32.pt2) for C++ services.")] = False,
    attention: Annotated[str, typer.Option(metavar="NAME", help="How LGWA attention reaches TensorRT: "
                                                "'tensorrt' (MatMul/Softmax for "
                                                "TensorRT to fuse) or 'plugin' (the fused Triton kernel as the "
                                                "stsun::WindowAttention plugin, PTX for sm_80/sm_90).")] = "tensorrt",
) -> None:
    """Build deployable artifacts for one profile and check them against the eager model."""
    from stsun.app.pipeline import build_artifacts
    from stsun.profiles import load_profile

    prof = load_profile(profile)
    out = output or Path("build") / prof.name
    report = build_artifacts(prof, out, console=console, checkpoint=checkpoint, size=size,
                             precisions=tuple(p.strip() for p in precision.split(",") if p.strip()),
                             max_batch=max_batch, calibrate_bn=calibrate_bn, cpp=cpp, attention=attention,
                             data=tuple(data or ()))
    if not report["passed"]:
        failed = [f"{a['name']}: {a['fidelity']['gate']['reason']}" for a in report["artifacts"]
                  if not a["fidelity"]["gate"]["passed"]]
        console.print(f"[bold red]fidelity gate failed[/]: {escape('; '.join(failed))} (see build_report.json)")
        raise typer.Exit(1)
    console.print(f"[green]build passed[/]: {escape(str(out))}/build_report.json")


def main() -> None:
    from stsun.app.cli import StsunCommand

    app = typer.Typer(add_completion=False)
    app.command(cls=StsunCommand)(build_command)
    app()


if __name__ == "__main__":
    main()
