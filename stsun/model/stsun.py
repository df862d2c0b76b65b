"""STSUN: spatial-temporal-spectral unified network (the dynamic, research-style model).

x (B, T_in, C_in, H, W) --STSUN(meta)--> logits (B, T_out, C_out, H, W)

Every forward runs the DUM hypernetworks on the metadata, then the static backbone.
``generate`` exposes the hypernetwork outputs so that ``stsun.model.folding`` can turn
them into constant layers for one fixed profile. ``ModelConfig.variant`` picks the paper's
model or the authors' research code (``stsun.model.research``); both share this forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stsun.validation import check_tiles

from . import research
from .config import ModelConfig
from .dum import DUM
from .embed import sincos_2d
from .lgwa import WINDOW_SCHEDULE, LGWABlock
from .metadata import Metadata
from .norm import TaskBatchNorm2d


@dataclass
class Generated:
    """Everything the metadata determines, for one (sensor, dates, task, classes) setting."""

    w_in: torch.Tensor    # (D_u, C_in*p*p)   input SSUM Linear
    b_in: torch.Tensor    # (D_u,)
    w_t1: torch.Tensor    # (T_u, T_in)       TUM, input times -> unified time
    b_t1: torch.Tensor    # (T_u,)
    w_t2: torch.Tensor    # (T_out, T_u)      TUM, unified time -> output times
    b_t2: torch.Tensor    # (T_out,)
    w_out: torch.Tensor   # (C_out*p*p, D_u)  output SSUM Linear
    b_out: torch.Tensor | None  # (C_out*p*p,), None in the research variant
    task: torch.Tensor    # (D,)              task embedding added to the encoder's tokens
    task_out: torch.Tensor  # (D,)            task embedding of the decoder side (paper: the same)
    patch: int


def make_stem(unified_dim: int, embed_dim: int, tasks: int) -> nn.Sequential:
    """Unified grid (D_u, U, U) -> token grid (D, U/8, U/8)."""
    return nn.Sequential(
        nn.Conv2d(unified_dim, unified_dim, 3, padding=1), TaskBatchNorm2d(unified_dim, tasks), nn.SiLU(),
        nn.Conv2d(unified_dim, embed_dim, 12, stride=8, padding=2), TaskBatchNorm2d(embed_dim, tasks), nn.SiLU(),
        nn.Conv2d(embed_dim, embed_dim, 3, padding=1),
    )


def make_head(embed_dim: int, unified_dim: int, tasks: int) -> nn.Sequential:
    """Token grid (D, U/8, U/8) -> unified grid (D_u, U, U)."""
    return nn.Sequential(
        nn.ConvTranspose2d(embed_dim, unified_dim, 8, stride=8), TaskBatchNorm2d(unified_dim, tasks), nn.SiLU(),
        nn.Conv2d(unified_dim, unified_dim, 3, padding=1),
    )


def make_blocks(cfg: ModelConfig, depth: int, first: int = 0) -> nn.ModuleList:
    """``depth`` blocks; ``first`` is the first block's place in the window schedule (the authors
    number encoder and decoder blocks as one sequence, so their decoder starts at enc_depth)."""
    research_variant = cfg.variant == "research"
    return nn.ModuleList(
        LGWABlock(cfg.embed_dim, cfg.num_heads, WINDOW_SCHEDULE[(first + i) % len(WINDOW_SCHEDULE)], cfg.mlp_ratio,
                  num_tasks=None if research_variant else len(cfg.tasks), pad_tokens=research_variant)
        for i in range(depth))


def run_blocks(blocks: nn.ModuleList, tokens: torch.Tensor, grid: int) -> torch.Tensor:
    for block in blocks:
        tokens = block(tokens, (grid, grid))
    return tokens


class STSUN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.variant == "research":
            self._research_modules(config)
        else:
            self._paper_modules(config)

    def _paper_modules(self, config: ModelConfig) -> None:
        d, du, hid = config.embed_dim, config.unified_dim, config.dum_hidden
        g = config.token_grid
        self.input_dum = DUM(("wavelength_um", "gsd_m", "pos_row", "pos_col"), du, "in", hid)
        self.stem = make_stem(du, d, len(config.tasks))
        self.register_buffer("pos_embed", sincos_2d(g, g, d), persistent=False)
        self.task_embed = nn.Parameter(torch.randn(len(config.tasks), d) * 0.02)
        self.encoder = make_blocks(config, config.enc_depth)
        self.tum_in = DUM(("time_years",), config.temporal_dim, "in", hid)
        self.tum_out = DUM(("time_start_years", "time_end_years"), config.temporal_dim, "out", hid, cond_dim=d)
        self.decoder = make_blocks(config, config.dec_depth)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = make_head(d, du, len(config.tasks))
        self.class_embed = nn.Embedding(len(config.class_vocabulary), hid)
        self.output_dum = DUM(("gsd_m", "pos_row", "pos_col"), du, "out", hid, cond_dim=hid)

    def _research_modules(self, config: ModelConfig) -> None:
        """The authors' modules (stsun.model.research); their SSUM DUMs are D_u wide, TUM's T_u."""
        d, du, tu, g = config.embed_dim, config.unified_dim, config.temporal_dim, config.token_grid
        n = len(research.RESEARCH_DATASETS)
        self.input_dum = research.research_dum(du, "in")
        self.stem = research.make_stem(du, d)
        self.pos_embed = nn.Parameter(sincos_2d(g, g, d, columns_first=True))
        self.task_embed = nn.Parameter(torch.randn(n, d))  # encoder table, a row per dataset
        self.encoder = make_blocks(config, config.enc_depth)
        self.decoder_task_embed = nn.Parameter(torch.randn(n, d))
        self.final_linear = nn.Linear(d, d)
        self.tum_in = research.research_dum(tu, "in")
        self.tum_out = research.research_dum(tu, "out")
        self.decoder = make_blocks(config, config.dec_depth, first=config.enc_depth)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = research.make_head(d, du)
        self.output_dum = research.research_dum(du, "out", bias=False)

    # -- metadata -> weights -------------------------------------------------------------
    def class_indices(self, classes: tuple[str, ...]) -> list[int]:
        vocab = self.config.class_vocabulary
        unknown = [c for c in classes if c not in vocab]
        if unknown:
            raise ValueError(f"classes {unknown} are not in this model's class vocabulary: {list(vocab)}")
        return [vocab.index(c) for c in classes]

    def task_index(self, task: str) -> int:
        if task not in self.config.tasks:
            raise ValueError(f"task '{task}' is not one of this model's tasks {list(self.config.tasks)}")
        return self.config.tasks.index(task)

    def patch_size(self, tile_size: int) -> int:
        u = self.config.unified_grid
        if tile_size % u:
            raise ValueError(f"tile size must be a multiple of the unified grid {u}, got {tile_size}")
        return tile_size // u

    def generate(self, meta: Metadata) -> Generated:
        """Run every DUM once for this metadata."""
        if self.config.variant == "research":
            return self._generate_research(meta)
        dev = self.task_embed.device
        p = self.patch_size(meta.tile_size)
        task = self.task_embed[self.task_index(meta.task)]
        w_in, b_in = self.input_dum(meta.input_tokens(p).to(dev))
        w_t1, b_t1 = self.tum_in(meta.time_tokens().to(dev))
        w_t2, b_t2 = self.tum_out(meta.output_time_tokens().to(dev), task)
        cls = torch.tensor(self.class_indices(meta.classes), device=dev).repeat_interleave(p * p)
        w_out, b_out = self.output_dum(meta.output_tokens(p).to(dev), self.class_embed(cls), group=p * p)
        return Generated(w_in, b_in, w_t1, b_t1, w_t2, b_t2, w_out, b_out, task, task, p)

    def _generate_research(self, meta: Metadata) -> Generated:
        """The authors' metadata: indices, not wavelengths, GSD or dates (stsun.model.research)."""
        dev = self.task_embed.device
        ds = research.dataset_for(meta)
        p = self.patch_size(meta.tile_size)
        w_in, b_in = self.input_dum(research.input_tokens(meta.c_in, p).to(dev))
        w_t1, b_t1 = self.tum_in(research.time_tokens(meta.t_in).to(dev))
        w_t2, b_t2 = self.tum_out(research.time_tokens(meta.t_out).to(dev))
        w_out, b_out = self.output_dum(research.output_tokens(meta.c_out, p).to(dev))
        return Generated(w_in, b_in, w_t1, b_t1, w_t2, b_t2, w_out, b_out,
                         self.task_embed[ds.index], self.decoder_task_embed[ds.index], p)

    # -- forward -------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor, meta: Metadata) -> None:
        check_tiles(x, t_in=meta.t_in, c_in=meta.c_in, tile_size=meta.tile_size,
                    allowed_dtypes=(str(self.task_embed.dtype).removeprefix("torch."),),
                    context=f"STSUN[{meta.name}]", band_names=meta.band_names)

    def select_task(self, task: str) -> None:
        """Point every TaskBatchNorm2d at this task's running statistics."""
        idx = self.task_index(task)
        for m in self.modules():
            if isinstance(m, TaskBatchNorm2d):
                m.task = idx

    def forward(self, x: torch.Tensor, meta: Metadata) -> torch.Tensor:
        self.check_input(x, meta)
        self.select_task(meta.task)
        gen = self.generate(meta)
        b, t = x.shape[:2]
        g, d, p = self.config.token_grid, self.config.embed_dim, gen.patch
        # Input SSUM, research style: unfold p x p patches, one generated Linear per cell.
        cells = F.pixel_unshuffle(x.flatten(0, 1), p)
        unified = F.linear(cells.movedim(1, -1), gen.w_in, gen.b_in).movedim(-1, 1)
        tokens = self.stem(unified).flatten(2).transpose(1, 2) + self.pos_embed + gen.task
        tokens = run_blocks(self.encoder, tokens, g)
        if self.config.variant == "research":
            tokens = self.final_linear(tokens + gen.task_out)
        # TUM: time is mixed only here, as two generated Linear maps over the date axis.
        seq = tokens.view(b, t, g * g, d)
        mid = torch.relu(torch.einsum("btld,ut->buld", seq, gen.w_t1) + gen.b_t1.view(1, -1, 1, 1))
        out_seq = torch.einsum("buld,ou->bold", mid, gen.w_t2) + gen.b_t2.view(1, -1, 1, 1)
        t_out = out_seq.shape[1]
        tokens = run_blocks(self.decoder, out_seq.flatten(0, 1), g)
        tokens = self.norm(tokens) + gen.task_out
        unified = self.head(tokens.transpose(1, 2).reshape(b * t_out, d, g, g))
        # Output SSUM: generated Linear per cell, then the cells' p x p pixels are restored.
        logits = F.linear(unified.movedim(1, -1), gen.w_out, gen.b_out).movedim(-1, 1)
        logits = F.pixel_shuffle(logits, p)
        return logits.view(b, t_out, meta.c_out, *logits.shape[-2:])
