"""Import a checkpoint of the authors' training code as a research-variant STSUN checkpoint.

Their code (github.com/walking-shadow/Official_TSSUN, ``transcoder/models/TSSUN/``) saves a
Lightning ``.ckpt`` whose ``state_dict`` holds ``encoder.*`` (ViT_Encoder) and ``decoder.*``
(ViT_Decoder) tensors. Widths and depths are read from the tensor shapes; the number of heads
cannot be, so it is an argument (their default, 16). Every tensor is mapped by name onto
``STSUN(variant="research")``; a tensor left over, one missing or one of the wrong shape is an
error that names it. Three tensors their code creates but its forward never reads are dropped
and recorded (``UNREAD``).
"""
from __future__ import annotations

import math
import pickle
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from stsun.digest import file_sha256
from stsun.errors import CheckpointError
from stsun.model import STSUN, ModelConfig
from stsun.model.checkpoint import save_checkpoint
from stsun.model.research import RESEARCH_DATASETS
from stsun.profiles import builtin_profiles

DEFAULT_HEADS = 16  # BSQModel's num_heads
KEY_PREFIXES = ("model.", "module.")  # wrappers that may prefix every key

# Created by their modules, never read by their forward: TUM's out-mode generator appends no
# bias token, and the output SSUM's generator computes a bias it then ignores.
UNREAD = (
    "decoder.temporal_unify_decoder.weight_generator.bias_token",
    "decoder.tss_unify.weight_generator.fc_bias.weight",
    "decoder.tss_unify.weight_generator.fc_bias.bias",
)

# Inside a weight generator (their DUM): their name -> ours.
_DUM = (("fclayer.w1.", "mlp.fc1."), ("fclayer.w2.", "mlp.fc2."),
        ("weight_generator.transformer_encoder.", "encoder."), ("weight_generator.bias_token", "bias_token"),
        ("weight_generator.fc_weight.", "head."), ("weight_generator.fc_bias.", "bias_head."))
# Inside an LGWA block: their name -> ours (the rest is named alike).
_BLOCK = (("mlp.fc1.", "mlp.0."), ("mlp.fc2.", "mlp.2."), ("conv_layer.", "local."))
# (their prefix, our prefix, renames below it). A prefix not ending in "." is a whole name; below
# "blocks." the renames apply after the block number.
_GROUPS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("encoder.pos_embed", "pos_embed", ()),
    ("encoder.task_embedding.weight", "task_embed", ()),
    ("decoder.task_embedding.weight", "decoder_task_embed", ()),
    ("encoder.tss_unify.", "input_dum.", _DUM),
    ("decoder.temporal_unify_encoder.", "tum_in.", _DUM),
    ("decoder.temporal_unify_decoder.", "tum_out.", _DUM),
    ("decoder.tss_unify.", "output_dum.", _DUM),
    ("encoder.patch_embed.", "stem.", ()),
    ("decoder.final.", "head.", ()),
    ("decoder.final_linear.", "final_linear.", ()),
    ("encoder.blocks.", "encoder.", _BLOCK),
    ("decoder.blocks.", "decoder.", _BLOCK),
    ("decoder.norm.", "norm.", ()),
)


def _rename(name: str, forward: bool) -> str | None:
    for theirs, ours, inner in _GROUPS:
        src, dst = (theirs, ours) if forward else (ours, theirs)
        if not (name.startswith(src) if src.endswith(".") else name == src):
            continue
        rest = name[len(src):]
        number, dot, tail = rest.partition(".") if inner is _BLOCK else ("", "", rest)
        for a, b in inner:
            a, b = (a, b) if forward else (b, a)
            if tail.startswith(a):
                tail = b + tail[len(a):]
                break
        return dst + number + dot + tail
    return None


def our_name(theirs: str) -> str | None:
    """Our state-dict name for one of theirs (None: no such tensor in our research model)."""
    return _rename(theirs, forward=True)


def their_name(ours: str) -> str:
    """Their name for one of ours (to report a missing tensor as they call it)."""
    return _rename(ours, forward=False) or ours


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Their tensors from a Lightning ``.ckpt`` (``state_dict``), a plain ``torch.save``d state dict
    or a safetensors file, with a ``model.``/``module.`` prefix shared by every key removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} could not be read as safetensors: {err}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{path} holds Python objects besides tensors ({str(err).splitlines()[0]}); load it "
                                  "with --trust-pickle only if you trust where it came from") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint: {err}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is neither a Lightning checkpoint with a 'state_dict' "
                              "nor a state dict of tensors")
    state = dict(obj)
    while (prefix := next((p for p in KEY_PREFIXES if all(k.startswith(p) for k in state)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _needed(state: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"missing tensor {key} (it gives {what}); is this a checkpoint of the authors' "
                              "TSSUN code (encoder.* / decoder.* tensors)?")
    return state[key]


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)
           and k[len(prefix):].split(".", 1)[0].isdigit()}
    if not ids:
        raise CheckpointError(f"no {prefix}N.* tensors: cannot tell the number of blocks")
    return max(ids) + 1


def infer_config(state: dict[str, torch.Tensor], heads: int = DEFAULT_HEADS) -> ModelConfig:
    """Widths and depths from the tensor shapes, the heads as given."""
    pos = _needed(state, "encoder.pos_embed", "the token width and grid")
    tokens, dim = pos.shape[-2], pos.shape[-1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"encoder.pos_embed has {tokens} positions, not a square token grid")
    unified = _needed(state, "encoder.tss_unify.weight_generator.bias_token", "the unified width D_u").shape[-1]
    unified_out = _needed(state, "decoder.tss_unify.weight_generator.bias_token", "the output width").shape[-1]
    if unified_out != unified:
        raise CheckpointError(f"in_chans {unified} differs from out_chans {unified_out} (the widths of "
                              "encoder.tss_unify and decoder.tss_unify): one unified width is supported")
    temporal = _needed(state, "decoder.temporal_unify_encoder.weight_generator.bias_token",
                       "the unified time T_u").shape[-1]
    mlp = _needed(state, "encoder.blocks.0.mlp.fc1.weight", "the MLP width").shape[0]
    if dim % heads:
        raise CheckpointError(f"token width {dim} is not divisible by {heads} heads: "
                              "pass the --heads it was trained with")
    return ModelConfig(size="research", embed_dim=dim, num_heads=heads, enc_depth=_depth(state, "encoder.blocks."),
                       dec_depth=_depth(state, "decoder.blocks."), unified_dim=unified, dum_hidden=unified,
                       unified_grid=8 * grid, temporal_dim=temporal, mlp_ratio=mlp / dim, variant="research")


def convert(state: dict[str, torch.Tensor], config: ModelConfig) -> STSUN:
    """A research-variant STSUN holding their tensors; every tensor accounted for, or an error."""
    try:
        model = STSUN(config)
    except (ValueError, AssertionError) as err:
        raise CheckpointError(f"the inferred model {asdict(config)} cannot be built: {err}") from None
    expected = model.state_dict()
    ours: dict[str, torch.Tensor] = {}
    found, unused, misshaped = set(), [], []
    for key, value in state.items():
        if key in UNREAD:
            continue
        name = our_name(key)
        if name not in expected:
            unused.append(key)
            continue
        found.add(name)
        if name == "pos_embed" and value.dim() == 3 and value.shape[0] == 1:
            value = value[0]  # theirs is (1, L, D)
        if value.shape != expected[name].shape:
            misshaped.append(f"{key} {tuple(value.shape)} (expected {tuple(expected[name].shape)})")
            continue
        ours[name] = value.to(expected[name].dtype)
    missing = [their_name(k) for k in expected if k not in found]
    problems = [f"{label}: {', '.join(items)}" for label, items in
                (("missing", missing), ("unused", unused), ("mis-shaped", misshaped)) if items]
    if problems:
        raise CheckpointError(f"checkpoint does not map onto the research variant ({config.embed_dim} wide, "
                              f"{config.enc_depth}+{config.dec_depth} blocks): " + "; ".join(problems))
    model.load_state_dict(ours, strict=True)
    return model.eval()


def import_research(checkpoint: str | Path, dataset: str, out: str | Path, heads: int = DEFAULT_HEADS,
                    trust_pickle: bool = False) -> tuple[Path, dict]:
    """Write ``out`` (.safetensors + .json) from the authors' checkpoint; returns the path and the
    research settings recorded in the JSON."""
    if dataset not in RESEARCH_DATASETS:
        raise CheckpointError(f"unknown dataset '{dataset}'; the authors' code knows {', '.join(RESEARCH_DATASETS)}")
    state = read_state_dict(checkpoint, trust_pickle)
    model = convert(state, infer_config(state, heads))
    ds = RESEARCH_DATASETS[dataset]
    profiles = [p.name for p in builtin_profiles() if p.research_dataset == dataset]
    settings = {"dataset": dataset, "task_index": ds.index, "task": ds.task, "t_in": ds.t_in, "t_out": ds.t_out,
                "classes": ds.c_out, "tile_size": ds.tile_size, "date_metadata": "date index 1..T",
                "profile": profiles[0] if profiles else None, "heads": heads,
                "source": {"file": Path(checkpoint).name, "sha256": file_sha256(checkpoint)},
                "dropped_unread_tensors": [k for k in UNREAD if k in state]}
    path = save_checkpoint(model, out, extra={"research": settings})
    return path, settings
