"""``build_report.json``: what a build made and how well each artifact matches the eager model.

One typed, versioned model, written by the build pipeline and parsed by every reader (a backend
opening the build, the Triton repository writer, predict-many). Fields the readers do not rely on
(fidelity details, timings, the TensorRT step's notes) are kept as they were written.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REPORT_NAME = "build_report.json"
FORMAT = 2  # 1: the unversioned reports of stsun 0.1.0 builds made before this model existed


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CheckpointRecord(_Open):
    source: str
    file: str
    sha256: str | None = None


class ArtifactRecord(_Open):
    name: str
    format: str                 # checkpoint-derived: folded, aoti; files: onnx, tensorrt, ...
    precision: str
    path: str | None            # None: measured in memory, no file kept (the folded model)
    sha256: str | None = None
    bytes: int | None = None


class BuildReport(_Open):
    format: Literal[2] = FORMAT
    profile: dict[str, Any]
    checkpoint: CheckpointRecord
    max_batch: int = Field(ge=1)
    artifacts: list[ArtifactRecord]
    passed: bool | None = None  # every artifact within its fidelity gate; None while the build runs

    def artifact_paths(self, kind: str) -> list[ArtifactRecord]:
        """The artifacts of one format that have a file."""
        return [a for a in self.artifacts if a.format == kind and a.path]


class ReportProblem(ValueError):
    """Why a report cannot be read, in one phrase."""


def parse_report(data: object) -> BuildReport:
    """The report in ``data`` (parsed JSON); ``ReportProblem`` says what is wrong with it."""
    if not isinstance(data, dict):
        raise ReportProblem(f"it holds a {type(data).__name__}, not an object")
    if data.get("format") != FORMAT:
        found = "no format version" if "format" not in data else f"format {data['format']!r}"
        raise ReportProblem(f"it has {found}, this stsun reads format {FORMAT} (the build was made by "
                            f"another stsun version)")
    try:
        return BuildReport.model_validate(data)
    except ValidationError as err:
        raise ReportProblem("; ".join(_phrase(e) for e in err.errors())) from None


def _phrase(e: dict) -> str:
    where = ".".join(map(str, e["loc"]))
    if e["type"] == "missing":
        return f"'{where}' is missing"
    if e["type"] == "greater_than_equal":
        return f"{where} is {e['input']}"
    return f"'{where}': {e['msg']}"
