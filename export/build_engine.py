"""python export/build_engine.py --profile sentinel2-scd [options]

Fold, export, check and (where TensorRT exists) build engines for one profile. Exits 1 when
a fidelity gate fails, 2 on bad arguments.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from stsun.checkpoint import CheckpointError
from stsun.profiles import ProfileError, load_profile

console = Console(stderr=True)


def build_command(
    profile: Annotated[str, typer.Option(help="Built-in profile name or a profile .toml file.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="safetensors checkpoint (default: the demo checkpoint).")] = None,
    size: Annotated[Optional[str], typer.Option(help="Model size (default: the checkpoint's, else the profile's).")] = None,
    precision: Annotated[str, typer.Option(help="Comma-separated: fp32, fp16, int8 (int8: onnxruntime CPU).")] = "fp32,fp16",
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch the engines take.")] = 8,
    out: Annotated[Optional[Path], typer.Option(help="Build directory (default: build/<profile>).")] = None,
    calibrate_bn: Annotated[bool, typer.Option(help="Recalibrate the task's BatchNorm statistics on generated tiles "
                                                    "of this profile (for a sensor the checkpoint never saw).")] = False,
    cpp: Annotated[bool, typer.Option(help="Also write an AOTInductor package (model.fp32.pt2) for C++ services.")] = False,
    attention: Annotated[str, typer.Option(help="How LGWA attention reaches TensorRT: 'tensorrt' (MatMul/Softmax for "
                                                "TensorRT to fuse) or 'plugin' (the fused Triton kernel as the "
                                                "stsun::WindowAttention plugin, PTX for sm_80/sm_90).")] = "tensorrt",
) -> None:
    """Build deployable artifacts for one profile and check them against the eager model."""
    from stsun.export.builder import build

    try:
        prof = load_profile(profile)
        precisions = tuple(p.strip() for p in precision.split(",") if p.strip())
        report = build(prof, out or Path("build") / prof.name, checkpoint=checkpoint, size=size,
                       precisions=precisions, max_batch=max_batch, calibrate_bn=calibrate_bn, cpp=cpp,
                       attention=attention, console=console)
    except (ProfileError, CheckpointError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise typer.Exit(2)
    if not report["passed"]:
        console.print("[bold red]fidelity gate failed[/]: see build_report.json")
        raise typer.Exit(1)
    console.print(f"[green]build passed[/]: {out or Path('build') / prof.name}/build_report.json")


def main() -> None:
    typer.run(build_command)


if __name__ == "__main__":
    main()
