"""Metadata that conditions STSUN: what the sensor, dates, task and classes are."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stsun.profiles import Profile

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class Metadata:
    wavelengths_nm: tuple[float, ...]
    gsd_m: float
    tile_size: int
    dates_days: tuple[float, ...]
    task: str
    classes: tuple[str, ...]
    band_names: tuple[str, ...] | None = None
    name: str = "custom"
    research_dataset: str | None = None  # the authors' dataset (research-variant models only)

    @classmethod
    def from_profile(cls, profile: Profile) -> "Metadata":
        return cls(wavelengths_nm=profile.wavelengths_nm, gsd_m=profile.gsd_m, tile_size=profile.tile_size,
                   dates_days=tuple(profile.dates_days), task=profile.task, classes=profile.classes,
                   band_names=profile.band_names, name=profile.name, research_dataset=profile.research_dataset)

    @property
    def c_in(self) -> int:
        return len(self.wavelengths_nm)

    @property
    def t_in(self) -> int:
        return len(self.dates_days)

    @property
    def c_out(self) -> int:
        return len(self.classes)

    @property
    def t_out(self) -> int:
        return {"ss": 1, "bcd": self.t_in - 1, "scd": self.t_in}[self.task]

    def _years(self) -> list[float]:
        t0 = self.dates_days[0]
        return [(d - t0) / DAYS_PER_YEAR for d in self.dates_days]

    def input_tokens(self, patch: int) -> torch.Tensor:
        """(C_in*p*p, 4): [wavelength_um, gsd_m, row, col] in pixel_unshuffle channel order."""
        rows = [[w / 1000.0, self.gsd_m, i / patch, j / patch]
                for w in self.wavelengths_nm for i in range(patch) for j in range(patch)]
        return torch.tensor(rows, dtype=torch.float32)

    def time_tokens(self) -> torch.Tensor:
        """(T_in, 1): acquisition time in years since the first date."""
        return torch.tensor(self._years(), dtype=torch.float32).unsqueeze(1)

    def output_time_tokens(self) -> torch.Tensor:
        """(T_out, 2): [start, end] years of what each output map describes."""
        y = self._years()
        if self.task == "ss":
            spans = [(y[0], y[0])]
        elif self.task == "bcd":
            spans = list(zip(y[:-1], y[1:]))
        else:
            spans = [(t, t) for t in y]
        return torch.tensor(spans, dtype=torch.float32)

    def output_tokens(self, patch: int) -> torch.Tensor:
        """(C_out*p*p, 3): [gsd_m, row, col] in pixel_shuffle channel order (class, row, col)."""
        rows = [[self.gsd_m, i / patch, j / patch]
                for _ in self.classes for i in range(patch) for j in range(patch)]
        return torch.tensor(rows, dtype=torch.float32)
