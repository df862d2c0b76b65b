"""Deployment profiles: one TOML file fixes sensor, geometry, dates, task and classes.

A profile is data. Built-in profiles live beside this module; a user profile is any
TOML file with the same fields, passed by path wherever a profile name is accepted.
"""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from stsun.errors import ProfileError

TASKS = ("ss", "bcd", "scd")
UNIFIED_GRID = 256  # tiles are cut into p x p patches onto this grid, so p = tile_size / 256
# Colour-table entries that are not classes: pixels not labelled, and (SCD, as SECOND marks
# them) pixels labelled "unchanged" without a class.
IGNORE_COLOUR, NO_CHANGE_COLOUR = "ignore", "no change"
Channel = Annotated[int, Field(ge=0, le=255)]


class Band(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    # Any positive wavelength: optical bands (~400-2500 nm), thermal (~10 um) and radar bands
    # (Sentinel-1 C-band: 5.55 cm = 55465763 nm) are all described the same way; whether a
    # checkpoint was trained on such bands is the checkpoint's business, not the profile's.
    wavelength_nm: float = Field(gt=0, description="band centre wavelength (nm)")


class Scaling(BaseModel):
    """How raw pixel values become model input: ``(x + dn_offset) * scale + offset``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: float = 1.0
    offset: float = 0.0
    dn_offset: float = Field(0.0, description="added to raw digital numbers first (Sentinel-2 L2A "
                                               "processing baseline >= 04.00: -1000)")
    dtype: Literal["uint8", "uint16", "int16"] = Field(
        "uint16", description="how the sensor stores digital numbers: the raw input of served DN models")
    note: str = ""


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    sensor: str
    task: Literal["ss", "bcd", "scd"]
    bands: tuple[Band, ...] = Field(min_length=1)
    gsd_m: float = Field(gt=0, description="ground sampling distance of the tiles, metres")
    tile_size: int = Field(gt=0)
    t_in: int = Field(ge=1)
    t_out: int | None = None
    dates_days: tuple[float, ...] | None = Field(
        default=None, description="nominal acquisition offsets (days) baked into folded engines")
    classes: tuple[str, ...] = Field(min_length=1)
    scaling: Scaling = Scaling()
    model_size: Literal["tiny", "base", "large"] = "tiny"
    nodata: float | None = None
    rgb_bands: tuple[str, str, str] | None = Field(
        default=None, description="red, green and blue band names for previews (None: no RGB preview)")
    research_dataset: str | None = Field(
        default=None, description="the dataset of the authors' training code whose settings this profile has "
                                  "(its task-embedding row in research-variant checkpoints)")
    label_colours: dict[str, tuple[Channel, Channel, Channel]] | None = Field(
        default=None, description="how RGB colour label images decode: class name (or 'ignore', or for "
                                  "task 'scd' 'no change') -> [r, g, b]")

    @field_validator("label_colours")
    @classmethod
    def _colour_table(cls, table: dict | None, info: ValidationInfo) -> dict | None:
        if table is None or "classes" not in info.data:
            return table
        classes, task = info.data["classes"], info.data.get("task")
        allowed = (*classes, IGNORE_COLOUR) + ((NO_CHANGE_COLOUR,) if task == "scd" else ())
        if unknown := [k for k in table if k not in allowed]:
            raise ValueError(f"{unknown} are neither classes of this profile nor one of {list(allowed[len(classes):])}")
        if missing := [c for c in classes if c not in table]:
            raise ValueError(f"classes {missing} have no colour")
        colours = [tuple(v) for v in table.values()]
        if dupes := sorted({c for c in colours if colours.count(c) > 1}):
            raise ValueError(f"colours {dupes} are given to more than one entry")
        return table

    @model_validator(mode="after")
    def _consistent(self) -> "Profile":
        if self.tile_size % UNIFIED_GRID:
            raise ValueError(f"tile_size must be a multiple of {UNIFIED_GRID}, got {self.tile_size}")
        expected_t_out = {"ss": 1, "bcd": self.t_in - 1, "scd": self.t_in}[self.task]
        if self.task == "ss" and self.t_in != 1:
            raise ValueError(f"t_in must be 1 for task 'ss', got {self.t_in}")
        if self.task == "bcd" and self.t_in < 2:
            raise ValueError(f"t_in must be at least 2 for task 'bcd', got {self.t_in}")
        if self.t_out is None:
            object.__setattr__(self, "t_out", expected_t_out)
        elif self.t_out != expected_t_out:
            raise ValueError(f"t_out must be {expected_t_out} for task '{self.task}' with t_in={self.t_in}, "
                             f"got {self.t_out}")
        if self.dates_days is None:
            object.__setattr__(self, "dates_days", tuple(365.0 * i for i in range(self.t_in)))
        elif len(self.dates_days) != self.t_in:
            raise ValueError(f"dates_days must have t_in={self.t_in} entries, got {len(self.dates_days)}")
        elif any(b < a for a, b in zip(self.dates_days, self.dates_days[1:])):
            raise ValueError("dates_days must be in acquisition order (non-decreasing)")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        if len({b.name for b in self.bands}) != len(self.bands):
            raise ValueError("bands must have unique names")
        if self.rgb_bands and (missing := [b for b in self.rgb_bands if b not in self.band_names]):
            raise ValueError(f"rgb_bands {missing} are not among the bands {list(self.band_names)}")
        return self

    @property
    def c_in(self) -> int:
        return len(self.bands)

    @property
    def c_out(self) -> int:
        return len(self.classes)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def wavelengths_nm(self) -> tuple[float, ...]:
        return tuple(b.wavelength_nm for b in self.bands)

    @property
    def patch(self) -> int:
        """Pixels per unified-grid cell along each axis."""
        return self.tile_size // UNIFIED_GRID

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(T_in, C_in, H, W) of one sample."""
        return (self.t_in, self.c_in, self.tile_size, self.tile_size)

    def summary(self) -> dict:
        """The fields `stsun profiles --json` prints."""
        return {
            "name": self.name, "task": self.task, "sensor": self.sensor,
            "bands": list(self.band_names), "gsd": self.gsd_m, "tile_size": self.tile_size,
            "t_in": self.t_in, "t_out": self.t_out, "classes": list(self.classes),
        }


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"invalid profile {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(profile)"
        lines.append(f"  field '{field}': {e['msg']}")
    return "\n".join(lines)


def profile_from_dict(data: dict, source: str = "<dict>") -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(_format_validation(err, source)) from None


def builtin_profile_names() -> list[str]:
    files = resources.files(__name__).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".toml"))


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A built-in profile by name, or a user profile from a TOML file path."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ProfileError(f"profile file not found: {path}")
        source = str(path)
        raw = path.read_text()
    else:
        res = resources.files(__name__) / f"{text}.toml"
        if not res.is_file():
            raise ProfileError(f"unknown profile '{text}'; built-in profiles: {', '.join(builtin_profile_names())}"
                               " (or pass the path of a .toml profile file)")
        source = f"'{text}' (built-in)"
        raw = res.read_text()
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"profile {source} is not valid TOML: {err}") from None
    return profile_from_dict(data, source)


def builtin_profiles() -> list[Profile]:
    return [load_profile(n) for n in builtin_profile_names()]
