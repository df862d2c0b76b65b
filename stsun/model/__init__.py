"""The STSUN reference model: DUM hypernetworks, SSUM, TUM and LGWA blocks."""
from .config import CLASS_VOCABULARY, MODEL_SIZES, TASKS, ModelConfig, model_config
from .metadata import Metadata
from .stsun import STSUN, Generated

__all__ = ["CLASS_VOCABULARY", "MODEL_SIZES", "TASKS", "ModelConfig", "model_config", "Metadata", "STSUN", "Generated"]
