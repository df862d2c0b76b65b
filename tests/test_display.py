"""Previews look right for any sensor: the per-band percentile stretch."""
import numpy as np

from stsun.display import stretch


def test_8_bit_rgb_and_reflectance_both_fill_the_display_range():
    rng = np.random.default_rng(0)
    aerial = rng.normal(110, 30, (3, 64, 64)).clip(0, 255).round()  # 8-bit digital numbers
    reflectance = rng.normal(0.08, 0.03, (3, 64, 64)).clip(0, 1)     # Sentinel-2 L2A
    for bands in (aerial, reflectance):
        rgb = stretch(bands)
        assert rgb.shape == (64, 64, 3) and rgb.min() == 0 and rgb.max() == 1
        assert 0.35 < rgb.mean() < 0.65  # neither washed out (the old x3.5 gain gave 1.0 for 8-bit) nor dark
        for c in range(3):  # about 2 % of pixels clip at each end, per band
            assert 0.01 < (rgb[..., c] == 0).mean() < 0.03 and 0.01 < (rgb[..., c] == 1).mean() < 0.03
    assert np.clip(aerial.transpose(1, 2, 0) * 3.5, 0, 1).mean() > 0.99


def test_nodata_is_black_and_does_not_move_the_stretch():
    bands = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (3, 100, 1))
    valid = np.ones((100, 100), bool)
    valid[:, :10] = False
    bands[:, :, :10] = 1e6  # a fill value far outside the data
    bands[0, 0, 50] = np.nan  # and a NaN inside it
    rgb = stretch(bands, valid)
    assert (rgb[:, :10] == 0).all() and (rgb[0, 50] == 0).all()
    assert 0.4 < rgb[50, 55, 0] < 0.6  # the middle of the valid range stays mid-grey
