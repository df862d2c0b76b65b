"""Raw digital numbers -> model input, the one definition shared by the scene reader, engines'
raw-input path and the served DN graph (``stsun.export.raw_io`` builds the same operations)."""
from __future__ import annotations

import numpy as np

from stsun.errors import InputError
from stsun.profiles import Profile

# Sentinel-2 bands in the order of its product metadata (band_id="N" in MTD_MSIL2A.xml / MTD_MSIL1C.xml)
S2_BAND_IDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")


def scale_into(raw: np.ndarray, out: np.ndarray, dn_offset: float, scale: float, offset: float) -> None:
    """out = (raw + dn_offset) * scale + offset in float32, converting on the way (one pass when
    there is no DN offset)."""
    if dn_offset:
        np.add(raw, np.float32(dn_offset), out=out, dtype=np.float32)
        out *= np.float32(scale)
    else:
        np.multiply(raw, np.float32(scale), out=out, dtype=np.float32)
    if offset:
        out += np.float32(offset)


def scaled(dn: np.ndarray, profile: Profile, dn_offset: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(B, T, C, H, W) digital numbers of the profile's dtype -> (model input, (B, H, W) mask of
    pixels where any date's band is the profile's nodata; those inputs are zeroed)."""
    s = profile.scaling
    if not isinstance(dn, np.ndarray) or dn.dtype != np.dtype(s.dtype):
        got = dn.dtype if isinstance(dn, np.ndarray) else type(dn).__name__
        raise InputError(f"profile '{profile.name}' takes raw digital numbers as {s.dtype}, got {got}")
    if dn.ndim != 5 or dn.shape[1:] != tuple(profile.input_shape):
        raise InputError(f"raw input must be (B, {', '.join(map(str, profile.input_shape))}), got {dn.shape}")
    x = np.empty(dn.shape, np.float32)
    scale_into(dn, x, s.dn_offset if dn_offset is None else dn_offset, s.scale, s.offset)
    invalid = np.zeros((dn.shape[0], *dn.shape[3:]), bool)
    if profile.nodata is not None:
        invalid = (dn == np.array(profile.nodata).astype(dn.dtype)).any(axis=(1, 2))
        np.copyto(x, 0.0, where=invalid[:, None, None])
    return x, invalid
