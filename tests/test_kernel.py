"""The fused Triton window-attention kernel against the PyTorch reference in float64.

Without a GPU the kernel runs under Triton's CPU interpreter (TRITON_INTERPRET=1, set in
conftest.py before any kernel is imported); shapes stay small so the interpreter stays fast.
"""
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (the dev or gpu extra)")
pytestmark = pytest.mark.own_process  # runs kernels under the Triton interpreter

from stsun.kernels import window_attention  # noqa: E402
from stsun.kernels.ops import window_attention_op  # noqa: E402
from stsun.kernels.reference import window_attention_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On a GPU fp32 tl.dot uses tf32: looser there.
TOL = {torch.float32: 2e-3 if DEVICE == "cuda" else 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def run_and_compare(grid, window, heads, head_dim, dtype, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)  # fresh random inputs per case
    qkv = torch.randn(batch, grid[0] * grid[1], 3 * heads * head_dim, generator=gen).to(DEVICE, dtype)
    out = torch.full((batch, grid[0] * grid[1], heads * head_dim), float("nan"), dtype=dtype, device=DEVICE)
    window_attention(qkv, grid, window, heads, out=out)  # poisoned output: unwritten elements stay NaN
    ref = window_attention_reference(qkv.double().cpu(), grid, window, heads)
    assert torch.isfinite(out).all(), "kernel left elements unwritten"
    err = (out.double().cpu() - ref).abs().max().item()
    assert err < TOL[dtype], (grid, window, dtype, err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grid", [(32, 32), (30, 27), (20, 36)])
@pytest.mark.parametrize("window", [(32, 8), (16, 16), (8, 32), "global"])
def test_kernel_matches_reference(grid, window, dtype):
    run_and_compare(grid, grid if window == "global" else window, heads=2, head_dim=16, dtype=dtype,
                    seed=hash((grid, window)) % 1000)


@pytest.mark.parametrize("head_dim", [16, 24, 64, 128])
def test_head_dims(head_dim):
    run_and_compare((12, 10), (8, 8), heads=1, head_dim=head_dim, dtype=torch.float32, batch=2, seed=head_dim)


def test_bf16():
    # Under the interpreter the kernel upcasts bf16 dot operands (triton issue 11584).
    run_and_compare((16, 12), (8, 8), heads=2, head_dim=32, dtype=torch.bfloat16)


def test_rejects_bad_arguments():
    qkv = torch.randn(1, 64, 3 * 2 * 16)
    with pytest.raises(ValueError, match="does not fit grid"):
        window_attention(qkv, (8, 9), (4, 4), 2)
    with pytest.raises(ValueError, match="head_dim must be in"):
        window_attention(torch.randn(1, 64, 3 * 8), (8, 8), (4, 4), 1)
    with pytest.raises(TypeError, match="supports float32"):
        window_attention(qkv.double(), (8, 8), (4, 4), 2)


def test_custom_op_dispatches_to_reference_on_cpu_and_passes_opcheck():
    qkv = torch.randn(2, 30 * 27, 3 * 2 * 16)
    got = torch.ops.stsun.window_attention(qkv, 30, 27, 16, 16, 2, 0.25)
    torch.testing.assert_close(got, window_attention_reference(qkv, (30, 27), (16, 16), 2, 0.25))
    torch.library.opcheck(window_attention_op, (qkv, 30, 27, 16, 16, 2, 0.25),
                          test_utils=("test_schema", "test_faketensor"))


def test_public_name_stays_the_function():
    """``stsun.kernels.window_attention`` is the function even after the kernel module loads."""
    import stsun.kernels

    window_attention(torch.randn(1, 16, 3 * 16), (4, 4), (2, 2), 1)
    assert callable(stsun.kernels.window_attention)


@pytest.mark.parametrize("grid", [(32, 32), (30, 27)])
def test_explicit_softmax_baseline_matches_sdpa(grid):
    """The benchmark's explicit softmax(QK^T)V path computes the same attention as SDPA."""
    qkv = torch.randn(2, grid[0] * grid[1], 3 * 2 * 16, dtype=torch.float64)
    for window in [(32, 8), (16, 16), grid]:
        torch.testing.assert_close(window_attention_reference(qkv, grid, window, 2, explicit_softmax=True),
                                   window_attention_reference(qkv, grid, window, 2))
