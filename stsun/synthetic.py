"""Synthetic multi-sensor tiles: land-cover maps with per-class reflectance spectra.

Reflectance is a smooth function of wavelength per class, so the same scene can be sampled
by any sensor's band centres. Tiles come out already scaled (surface reflectance), which
is what a built engine takes. Used for fidelity checks, INT8 calibration and benchmarks.
"""
from __future__ import annotations

import numpy as np

from stsun.profiles import Profile


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def class_spectrum(name: str, wavelength_nm: np.ndarray) -> np.ndarray:
    """Surface reflectance (0..1) of a land-cover class at the given wavelengths."""
    w = np.asarray(wavelength_nm, dtype=np.float64) / 1000.0  # micrometres
    red_edge = _sigmoid((w - 0.715) / 0.015)                  # vegetation: dark red, bright NIR
    swir_drop = np.exp(-((w - 1.45) / 0.9) ** 2)
    green_peak = 0.04 * np.exp(-((w - 0.55) / 0.03) ** 2)
    vegetation = 0.03 + green_peak + 0.40 * red_edge * swir_drop + 0.08 * (w > 1.3)
    spectra = {
        "water": 0.06 * np.exp(-((w - 0.49) / 0.12) ** 2) + 0.005,
        "forest": 0.8 * vegetation,
        "forest and other vegetation": 0.8 * vegetation,
        "grassland": vegetation + 0.03,
        "agriculture": 1.1 * vegetation + 0.02 * np.sin(8 * w),
        "wetlands": 0.5 * vegetation + 0.02,
        "soil": 0.10 + 0.18 * np.clip(w - 0.4, 0, None),
        "barren": 0.18 + 0.12 * np.clip(w - 0.4, 0, None),
        "impervious surface": 0.22 + 0.02 * w,
        "building": 0.28 + 0.04 * w,
        "road": 0.14 + 0.01 * w,
        "snow and ice": 0.9 - 0.35 * _sigmoid((w - 1.2) / 0.1),
        "cloud": 0.7 + 0.0 * w,
        "background": 0.12 + 0.05 * w,
    }
    if name not in spectra:
        # Unknown class names still get a distinct, deterministic smooth spectrum.
        seed = sum(map(ord, name))
        spectra[name] = 0.1 + 0.08 * np.sin(seed + 3 * w) ** 2
    return spectra[name]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Gaussian random field low-passed in Fourier space; ``scale`` is the feature size in pixels."""
    h, w = shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    filt = np.exp(-(fy ** 2 + fx ** 2) * (np.pi * scale) ** 2 / 2)
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * filt, s=(h, w))
    return field / (field.std(axis=(-2, -1), keepdims=True) + 1e-12)


def land_cover(rng: np.random.Generator, size: int, n_classes: int, feature_px: float) -> np.ndarray:
    """(size, size) int map with blob-shaped regions of every class."""
    return smooth_noise(rng, (n_classes, size, size), feature_px).argmax(axis=0)


def synthetic_tiles(profile: Profile, n: int, seed: int = 0, change_fraction: float = 0.25,
                    noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """``n`` tiles for a profile: x (n, T_in, C_in, H, W) float32 reflectance and the class
    labels per date (n, T_in, H, W) int64 (indices into ``profile.classes``, or, for
    single-class profiles, 1 = that class, 0 = other)."""
    rng = np.random.default_rng(seed)
    size, t_in = profile.tile_size, profile.t_in
    classes = list(profile.classes)
    if profile.c_out == 1:  # binary profiles: the class against generic background
        classes = ["background", "building" if classes[0] == "change" else classes[0]]
    spectra = np.stack([class_spectrum(c, np.array(profile.wavelengths_nm)) for c in classes])  # (K, C)
    feature_px = max(4.0, 60.0 / profile.gsd_m * 10.0 / max(profile.patch, 1))
    x = np.empty((n, t_in, profile.c_in, size, size), np.float32)
    labels = np.empty((n, t_in, size, size), np.int64)
    for i in range(n):
        lc = land_cover(rng, size, len(classes), min(feature_px, size / 4))
        for t in range(t_in):
            if t:
                field = smooth_noise(rng, (size, size), size / 8)
                changed = field > np.quantile(field, 1 - change_fraction)
                lc = np.where(changed, land_cover(rng, size, len(classes), feature_px / 2), lc)
            labels[i, t] = lc
            texture = 1.0 + 0.05 * smooth_noise(rng, (size, size), 2.0)
            img = spectra[lc].transpose(2, 0, 1) * texture
            x[i, t] = img + noise * rng.standard_normal(img.shape)
    return x, labels
