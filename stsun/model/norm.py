"""BatchNorm with running statistics per task.

One STSUN serves SS, BCD and SCD through metadata, and after TUM the decoder sees very
different feature statistics per task. Shared running statistics are then wrong for every
task at inference (measured: OA 0.29 instead of 0.92 on sentinel2-ss). The affine
parameters stay shared; only the statistics are kept per task and picked by the task.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TaskBatchNorm2d(nn.Module):
    def __init__(self, num_features: int, num_tasks: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("task_mean", torch.zeros(num_tasks, num_features))
        self.register_buffer("task_var", torch.ones(num_tasks, num_features))
        self.task = 0  # set by STSUN from the metadata before every forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Row views: batch_norm's in-place running-stat update lands in this task's row.
        return F.batch_norm(x, self.task_mean[self.task], self.task_var[self.task], self.weight, self.bias,
                            self.training, 0.0 if self.momentum is None else self.momentum, self.eps)

    def to_batchnorm(self, task: int) -> nn.BatchNorm2d:
        """A plain eval-mode BatchNorm2d with this task's statistics (for folding/export)."""
        bn = nn.BatchNorm2d(self.weight.numel(), eps=self.eps).to(self.weight.device)
        with torch.no_grad():
            bn.weight.copy_(self.weight)
            bn.bias.copy_(self.bias)
            bn.running_mean.copy_(self.task_mean[task])
            bn.running_var.copy_(self.task_var[task])
        return bn.eval()
