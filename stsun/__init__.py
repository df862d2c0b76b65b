"""STSUN deployment runtime: reference model, profiles, export, runtime backends, kernels."""
from stsun.checkpoint import load_checkpoint, load_model, save_checkpoint
from stsun.model import STSUN, Metadata, ModelConfig
from stsun.profiles import Profile, ProfileError, load_profile
from stsun.validation import InputError

__version__ = "0.1.0"

__all__ = ["STSUN", "Metadata", "ModelConfig", "Profile", "ProfileError", "InputError",
           "load_checkpoint", "load_model", "save_checkpoint", "load_profile", "__version__"]
