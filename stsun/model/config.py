"""Model sizes (a registry of configs, as timm keeps them) and the class vocabulary."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

# Every class a model can be asked for. A profile chooses a subset; the output SSUM is
# generated from the chosen classes' embeddings, so new subsets need no retraining.
CLASS_VOCABULARY: tuple[str, ...] = (
    "background", "building", "road", "water", "barren", "forest", "agriculture",
    "impervious surface", "forest and other vegetation", "wetlands", "soil",
    "grassland", "snow and ice", "cloud", "change",
)
TASKS: tuple[str, ...] = ("ss", "bcd", "scd")
# "paper": the model as the paper describes it (metadata = wavelengths, GSD, positions, dates).
# "research": the authors' public training code, forward for forward, so that their checkpoints
# deploy unchanged (stsun.model.research; docs/07-research-checkpoints.md lists every difference).
VARIANTS: tuple[str, ...] = ("paper", "research")


@dataclass(frozen=True)
class ModelConfig:
    size: str
    embed_dim: int          # D, token width
    num_heads: int
    enc_depth: int
    dec_depth: int
    unified_dim: int        # D_u, channels on the unified grid
    dum_hidden: int         # width of every DUM hypernetwork (research: each is as wide as the layer it makes)
    unified_grid: int = 256  # tiles map onto this grid; tokens are unified_grid / 8
    temporal_dim: int = 2   # T_u, the unified time length inside TUM
    mlp_ratio: float = 4.0
    class_vocabulary: tuple[str, ...] = CLASS_VOCABULARY
    tasks: tuple[str, ...] = TASKS
    variant: Literal["paper", "research"] = "paper"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown model variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")

    @property
    def token_grid(self) -> int:
        return self.unified_grid // 8

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_vocabulary"] = list(self.class_vocabulary)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["class_vocabulary"] = tuple(d["class_vocabulary"])
        d["tasks"] = tuple(d["tasks"])
        return cls(**d)


MODEL_SIZES: dict[str, ModelConfig] = {
    "tiny": ModelConfig("tiny", embed_dim=64, num_heads=2, enc_depth=4, dec_depth=4, unified_dim=16, dum_hidden=64),
    "base": ModelConfig("base", embed_dim=256, num_heads=8, enc_depth=4, dec_depth=4, unified_dim=32, dum_hidden=128),
    # The paper's "large": D=1024, 16 heads, 8 blocks (4 encoder, 4 decoder), D_u=32.
    "large": ModelConfig("large", embed_dim=1024, num_heads=16, enc_depth=4, dec_depth=4, unified_dim=32,
                         dum_hidden=128),
}


def model_config(size: str, **overrides) -> ModelConfig:
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size '{size}'; choose one of {', '.join(MODEL_SIZES)}")
    return replace(MODEL_SIZES[size], **overrides)
