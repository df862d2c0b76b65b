"""AOTInductor package (``.pt2``) of a folded STSUN, for C++ services without Python.

The package holds compiled CPU (or CUDA) code plus weights; its metadata carries the profile and
the device so the C++ loader (``runtime/cpp``) can check input shapes and place inputs before running.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch._inductor import aoti_compile_and_package

from stsun.model.folding import FoldedSTSUN
from stsun.profiles import Profile


def cpp_metadata(profile: Profile, extra: dict[str, str]) -> dict[str, str]:
    """Flat string metadata, easy to read from C++ (numbers as decimal strings)."""
    return {"profile": profile.name, "task": profile.task, "t_in": str(profile.t_in), "c_in": str(profile.c_in),
            "tile_size": str(profile.tile_size), "t_out": str(profile.t_out), "c_out": str(profile.c_out),
            "classes": json.dumps(list(profile.classes)), "band_names": json.dumps(list(profile.band_names)), **extra}


def export_aoti(folded: FoldedSTSUN, profile: Profile, path: Path, max_batch: int, meta: dict[str, str],
                device: str = "cpu") -> Path:
    """``folded`` (already on ``device``) as an AOTInductor package for ``device``."""
    example = torch.rand(min(2, max_batch), *profile.input_shape, device=device)
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    with torch.no_grad():
        program = torch.export.export(folded, (example,), dynamic_shapes={"x": {0: batch}})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.pt2"
        aoti_compile_and_package(program, package_path=str(out),
                                 inductor_configs={"aot_inductor.metadata": cpp_metadata(profile,
                                                                                         {"device": device, **meta})})
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(out, staged)
        staged.replace(path)
    return path
