import dataclasses
import math

import pytest
import torch
from conftest import random_model

from stsun import InputError, Metadata, load_profile
from stsun.kernels.reference import window_attention_reference
from stsun.profiles import builtin_profile_names


@pytest.mark.parametrize("name", builtin_profile_names())
def test_output_shape_every_profile(tiny_model, name):
    """One model instance serves every profile: 3-band 512 px single-date, 10-band 256 px
    two-date, 24 dates at 1024 px, ..."""
    p = load_profile(name)
    x = torch.rand(1, *p.input_shape)
    with torch.no_grad():
        y = tiny_model(x, Metadata.from_profile(p))
    assert y.shape == (1, p.t_out, p.c_out, p.tile_size, p.tile_size)
    assert torch.isfinite(y).all()


def test_dum_weight_shapes_follow_metadata(tiny_model):
    base = Metadata.from_profile(load_profile("sentinel2-scd"))
    for bands, classes, tile, dates in [
        (10, 6, 256, 2), (3, 1, 512, 1), (4, 6, 1024, 5), (7, 2, 768, 3),
    ]:
        meta = dataclasses.replace(base, wavelengths_nm=tuple(450.0 + 100 * i for i in range(bands)),
                                   classes=base.classes[:classes], tile_size=tile,
                                   dates_days=tuple(100.0 * i for i in range(dates)),
                                   band_names=None, task="scd")
        p = tile // 256
        g = tiny_model.generate(meta)
        du, tu = tiny_model.config.unified_dim, tiny_model.config.temporal_dim
        assert g.w_in.shape == (du, bands * p * p) and g.b_in.shape == (du,)
        assert g.w_t1.shape == (tu, dates) and g.w_t2.shape == (dates, tu)
        assert g.w_out.shape == (classes * p * p, du) and g.b_out.shape == (classes * p * p,)


def test_changed_class_subset_changes_only_its_channels(tiny_model):
    meta = Metadata.from_profile(load_profile("sentinel2-scd"))
    x = torch.rand(2, 2, 10, 256, 256)
    a = dataclasses.replace(meta, classes=("water", "soil", "forest and other vegetation"))
    b = dataclasses.replace(meta, classes=("water", "grassland", "forest and other vegetation"))
    c = dataclasses.replace(meta, classes=("forest and other vegetation", "water"))
    with torch.no_grad():
        ya, yb, yc = (tiny_model(x, m) for m in (a, b, c))
    torch.testing.assert_close(ya[:, :, [0, 2]], yb[:, :, [0, 2]], rtol=0, atol=1e-6)
    assert (ya[:, :, 1] - yb[:, :, 1]).abs().max() > 1e-4
    # a subset in another order gives the same maps, permuted
    torch.testing.assert_close(yc, ya[:, :, [2, 0]], rtol=0, atol=1e-6)


def explicit_window_attention(qkv, grid_hw, window_hw, heads):
    """Independent float64 reference: loop over windows, attend only among valid tokens."""
    b, n, c3 = qkv.shape
    gh, gw = grid_hw
    hd = c3 // 3 // heads
    x = qkv.double().view(b, gh, gw, 3, heads, hd)
    out = torch.empty(b, gh, gw, heads, hd, dtype=torch.float64)
    for r0 in range(0, gh, window_hw[0]):
        for c0 in range(0, gw, window_hw[1]):
            win = x[:, r0:r0 + window_hw[0], c0:c0 + window_hw[1]]
            h, w = win.shape[1:3]
            q, k, v = win.reshape(b, h * w, 3, heads, hd).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
            out[:, r0:r0 + h, c0:c0 + w] = (att @ v).permute(0, 2, 1, 3).reshape(b, h, w, heads, hd)
    return out.reshape(b, n, heads * hd)


@pytest.mark.parametrize("grid", [(32, 32), (30, 27), (20, 36), (7, 5)])
@pytest.mark.parametrize("window", [(32, 8), (16, 16), (8, 32)])
def test_window_attention_masks_padding(grid, window):
    torch.manual_seed(sum(grid) + sum(window))
    heads = 2
    qkv = torch.randn(2, grid[0] * grid[1], 3 * heads * 16)
    got = window_attention_reference(qkv, grid, window, heads)
    want = explicit_window_attention(qkv, grid, window, heads)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_padding_is_not_attended_as_zeros():
    """Attending zero-padded keys (the research code's behaviour) gives a different answer."""
    torch.manual_seed(1)
    grid, window, heads = (30, 27), (16, 16), 2
    qkv = torch.randn(1, 30 * 27, 3 * heads * 16)
    masked = window_attention_reference(qkv, grid, window, heads)
    padded = torch.nn.functional.pad(qkv.view(1, 30, 27, -1), (0, 0, 0, 5, 0, 2))
    zeros_attended = window_attention_reference(padded.reshape(1, 32 * 32, -1), (32, 32), window, heads)
    diff = (zeros_attended.view(1, 32, 32, -1)[:, :30, :27].reshape(1, 30 * 27, -1) - masked).abs().max()
    assert diff > 1e-3


def test_global_window_equals_full_attention():
    torch.manual_seed(2)
    qkv = torch.randn(1, 12 * 10, 3 * 2 * 16)
    got = window_attention_reference(qkv, (12, 10), (12, 10), 2)
    torch.testing.assert_close(got.double(), explicit_window_attention(qkv, (12, 10), (12, 10), 2),
                               rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter():
    model = random_model("tiny", seed=3).train()
    meta = Metadata.from_profile(load_profile("sentinel2-scd"))
    y = model(torch.rand(2, 2, 10, 256, 256), meta)
    (y.square().mean() + y.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("shape, dtype, poison, message", [
    ((1, 2, 9, 256, 256), torch.float32, False, r"wrong band count: expected C_in=10 \(B2, B3"),
    ((1, 3, 10, 256, 256), torch.float32, False, "wrong number of dates: expected T_in=2, got 3"),
    ((1, 2, 10, 512, 512), torch.float32, False, "wrong tile size: expected 256 x 256, got 512 x 512"),
    ((1, 2, 10, 256, 256), torch.float64, False, "wrong dtype: expected float32, got float64"),
    ((1, 2, 10, 256, 256), torch.float32, True, "NaN or infinite"),
    ((2, 10, 256, 256), torch.float32, False, "expected a 5-D batch"),
])
def test_bad_input_errors_name_expectation(tiny_model, shape, dtype, poison, message):
    meta = Metadata.from_profile(load_profile("sentinel2-scd"))
    x = torch.rand(*shape, dtype=dtype)
    if poison:
        x[0, 1, 3, 10, 10] = float("nan")
    with pytest.raises(InputError, match=message):
        tiny_model(x, meta)


def test_unknown_class_and_bad_tile_metadata(tiny_model):
    meta = Metadata.from_profile(load_profile("sentinel2-ss"))
    with pytest.raises(ValueError, match="not in this model's class vocabulary"):
        tiny_model.generate(dataclasses.replace(meta, classes=("lava",)))
    with pytest.raises(ValueError, match="multiple of the unified grid 256"):
        tiny_model.generate(dataclasses.replace(meta, tile_size=300))
