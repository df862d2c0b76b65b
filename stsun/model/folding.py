"""Fold STSUN's hypernetworks for one fixed profile into a static model.

For a fixed (sensor, GSD, tile size, dates, task, classes) every DUM output is a constant:
- input SSUM  (unfold + generated Linear)   -> Conv2d(C_in -> D_u, kernel p, stride p)
- TUM         (two generated Linear maps)   -> two constant MatMuls over the date axis
- output SSUM (generated Linear + shuffle)  -> 1x1 Conv2d + PixelShuffle(p)
- task and position embeddings              -> constant token biases
- eval-mode BatchNorm after a conv          -> folded into that conv (with the task's statistics)
- research variant: final_linear(x + decoder task embedding) before TUM -> one Linear
The result has no hypernetwork and no metadata inputs: x (B, T_in, C_in, H, W) -> logits.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from stsun.profiles import Profile

from .metadata import Metadata
from .norm import TaskBatchNorm2d
from .stsun import STSUN, Generated, run_blocks


def fold_batchnorm(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    """A conv equal to ``bn(conv(x))`` in eval mode."""
    fused = copy.deepcopy(conv)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = [1] * conv.weight.dim()
    shape[1 if isinstance(conv, nn.ConvTranspose2d) else 0] = -1  # output-channel axis
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight = nn.Parameter(conv.weight * scale.view(shape))
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return fused


def task_statistics(module: nn.Module, task: int) -> nn.Module:
    """A copy of ``module`` whose TaskBatchNorm2d layers are plain BatchNorm2d with ``task``'s statistics."""
    module = copy.deepcopy(module)
    for child in list(module.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, TaskBatchNorm2d):
                setattr(child, attr, sub.to_batchnorm(task))
    return module


def fold_pre_tum(model: STSUN, gen: Generated) -> nn.Module:
    """What the research variant applies to the encoder's tokens before TUM, ``final_linear(x +
    task_out)``, as one Linear; nothing for the paper variant."""
    if model.config.variant != "research":
        return nn.Identity()
    linear = copy.deepcopy(model.final_linear)
    linear.bias.copy_(model.final_linear(gen.task_out))
    return linear


def fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """Fold every BatchNorm2d that directly follows a conv in ``seq``."""
    layers: list[nn.Module] = []
    for layer in seq:
        if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], (nn.Conv2d, nn.ConvTranspose2d)):
            layers[-1] = fold_batchnorm(layers[-1], layer)
        else:
            layers.append(copy.deepcopy(layer))
    return nn.Sequential(*layers)


class FoldedSTSUN(nn.Module):
    """STSUN specialised to one profile. Input (B, T_in, C_in, H, W) float, output logits."""

    def __init__(self, model: STSUN, profile: Profile) -> None:
        super().__init__()
        if model.training:
            raise ValueError("fold an eval-mode model (call model.eval()): BatchNorm must use running statistics")
        meta = Metadata.from_profile(profile)
        with torch.no_grad():
            gen = model.generate(meta)
            p, cfg = gen.patch, model.config
            self.t_in, self.c_in, self.tile = meta.t_in, meta.c_in, meta.tile_size
            self.t_out, self.c_out, self.grid, self.dim = meta.t_out, meta.c_out, cfg.token_grid, cfg.embed_dim
            self.input = nn.Conv2d(meta.c_in, cfg.unified_dim, p, stride=p)
            self.input.weight.copy_(gen.w_in.view(cfg.unified_dim, meta.c_in, p, p))
            self.input.bias.copy_(gen.b_in)
            task = model.task_index(meta.task)
            self.stem = fold_sequential(task_statistics(model.stem, task))
            self.register_buffer("token_bias", (model.pos_embed + gen.task).clone())
            self.encoder = task_statistics(model.encoder, task)
            self.pre_tum = fold_pre_tum(model, gen)
            self.register_buffer("w_t1", gen.w_t1.clone())
            self.register_buffer("b_t1", gen.b_t1.view(-1, 1).clone())
            self.register_buffer("w_t2", gen.w_t2.clone())
            self.register_buffer("b_t2", gen.b_t2.view(-1, 1).clone())
            self.decoder = task_statistics(model.decoder, task)
            self.norm = copy.deepcopy(model.norm)
            self.register_buffer("out_bias", gen.task_out.clone())
            self.head = fold_sequential(task_statistics(model.head, task))
            self.output = nn.Conv2d(cfg.unified_dim, meta.c_out * p * p, 1, bias=gen.b_out is not None)
            self.output.weight.copy_(gen.w_out[:, :, None, None])
            if gen.b_out is not None:
                self.output.bias.copy_(gen.b_out)
            self.shuffle = nn.PixelShuffle(p)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        g, d = self.grid, self.dim
        tokens = self.stem(self.input(x.reshape(b * self.t_in, self.c_in, self.tile, self.tile)))
        tokens = run_blocks(self.encoder, tokens.flatten(2).transpose(1, 2) + self.token_bias, g)
        seq = self.pre_tum(tokens).reshape(b, self.t_in, g * g * d)
        seq = torch.matmul(self.w_t2, torch.relu(torch.matmul(self.w_t1, seq) + self.b_t1)) + self.b_t2
        tokens = run_blocks(self.decoder, seq.reshape(b * self.t_out, g * g, d), g)
        tokens = self.norm(tokens) + self.out_bias
        unified = self.head(tokens.transpose(1, 2).reshape(b * self.t_out, d, g, g))
        logits = self.shuffle(self.output(unified))
        return logits.reshape(b, self.t_out, self.c_out, self.tile, self.tile)


def fold(model: STSUN, profile: Profile) -> FoldedSTSUN:
    return FoldedSTSUN(model, profile)
