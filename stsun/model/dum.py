"""DUM, the Dimension Unified Module: a hypernetwork that turns metadata into a Linear layer.

Each metadata token (one per element of the axis whose length varies with the metadata:
bands x intra-patch positions, dates, classes x positions) is embedded with sin-cos
features, refined by a residual MLP, optionally conditioned (task or class embedding),
and mixed with the others by a small Transformer encoder together with a learned bias
token. A head then emits the weights.

Two modes, as in the research code:
- ``"in"``: tokens index the layer's INPUT axis. Token i gives column i of the weight
  (length ``fixed_dim``); the bias token gives the bias vector (length ``fixed_dim``).
- ``"out"``: tokens index the layer's OUTPUT axis. Token i gives row i of the weight
  (length ``fixed_dim``) plus its scalar bias.
Both are scaled by 0.01 so a freshly initialised layer starts near zero.

``group`` restricts attention to consecutive groups of tokens (each with its own copy of
the bias token). The output SSUM uses one group per class, so the head generated for a
class never depends on which other classes were chosen alongside it.

The keyword-only options reproduce the authors' public code (the "research" variant,
``stsun.model.research``): no embedding Linear (one metadata field's sin-cos features are
the tokens), a feed-forward width of their choosing, the in-mode weight read as
``view(fixed_dim, N)`` of the (N, fixed_dim) head output instead of its transpose, no bias
token in an out-mode layer with bias, and an out-mode layer without bias.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .embed import sincos_1d

# Metadata scalars are multiplied by these before the sin-cos features, so that their
# useful range spans the embedding's periods (research code: x1000 for wavelength in um).
FIELD_SCALE = {
    "wavelength_um": 1000.0,
    "gsd_m": 100.0,
    "pos_row": 1000.0,
    "pos_col": 1000.0,
    "time_years": 1000.0,
    "time_start_years": 1000.0,
    "time_end_years": 1000.0,
    "index": 1000.0,  # research variant: a 1-based index (position in patch, date, class)
}


class ResidualMLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc2(torch.relu(self.fc1(x))))


class DUM(nn.Module):
    def __init__(
        self,
        fields: tuple[str, ...],
        fixed_dim: int,
        mode: Literal["in", "out"],
        hidden: int = 128,
        cond_dim: int | None = None,
        layers: int = 1,
        heads: int = 4,
        scale: float = 0.01,
        *,
        embed: bool = True,
        ffn_dim: int | None = None,
        in_weight: Literal["transpose", "view"] = "transpose",
        bias_token: bool = True,
        out_bias: bool = True,
    ) -> None:
        super().__init__()
        unknown = set(fields) - FIELD_SCALE.keys()
        if unknown:
            raise ValueError(f"unknown DUM metadata fields {sorted(unknown)}")
        if not embed and len(fields) != 1:
            raise ValueError(f"a DUM without an embedding Linear takes one metadata field, got {fields}")
        if mode == "in" and not (bias_token and out_bias):
            raise ValueError("an in-mode DUM generates its bias from the bias token")
        self.fields = fields
        self.fixed_dim = fixed_dim
        self.mode = mode
        self.hidden = hidden
        self.scale = scale
        self.in_weight = in_weight
        self.out_bias = out_bias
        self.embed = nn.Linear(len(fields) * hidden, hidden) if embed else None
        self.mlp = ResidualMLP(hidden)
        self.cond = nn.Linear(cond_dim, hidden) if cond_dim else None
        layer = nn.TransformerEncoderLayer(
            d_model=hidden, nhead=heads, dim_feedforward=ffn_dim or 2 * hidden, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.bias_token = nn.Parameter(torch.randn(1, hidden) * 0.02) if bias_token else None
        self.head = nn.Linear(hidden, fixed_dim + (1 if mode == "out" and out_bias else 0))
        self.bias_head = nn.Linear(hidden, fixed_dim) if mode == "in" else None

    def forward(
        self, meta: torch.Tensor, cond: torch.Tensor | None = None, group: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """meta: (N, len(fields)) raw metadata values; cond: (N, cond_dim) or (cond_dim,).

        Returns ``(weight, bias)`` of an ordinary Linear layer:
        mode "in": weight (fixed_dim, N), bias (fixed_dim,);
        mode "out": weight (N, fixed_dim), bias (N,), or None for a DUM built with ``out_bias=False``.
        """
        if meta.dim() != 2 or meta.shape[1] != len(self.fields):
            raise ValueError(f"DUM expects metadata of shape (N, {len(self.fields)}) for {self.fields}, "
                             f"got {tuple(meta.shape)}")
        scales = meta.new_tensor([FIELD_SCALE[f] for f in self.fields])
        feats = sincos_1d(meta * scales, self.hidden).flatten(1)
        tokens = self.mlp(feats if self.embed is None else self.embed(feats))
        if self.cond is not None:
            if cond is None:
                raise ValueError("this DUM is conditioned: pass a task or class embedding")
            tokens = tokens + self.cond(cond)
        n = tokens.shape[0]
        group = group or n
        if n % group or (group != n and self.mode == "in"):
            raise ValueError(f"cannot split {n} {self.mode}-mode DUM tokens into groups of {group}")
        seq = tokens.view(n // group, group, self.hidden)
        if self.bias_token is not None:
            seq = torch.cat([seq, self.bias_token.expand(n // group, 1, self.hidden)], dim=1)
        out = self.encoder(seq)
        token_out = out[:, :group].reshape(n, self.hidden)
        rows = self.head(token_out + tokens)
        if self.mode == "in":
            # "view" reads the (N, fixed_dim) rows in memory order as (fixed_dim, N), as the
            # authors' code does: not a transpose, but what their checkpoints were trained with.
            weight = rows.t() if self.in_weight == "transpose" else rows.reshape(self.fixed_dim, n)
            return weight * self.scale, self.bias_head(out[0, -1]) * self.scale
        if not self.out_bias:
            return rows * self.scale, None
        return rows[:, :-1] * self.scale, rows[:, -1] * self.scale
