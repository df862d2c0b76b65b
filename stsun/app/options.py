"""Options that several ``stsun`` commands take, each declared once with one help text, and the
old spellings still accepted.

Light on purpose: ``stsun --help`` imports this, and nothing here loads torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stsun.precision import PRECISIONS

# Old spelling -> the option it now means. A command accepts an old spelling (unlisted in its
# help) wherever it has the new option and no option of the old name itself, so scripts written
# before the one vocabulary keep working.
ALIASES = {"--out": "--output", "--output-dir": "--output", "--repo": "--output", "--engine": "--build",
           "--profiles": "--profile"}


def backend_help() -> str:
    from stsun.runtime.backends import BACKENDS

    return f"One of: {', '.join(b.name + (' (GPU)' if b.needs_gpu else '') for b in BACKENDS.values())}."


Build = Annotated[Optional[Path], typer.Option(
    "--build", metavar="DIR",
    help="Build directory, written by `stsun build` (predict-many sends it to the workers of a --scheduler cluster).")]
ExpectedProfile = Annotated[Optional[str], typer.Option(
    metavar="NAME", help="The profile (name or .toml) the build must have been made for; checked before any work.")]
Backend = Annotated[str, typer.Option(metavar="NAME", help=backend_help())]
Precision = Annotated[Optional[str], typer.Option(
    metavar="NAME", help=f"One of the backend's precisions ({', '.join(PRECISIONS)}; default fp32, the compiled "
                         "backend on a GPU bf16).")]
Protocol = Annotated[str, typer.Option(metavar="NAME", help="--backend triton: http or grpc.")]
Overlap = Annotated[Optional[int], typer.Option(metavar="PIXELS", help="Tile overlap in pixels (default: tile / 4).")]
Align = Annotated[bool, typer.Option(help="Reproject later dates onto the first date's grid.")]
DnOffset = Annotated[Optional[float], typer.Option(
    metavar="NUMBER", help="Added to raw values before scaling, for every band (default: the product's metadata, "
                           "e.g. a Sentinel-2 SAFE's BOA_ADD_OFFSET, else the profile's scaling.dn_offset).")]
MaskQuality = Annotated[bool, typer.Option(
    help="Mask cloud, shadow, saturated and no-data pixels with the product's quality band (Sentinel-2 SCL, "
         "Landsat QA_PIXEL).")]
Probabilities = Annotated[bool, typer.Option(help="Also write each map's class probabilities beside it "
                                                  "(MAP.probs.tif).")]
Checkpoint = Annotated[Optional[Path], typer.Option(metavar="FILE", help="Checkpoint (.safetensors; default: the "
                                                                        "demo checkpoint).")]
Batch = Annotated[int, typer.Option(min=1, metavar="N", help="Tiles per step.")]
Seed = Annotated[int, typer.Option(metavar="N", help="Random seed (data order, initial weights, generated tiles).")]
