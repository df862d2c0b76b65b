"""The research variant: STSUN exactly as the authors' public training code computes it.

Checkpoints trained with that code (github.com/walking-shadow/Official_TSSUN,
``transcoder/models/TSSUN/``) deploy through this variant (``ModelConfig.variant="research"``,
imported with ``stsun import-research``). It shares every module with the paper variant and
differs only where their forward differs (docs/07-research-checkpoints.md lists each difference):

- metadata are 1-based indices x1000: the position inside the p x p patch, repeated per band,
  for the input SSUM; the date index for TUM; for the output SSUM the class index, over the
  output channels in (class, row, col) order as ``k mod C_out + 1``, so every pixel of a cell
  gets the same generated head;
- DUMs have no embedding Linear, their width and feed-forward width are the generated layer's
  width, the in-mode weight is a ``view``, TUM's out-mode DUM has no bias token, and the output
  SSUM has no bias;
- two task-embedding tables (encoder, decoder) with a row per DATASET, and the decoder's
  embedding plus a ``final_linear`` (D -> D) before TUM;
- a learnable position embedding (initialised column half first), a stem widening to 2 x D_u
  and a head of 3x3 conv, 12/8/2 transposed conv to 2 x D_u and 3x3 conv;
- shared BatchNorm statistics, and windows padded with zero tokens that are attended to.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stsun.errors import InputError

from .dum import DUM
from .metadata import Metadata

# The authors' TransformerWeightGenerator default, which their code never overrides.
DUM_HEADS = 4


@dataclass(frozen=True)
class ResearchDataset:
    """One row of the authors' ``data_task_info``: what their model fixes per dataset."""

    index: int      # task-embedding row
    task: str       # the task our profile for it declares
    t_in: int
    t_out: int
    c_out: int
    tile_size: int  # their "out_size"; input tiles have the same size


# Their data_task_info (vit_nlc_tout.py), in task-embedding order; a profile names its row with
# `research_dataset` (the profiles whu-ss, whu-cd-scd, levir-cd-bcd and tscd-bcd do).
RESEARCH_DATASETS: dict[str, ResearchDataset] = {
    "whu": ResearchDataset(0, "ss", 1, 1, 1, 512),
    "whucd": ResearchDataset(1, "scd", 2, 2, 1, 1024),
    "levircd": ResearchDataset(2, "bcd", 2, 1, 1, 1024),
    "tscd": ResearchDataset(3, "bcd", 4, 3, 1, 256),
}


def dataset_for(meta: Metadata) -> ResearchDataset:
    """The authors' dataset ``meta`` asks for, checked against what their model fixes for it."""
    name = meta.research_dataset
    if name is None:
        raise InputError(f"profile '{meta.name}' has no research_dataset: a research-variant model is trained per "
                         f"dataset of the authors' code ({', '.join(RESEARCH_DATASETS)}); use a profile that names one")
    if name not in RESEARCH_DATASETS:
        raise InputError(f"profile '{meta.name}': unknown research_dataset '{name}'; the authors' code knows "
                         f"{', '.join(RESEARCH_DATASETS)}")
    ds = RESEARCH_DATASETS[name]
    got = {"t_in": meta.t_in, "t_out": meta.t_out, "classes": meta.c_out, "tile_size": meta.tile_size}
    want = {"t_in": ds.t_in, "t_out": ds.t_out, "classes": ds.c_out, "tile_size": ds.tile_size}
    wrong = [f"{k} {got[k]} (needs {want[k]})" for k in got if got[k] != want[k]]
    if wrong:
        raise InputError(f"profile '{meta.name}' does not fit the authors' dataset '{name}': {', '.join(wrong)}")
    return ds


def _index_tokens(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float32).unsqueeze(1)


def input_tokens(c_in: int, patch: int) -> torch.Tensor:
    """(C_in*p*p, 1): position 1..p*p inside the patch, repeated per band (pixel_unshuffle order)."""
    return _index_tokens(torch.arange(1, patch * patch + 1).repeat(c_in))


def time_tokens(t: int) -> torch.Tensor:
    """(T, 1): date index 1..T."""
    return _index_tokens(torch.arange(1, t + 1))


def output_tokens(c_out: int, patch: int) -> torch.Tensor:
    """(C_out*p*p, 1): their class index 1..C_out repeated p*p times, read by the output layer in
    (class, row, col) pixel_shuffle order, so channel k carries class index k mod C_out + 1."""
    return _index_tokens(torch.arange(c_out * patch * patch) % c_out + 1)


def research_dum(width: int, mode: str, bias: bool = True) -> DUM:
    """A DUM as theirs: token width = generated width = feed-forward width; an out-mode layer with
    bias takes no bias token, one without bias does (their fc_bias head is never read)."""
    return DUM(("index",), width, mode, width, heads=DUM_HEADS, embed=False, ffn_dim=width,
               in_weight="view", bias_token=mode == "in" or not bias, out_bias=bias)


def make_stem(unified_dim: int, embed_dim: int) -> nn.Sequential:
    """Unified grid (D_u, U, U) -> token grid (D, U/8, U/8), widening to 2 x D_u first."""
    mid = 2 * unified_dim
    return nn.Sequential(
        nn.Conv2d(unified_dim, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.SiLU(),
        nn.Conv2d(mid, embed_dim, 12, stride=8, padding=2), nn.BatchNorm2d(embed_dim), nn.SiLU(),
        nn.Conv2d(embed_dim, embed_dim, 3, padding=1),
    )


def make_head(embed_dim: int, unified_dim: int) -> nn.Sequential:
    """Token grid (D, U/8, U/8) -> unified grid (D_u, U, U) through 2 x D_u channels."""
    mid = 2 * unified_dim
    return nn.Sequential(
        nn.Conv2d(embed_dim, embed_dim, 3, padding=1), nn.BatchNorm2d(embed_dim), nn.SiLU(),
        nn.ConvTranspose2d(embed_dim, mid, 12, stride=8, padding=2), nn.BatchNorm2d(mid), nn.SiLU(),
        nn.Conv2d(mid, unified_dim, 3, padding=1),
    )
