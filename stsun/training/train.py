"""Train one STSUN jointly on several profiles and tasks from synthetic scenes.

As the paper trains one model per scenario on all its datasets at once: BCE + Dice loss,
AdamW. Half the steps draw a random subset of the profile's bands and a random GSD, so the
hypernetworks learn to map any band set and resolution, not one sensor. The last
``settle_fraction`` of steps use the profiles as they are, so that BatchNorm's running
statistics (used at inference) settle on real sensor setups rather than on the mixture.
Training ends by calibrating each task's BatchNorm statistics on its own profiles
(``calibrate_batchnorm``): one model serving several tasks needs statistics per task.
"""
from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from stsun.data.synthetic import synthetic_tiles
from stsun.data.targets import targets
from stsun.display import progress_bar
from stsun.errors import CheckpointError
from stsun.model import STSUN, Metadata, model_config
from stsun.model.norm import TaskBatchNorm2d
from stsun.profiles import Profile

GSD_CHOICES = (5.0, 10.0, 20.0, 30.0)


def task_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice. logits (B, T, C, H, W); target (B, T, H, W) class index (or 0/1 for
    one channel), -1 ignored."""
    c = logits.shape[2]
    valid = (target >= 0).unsqueeze(2).float()
    if c == 1:
        onehot = target.clamp(min=0).unsqueeze(2).float()
        prob = torch.sigmoid(logits)
    else:
        onehot = F.one_hot(target.clamp(min=0), c).permute(0, 1, 4, 2, 3).float()
        prob = torch.softmax(logits, dim=2)
    bce = (F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
           * valid).sum() / valid.sum().clamp(min=1) / c
    inter = (prob * onehot * valid).sum(dim=(0, 1, 3, 4))
    denom = ((prob + onehot) * valid).sum(dim=(0, 1, 3, 4))
    dice = 1 - ((2 * inter + 1) / (denom + 1)).mean()
    return bce + dice


def sample_setting(profile: Profile, rng: np.random.Generator) -> Profile:
    """The profile with a random band subset (at least 3, order kept) and a random GSD."""
    k = int(rng.integers(3, profile.c_in + 1))
    keep = sorted(rng.choice(profile.c_in, size=k, replace=False))
    return profile.model_copy(update={"bands": tuple(profile.bands[i] for i in keep),
                                      "gsd_m": float(rng.choice(GSD_CHOICES))})


@torch.no_grad()
def calibrate_task_statistics(model: STSUN, task: str, batches: Iterable[tuple[np.ndarray, Metadata]]) -> int:
    """Set ``task``'s BatchNorm running statistics to the exact average over ``batches`` of
    unlabeled tiles (no weights change); returns how many batches were used."""
    norms = [m for m in model.modules() if isinstance(m, TaskBatchNorm2d)]
    idx = model.task_index(task)
    device = model.task_embed.device
    was_training = model.training
    model.train()
    for m in norms:
        m.task_mean[idx].zero_()
        m.task_var[idx].fill_(1.0)
    k = -1
    for k, (x, meta) in enumerate(batches):
        for m in norms:
            m.momentum = 1.0 / (k + 1)  # cumulative average over all batches of this task
        model(torch.from_numpy(x).to(device), meta)
    for m in norms:
        m.momentum = 0.1
    model.train(was_training)
    return k + 1


def calibrate_batchnorm(model: STSUN, profiles: list[Profile], batches: int = 8, batch: int = 4,
                        seed: int = 12345) -> dict:
    """Recompute each task's BatchNorm running statistics as the exact average over
    ``batches`` batches of unlabeled generated tiles per profile (no weights change)."""
    if model.config.variant == "research":
        # Its BatchNorm statistics are shared by every dataset, as the authors trained them.
        raise CheckpointError("a research-variant model has no per-task BatchNorm statistics to calibrate; "
                              "it keeps the statistics it was trained with")
    by_task: dict[str, list[Profile]] = {}
    for p in profiles:
        by_task.setdefault(p.task, []).append(p)
    for task, profs in by_task.items():
        # crc32, not hash(): str hashes change between processes, which broke reproducibility
        tiles = ((synthetic_tiles(p, batch, seed=seed + 1000 * b + zlib.crc32(p.name.encode()) % 997)[0],
                  Metadata.from_profile(p)) for b in range(batches) for p in profs)
        calibrate_task_statistics(model, task, tiles)
    return {"profiles": [p.name for p in profiles], "batches_per_profile": batches, "batch": batch, "seed": seed}


def train(profiles: list[Profile], size: str = "tiny", steps: int = 1800, batch: int = 4, lr: float = 2e-3,
          weight_decay: float = 1e-3, seed: int = 0, time_limit_s: float | None = None,
          augment_prob: float = 0.5, settle_fraction: float = 0.15) -> tuple[STSUN, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = STSUN(model_config(size)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    history: list[float] = []
    start = time.perf_counter()
    bar = progress_bar(range(steps), desc="train", unit="step")
    for step in bar:
        base = profiles[step % len(profiles)]
        augment = step < (1 - settle_fraction) * steps and rng.random() < augment_prob
        prof = sample_setting(base, rng) if augment else base
        x, labels = synthetic_tiles(prof, batch, seed=int(rng.integers(1 << 31)),
                                    cloud_cover=0.05 if rng.random() < 0.2 else 0.0)
        y = torch.from_numpy(targets(labels, prof))
        loss = task_loss(model(torch.from_numpy(x), Metadata.from_profile(prof)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(history[-20:]):.3f}", profile=base.name)
        if time_limit_s and time.perf_counter() - start > time_limit_s:
            break
    calibration = calibrate_batchnorm(model, profiles)
    info = {"steps_done": len(history), "batchnorm_calibration": calibration,
            "seconds": round(time.perf_counter() - start, 1),
            "final_loss_avg20": float(np.mean(history[-20:])), "profiles": [p.name for p in profiles],
            "batch": batch, "lr": lr, "weight_decay": weight_decay, "seed": seed, "size": size,
            "augment_prob": augment_prob, "settle_fraction": settle_fraction,
            "loss_every_20": [round(float(np.mean(history[i:i + 20])), 4) for i in range(0, len(history), 20)]}
    return model.eval(), info
