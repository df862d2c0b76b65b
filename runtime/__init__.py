"""Runtime backends behind one interface: ``load_engine(build_dir, backend=...)``; the backends
and what each needs are the table in ``stsun.runtime.backends``. Engine classes load on first use."""
from __future__ import annotations

from stsun.errors import EngineError

from .backends import BACKENDS, load_engine
from .engine import BuildDir, Engine

_ENGINES = {spec.engine_class: name for name, spec in BACKENDS.items()}


def __getattr__(name: str):
    if name in _ENGINES:
        return BACKENDS[_ENGINES[name]].engine
    raise AttributeError(f"module 'stsun.runtime' has no attribute {name!r}")


__all__ = ["BACKENDS", "BuildDir", "Engine", "EngineError", "load_engine", *_ENGINES]
