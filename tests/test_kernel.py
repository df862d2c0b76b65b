"""The fused Triton window-attention kernel against the PyTorch reference in float64.

Without a GPU the kernel runs under Triton's CPU interpreter (TRITON_INTERPRET=1, set in
conftest.py before any kernel is imported); shapes stay small so the interpreter stays fast.
"""
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (the dev or gpu extra)")
pytestmark = pytest.mark.own_process  # runs kernels under the Triton interpreter

from stsun.kernels import window_attention  # noqa: E402
from stsun.kernels.check import GRIDS, HEAD_DIMS, WINDOWS, kernel_error, tolerance  # noqa: E402
from stsun.kernels.ops import window_attention_op  # noqa: E402
from stsun.kernels.reference import window_attention_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run_and_compare(grid, window, heads, head_dim, dtype, batch=1, seed=0):
    err = kernel_error(grid, window, heads, head_dim, dtype, DEVICE, batch, seed)
    assert err["max_abs"] < tolerance(dtype, DEVICE), (grid, window, dtype, err)  # NaN: unwritten elements


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("window", list(WINDOWS.values()), ids=list(WINDOWS))
def test_kernel_matches_reference(grid, window, dtype):
    run_and_compare(grid, window, heads=2, head_dim=16, dtype=dtype, seed=hash((grid, window)) % 1000)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_head_dims(head_dim):
    run_and_compare((12, 10), (8, 8), heads=1, head_dim=head_dim, dtype=torch.float32, batch=2, seed=head_dim)


def test_bf16():
    # Under the interpreter the kernel upcasts bf16 dot operands (triton issue 11584).
    run_and_compare((16, 12), (8, 8), heads=2, head_dim=32, dtype=torch.bfloat16)


def test_poisoned_output_catches_unwritten_elements(monkeypatch):
    """The check is not vacuous: a kernel that writes nothing fails it."""
    from stsun.kernels import window_kernel

    monkeypatch.setattr(window_kernel, "window_attention", lambda qkv, *a, **k: k.get("out", a[-1]))
    err = kernel_error((8, 8), (4, 4), 1, 16, torch.float32, DEVICE)
    assert err["max_abs"] != err["max_abs"]  # NaN


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
