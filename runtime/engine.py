"""The interface every backend implements (``Engine``) and the build directory it opens (``BuildDir``);
``stsun.runtime.backends.load_engine`` picks the backend.

An engine takes a float32 numpy batch (B, T_in, C_in, H, W), already scaled as its profile
says, and returns float32 logits (B, T_out, C_out, H, W). Inputs are validated before any
compute; batches larger than the engine's max batch are split.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from stsun.build_report import REPORT_NAME, ReportProblem, parse_report
from stsun.classmaps import encode_maps, map_layout
from stsun.errors import EngineError
from stsun.profiles import Profile, profile_from_dict
from stsun.raw import scaled
from stsun.validation import InputError, check_tiles


class Engine(ABC):
    backend: ClassVar[str]
    serves_raw: bool = False  # True when raw digital numbers travel as they are (a served DN model)

    def __init__(self, profile: Profile, max_batch: int | None = None) -> None:
        self.profile = profile
        self.max_batch = max_batch

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def precision(self) -> str:
        return "fp32"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outs = [self._run(b) for b in self.checked_batches(x)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def checked_batches(self, x: np.ndarray) -> list[np.ndarray]:
        """``x`` validated (shape, dtype, finite) and split into batches of at most ``max_batch``."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"{self.backend}[{self.profile.name}]: expected a numpy array, got {type(x).__name__}")
        check_tiles(x, t_in=self.profile.t_in, c_in=self.profile.c_in, tile_size=self.profile.tile_size,
                    allowed_dtypes=("float32",), context=f"{self.backend}[{self.profile.name}]",
                    band_names=self.profile.band_names)
        step = self.max_batch or len(x)
        return [np.ascontiguousarray(x[i:i + step]) for i in range(0, len(x), step)]

    def maps(self, dn: np.ndarray, with_logits: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Raw digital numbers (the profile's ``scaling.dtype``) in, the map bands ``stsun predict``
        writes out (``stsun.classmaps.map_layout``; nodata where any date has the profile's
        nodata), and the logits too when asked. Served DN models compute the same in their graph."""
        p = self.profile
        x, invalid = scaled(dn, p)
        logits = self(x)
        _, dtype, nodata = map_layout(p.task, p.t_out, p.c_out)
        bands = encode_maps(logits, p.task, p.c_out)
        np.copyto(bands, nodata, where=invalid[:, None])
        return (bands.astype(dtype), logits) if with_logits else bands.astype(dtype)

    def run_many_raw(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """``run_many`` for raw digital numbers (nodata pixels zeroed, see ``stsun.raw.scaled``)."""
        return self.run_many([scaled(b, self.profile)[0] for b in batches])

    def run_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Logits for several batches. Local engines run them one after another (each already
        uses every core); a remote engine overrides this to keep them in flight together."""
        return [self(b) for b in batches]

    @classmethod
    @abstractmethod
    def open(cls, build: BuildDir, precision: str | None = None, **options) -> Engine:
        """The engine for ``build`` at ``precision`` (the backend's default when None); options are
        the backend's own (a server URL, a device)."""

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray:
        """Logits for a validated batch of at most ``max_batch`` tiles."""


class BuildDir:
    """A directory written by ``build_engine.py``: artifacts plus ``build_report.json``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        report = self.path / REPORT_NAME
        if not report.is_file():
            raise EngineError(f"{self.path} is not a build directory (no {REPORT_NAME}); "
                              "create one with: python export/build_engine.py --profile NAME -o DIR")
        rebuild = "rebuild it with: python export/build_engine.py --profile NAME -o DIR"
        try:
            data = json.loads(report.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EngineError(f"{report} is not valid JSON ({err}); {rebuild}") from None
        try:
            self.report = parse_report(data)
        except ReportProblem as err:
            raise EngineError(f"{report} is not a valid build report: {err}; {rebuild}") from None
        self.profile = profile_from_dict(self.report.profile, source=str(report))
        self.max_batch: int = self.report.max_batch

    @property
    def checkpoint(self) -> Path:
        return self.verified(self.path / self.report.checkpoint.file, self.report.checkpoint.sha256)

    def verified(self, path: Path, sha256: str | None) -> Path:
        """``path`` if it exists and matches the sha256 the build recorded for it (builds made
        before hashes were recorded are not checked). Hashing reads the file once: about 10 ms for
        the tiny demo model's ONNX, 1-2 s for the large model's 800 MB."""
        from stsun.digest import file_sha256

        if not path.is_file():
            raise EngineError(f"{path} is missing from the build; rebuild it")
        if sha256 and file_sha256(path) != sha256:
            raise EngineError(f"{path} does not match the sha256 recorded in {REPORT_NAME} ({sha256[:12]}…): "
                              f"the file was damaged or replaced; rebuild it")
        return path

    def artifact(self, kind: str, precision: str) -> Path:
        for a in self.report.artifact_paths(kind):
            if a.precision == precision:
                return self.verified(self.path / a.path, a.sha256)
        built = sorted(f"{a.format}/{a.precision}" for a in self.report.artifacts if a.path)
        raise EngineError(f"{self.path} has no {kind} {precision} artifact; it has {built}. "
                          f"Rebuild with --precision {precision}.")

