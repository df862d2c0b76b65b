"""STSUN deployment runtime: reference model, profiles, export, runtime backends, kernels.

``import stsun`` is light: the names below load their modules (and torch, for the model) on
first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "STSUN": "stsun.model", "Metadata": "stsun.model", "ModelConfig": "stsun.model",
    "load_checkpoint": "stsun.model.checkpoint", "load_model": "stsun.model.checkpoint",
    "save_checkpoint": "stsun.model.checkpoint",
    "Profile": "stsun.profiles", "ProfileError": "stsun.profiles", "load_profile": "stsun.profiles",
    "InputError": "stsun.validation",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stsun' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
