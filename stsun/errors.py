"""Every expected, user-facing failure derives from ``StsunError``.

The command lines catch ``StsunError`` once and print its message on one line (no traceback);
anything else is a bug and keeps its traceback. Each class also derives from the builtin it
replaced (``ValueError`` for bad input, ``RuntimeError`` for a failing component), so callers
that catch those keep working.
"""
from __future__ import annotations


class StsunError(Exception):
    """An expected failure whose message tells the user what to do."""


class ProfileError(StsunError, ValueError):
    """A profile could not be found or does not validate; the message names the field."""


class CheckpointError(StsunError, ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model asked for."""


class InputError(StsunError, ValueError):
    """The input does not match what the profile or model expects."""


class DatasetError(StsunError, ValueError):
    """A dataset on disk is incomplete, unreadable or does not fit the profile; the message names the file."""


class BuildError(StsunError, ValueError):
    """Build options are invalid, or an artifact cannot be produced as asked."""


class AotError(BuildError):
    """The fused kernel cannot be compiled ahead of time for TensorRT as asked."""


class EngineError(StsunError, RuntimeError):
    """An engine or build directory cannot be loaded or run."""


class SceneError(StsunError, ValueError):
    """The input scene does not fit the profile, or the dates do not fit each other."""


class ServerError(StsunError, RuntimeError):
    """The inference server cannot be started or reached."""


class ManifestError(StsunError, ValueError):
    """A job manifest (``stsun predict-many``) is unreadable or does not fit the profile; the message names the job."""


class ClusterError(StsunError, RuntimeError):
    """The Dask cluster cannot be reached, or its workers cannot load the engine."""


class StsunWarning(UserWarning):
    """Something the user should know that does not stop the work (the command lines print it
    as one ``warning:`` line)."""


__all__ = ["StsunError", "ProfileError", "CheckpointError", "InputError", "DatasetError", "BuildError", "AotError",
           "EngineError",
           "SceneError", "ServerError", "ManifestError", "ClusterError", "StsunWarning"]
