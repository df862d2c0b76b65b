"""Checkpoints: ``NAME.safetensors`` (weights) with ``NAME.json`` (model config) beside it."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stsun.atomic import atomic_write
from stsun.errors import CheckpointError
from stsun.model import STSUN, ModelConfig, model_config

# The trained demo checkpoint, once committed, lives here and is the default everywhere.
DEMO_CHECKPOINT = Path(__file__).parents[1] / "weights" / "stsun-tiny-demo.safetensors"


def config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_checkpoint(model: STSUN, path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    meta = {"format": "stsun-checkpoint/1", "config": model.config.to_dict(), **(extra or {})}
    atomic_write(config_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return path


def load_checkpoint(path: str | Path) -> tuple[STSUN, dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    cfg_file = config_path(path)
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no config {cfg_file.name} beside it")
    try:
        meta = json.loads(cfg_file.read_text())
        config = ModelConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint config {cfg_file} is invalid: {err}") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} could not be read as safetensors: {err}") from None
    model = STSUN(config)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (the config needs {tuple(expected[k].shape)})"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"checkpoint {path} has mis-shaped tensors: {', '.join(wrong[:5])}"
                              + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit a '{config.size}' STSUN: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model, meta


def resolve_checkpoint(checkpoint: str | Path | None, size: str | None) -> Path | None:
    """The checkpoint a request means: the given one, else the demo checkpoint when it exists
    and no other size is asked for, else None (a randomly initialised model)."""
    if checkpoint is not None:
        return Path(checkpoint)
    if DEMO_CHECKPOINT.is_file():
        demo_size = json.loads(config_path(DEMO_CHECKPOINT).read_text())["config"]["size"]
        if size in (None, demo_size):
            return DEMO_CHECKPOINT
    return None


def load_model(checkpoint: str | Path | None = None, size: str | None = None, seed: int = 0) -> STSUN:
    """The model in eval mode: from ``resolve_checkpoint(checkpoint, size)``, or, when that is
    None, randomly initialised at ``size`` (default ``tiny``) from ``seed``."""
    path = resolve_checkpoint(checkpoint, size)
    if path is not None:
        model, _ = load_checkpoint(path)
        if size is not None and size != model.config.size:
            raise CheckpointError(f"checkpoint {path} holds a '{model.config.size}' model, not '{size}'")
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = STSUN(model_config(size or "tiny"))
    return model.eval()
