"""The TensorRT attention plugin: AOT PTX (checked on CPU with triton's bundled ptxas), the plugin
build (its ONNX run on CPU with the reference attention), and the engine where TensorRT exists."""
import json
import re

import onnx
import pytest

from stsun import load_profile
from stsun.app.pipeline import build_artifacts
from stsun.export.trt.env import unavailable_reason as tensorrt_unavailable_reason
from stsun.kernels.aot import AotError, AttentionSpec, assemble, compile_many, compile_ptx, entry_params, ptx_isa

pytestmark = pytest.mark.own_process  # Triton: interpreted kernels beside ahead-of-time builds

# the paper's large configuration: 32x32 tokens, C = 1024, 16 heads of 64
LARGE = dict(grid_h=32, grid_w=32, num_heads=16, head_dim=64, scale=0.125)


ARCHS = (80, 90)
DTYPES = ("fp16", "bf16", "fp32")
WINDOWS = ((16, 16), (32, 8), (32, 32))


@pytest.fixture(scope="module")
def contract_kernels() -> dict:
    """Every parametrised case compiled in one child process (one start-up instead of 18)."""
    requests = [(AttentionSpec(win_h=w[0], win_w=w[1], dtype=d, **LARGE), a)
                for a in ARCHS for d in DTYPES for w in WINDOWS]
    return {(r[0].win_h, r[0].win_w, r[0].dtype, r[1]): k for r, k in zip(requests, compile_many(requests))}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_aot_ptx_follows_the_plugin_contract(contract_kernels, arch, dtype, window):
    kernel = contract_kernels[(*window, dtype, arch)]
    assert kernel == compile_ptx(AttentionSpec(win_h=window[0], win_w=window[1], dtype=dtype, **LARGE), arch)  # cached
    # TensorRT passes (input pointer, int32 scalars, output pointer): triton's scratch pointers are gone
    assert [t for t, _ in entry_params(kernel.ptx)] == ["u64", "u32", "u32", "u32", "u32", "u64"]
    assert kernel.scalars == (1024, 32, 32, 32 // window[1])
    assert ptx_isa(kernel.ptx) == "8.0" and kernel.shared <= 48 * 1024
    # divisibility hints: 16-byte vector loads and (when pipelined) 16-byte async copies, never
    # scalar 2-byte loads
    assert "ld.global.v4" in kernel.ptx
    assert bool(re.search(r"cp\.async\.cg\.shared\.global[^;]*0x10,", kernel.ptx)) == (kernel.num_stages > 1)
    assert not re.search(r"ld\.global(\.\w+)*\.b16 ", kernel.ptx)
    assert ("wgmma" in kernel.ptx) == (arch == 90) and ("mma.sync" in kernel.ptx) == (arch == 80)
    ptxas = assemble(kernel)
    assert ptxas["cubin_bytes"] > 0 and ptxas["spill_bytes"] == 0
    assert kernel.grid_x == (32 // window[0]) * (32 // window[1]) * -(-window[0] * window[1] // 64)


def test_aot_odd_grid_and_errors():
    kernel = compile_ptx(AttentionSpec(30, 27, 8, 32, 2, 32, 32 ** -0.5, "fp16"), 90)
    assert kernel.scalars == (810, 30, 27, 1) and assemble(kernel)["spill_bytes"] == 0
    with pytest.raises(AotError, match="sm_75"):
        compile_ptx(AttentionSpec(32, 32, 16, 16, 2, 32, 0.1, "fp16"), 75)
    with pytest.raises(AotError, match="dtype"):
        compile_ptx(AttentionSpec(32, 32, 16, 16, 2, 32, 0.1, "fp8"), 90)
    with pytest.raises(AotError, match="heads 16 to 128 wide.*--attention tensorrt"):
        compile_ptx(AttentionSpec(32, 32, 16, 16, 16, 8, 0.1, "fp16"), 90)


def test_plugin_module_keeps_runtime_annotations():
    """tensorrt.plugin checks the decorated functions' annotations as classes: postponed
    (string) annotations would make registration fail on the GPU machine only."""
    import __future__

    import stsun.export.trt.plugin as plugin

    assert getattr(plugin, "annotations", None) is not __future__.annotations


@pytest.fixture(scope="module")
def plugin_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("plugin") / "sentinel2-bcd"
    report = build_artifacts(load_profile("sentinel2-bcd"), out, size="tiny", precisions=("fp32", "fp16"), max_batch=2,
                   fidelity_tiles=1, attention="plugin")
    return out, report


def test_plugin_build_checks_its_onnx_and_writes_kernels(plugin_build):
    out, report = plugin_build
    assert report["attention"] == "plugin" and report["passed"]
    arts = {a["name"]: a for a in report["artifacts"]}
    for precision in ("fp32", "fp16"):
        a = arts[f"onnx-{precision}-plugin"]
        assert a["tensorrt_compat"]["compatible"] and a["tensorrt_compat"]["plugins"] == ["WindowAttention"]
        assert "reference evaluator" in a["checked_with"] and a["fidelity"]["gate"]["passed"]
        model = onnx.load(str(out / a["path"]))
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        nodes = [n for n in model.graph.node if n.op_type == "WindowAttention"]
        assert len(nodes) == 8 and "Softmax" not in {n.op_type for n in model.graph.node}
    assert arts["onnx-fp32-plugin"]["fidelity"]["argmax_agreement"] == 1.0
    assert arts["onnx-fp32-plugin"]["fidelity"]["max_abs_err"] < 1e-3
    # 4 window shapes x {fp32, fp16} x {sm_80, sm_90}, every one assembled without spills
    kernels = report["attention_plugin"]["kernels"]
    assert json.loads((out / "kernels" / "kernels.json").read_text()) == kernels
    assert len(kernels) == 16 and {k["arch"] for k in kernels} == {80, 90}
    assert {k["spec"]["dtype"] for k in kernels} == {"fp32", "fp16"}
    assert all(k["ptxas"]["spill_bytes"] == 0 and (out / "kernels" / k["file"]).is_file() for k in kernels)


def test_plugin_mode_rejects_int8(tmp_path):
    with pytest.raises(ValueError, match="int8"):
        build_artifacts(load_profile("sentinel2-bcd"), tmp_path, precisions=("fp32", "int8"), attention="plugin")
    with pytest.raises(ValueError, match="attention mode"):
        build_artifacts(load_profile("sentinel2-bcd"), tmp_path, attention="cudnn")


@pytest.mark.skipif(tensorrt_unavailable_reason() is not None,
                    reason=f"TensorRT plugin engine: {tensorrt_unavailable_reason()}")
def test_tensorrt_engine_with_the_plugin(tmp_path):
    """Where TensorRT and a GPU exist: engines built with the AOT plugin pass the fidelity gates."""
    report = build_artifacts(load_profile("sentinel2-bcd"), tmp_path, size="tiny", precisions=("fp32", "fp16"),
                   max_batch=2, fidelity_tiles=2, attention="plugin")
    arts = {a["name"]: a for a in report["artifacts"]}
    assert report["tensorrt"]["built"] and report["passed"]
    assert arts["tensorrt-fp32"]["fidelity"]["argmax_agreement"] >= 0.9999
    assert arts["tensorrt-fp16"]["fidelity"]["argmax_agreement"] >= 0.99


def test_aot_build_does_not_depend_on_the_callers_triton_mode():
    """Kernels have just run under the CPU interpreter in this process; the ahead-of-time build
    still compiles real PTX (it runs in a child with a clean Triton configuration)."""
    import torch

    from stsun.kernels import window_attention
    from stsun.kernels.reference import window_attention_reference

    qkv = torch.randn(1, 12 * 10, 3 * 32)
    if not torch.cuda.is_available():
        out = window_attention(qkv, (12, 10), (8, 8), 2)
        torch.testing.assert_close(out, window_attention_reference(qkv, (12, 10), (8, 8), 2, 16 ** -0.5))
    kernel = compile_ptx(AttentionSpec(12, 10, 8, 8, 2, 16, 16 ** -0.5, "fp16"), 90)
    assert "wgmma" in kernel.ptx and kernel.scalars == (120, 12, 10, 2)
