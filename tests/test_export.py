import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import random_model

from stsun import InputError, Metadata, load_profile
from stsun.app.pipeline import build_artifacts
from stsun.data.synthetic import synthetic_tiles
from stsun.export.onnx_export import read_metadata
from stsun.export.trt.compat import check_compat
from stsun.model.folding import fold
from stsun.profiles import builtin_profile_names
from stsun.runtime import EngineError, OnnxRuntimeEngine, load_engine


@pytest.mark.parametrize("name", ["sentinel2-scd", "sentinel2-bcd", "landsat8-ss", "whu-ss", "tscd-bcd"])
def test_folded_matches_dynamic(tiny_model, name):
    """Folding (strided-conv SSUM, constant TUM, BN into convs) reproduces the dynamic model."""
    p = load_profile(name)
    x = torch.from_numpy(synthetic_tiles(p, 2, seed=3)[0])
    with torch.no_grad():
        ref = tiny_model(x, Metadata.from_profile(p))
        got = fold(tiny_model, p)(x)
    assert (got - ref).abs().max() < 1e-5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in (*fold(tiny_model, p).stem, *fold(tiny_model, p).head))


def test_fold_requires_eval_mode():
    with pytest.raises(ValueError, match="eval-mode"):
        fold(random_model().train(), load_profile("sentinel2-ss"))


@pytest.fixture(scope="module")
def s2_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "sentinel2-scd"
    report = build_artifacts(load_profile("sentinel2-scd"), out, size="tiny", precisions=("fp32", "fp16", "int8"),
                   max_batch=4, fidelity_tiles=2, calibration_tiles=4)
    return out, report


def test_build_report(s2_build):
    out, report = s2_build
    on_disk = json.loads((out / "build_report.json").read_text())
    assert on_disk == report
    # the validated options the build ran with are part of the report
    assert report["options"]["precisions"] == ["fp32", "fp16", "int8"] and report["options"]["max_batch"] == 4
    assert report["options"]["attention"] == "tensorrt" and report["options"]["checkpoint"] is None
    names = {a["name"]: a for a in report["artifacts"]}
    assert {"folded", "onnx-fp32", "onnx-fp16", "onnx-int8"} <= set(names)
    for name in ("folded", "onnx-fp32"):
        f = names[name]["fidelity"]
        assert f["gate"]["passed"] and f["argmax_agreement"] >= 0.9999 and f["max_abs_err"] <= 1e-3
    for a in report["artifacts"]:
        if a["format"] == "onnx":
            assert a["bytes"] == (out / a["path"]).stat().st_size and a["build_seconds"] >= 0
    compat = {a["precision"]: a["tensorrt_compat"] for a in report["artifacts"] if a["format"] == "onnx"}
    assert compat["fp32"]["compatible"] and compat["fp16"]["compatible"], compat
    # the int8 model targets onnxruntime CPU (uint8 activations): TensorRT needs zero zero points
    assert not compat["int8"]["compatible"] and "non-zero zero point" in compat["int8"]["problems"][0]
    assert report["tensorrt"]["built"] is False and "tensorrt" in report["tensorrt"]["reason"]
    assert not list(out.glob(".*.tmp"))


def test_onnx_is_static_except_batch_and_metadata_round_trips(s2_build):
    out, report = s2_build
    model = onnx.load(str(out / "model.fp32.onnx"))
    assert model.opset_import[0].version >= 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [2, 10, 256, 256]
    meta = read_metadata(model)
    p = load_profile("sentinel2-scd")
    assert json.loads(meta["band_names"]) == list(p.band_names)
    assert json.loads(meta["wavelengths_nm"]) == list(p.wavelengths_nm)
    assert json.loads(meta["classes"]) == list(p.classes)
    assert meta["task"] == "scd" and meta["precision"] == "fp32"
    assert json.loads(meta["input_scaling"])["scale"] == pytest.approx(1e-4)
    assert meta["checkpoint_sha256"] == report["checkpoint"]["sha256"]
    assert meta["stsun_version"] and json.loads(meta["profile"])["name"] == "sentinel2-scd"
    assert read_metadata(out / "model.int8.onnx")["precision"] == "int8"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_onnx_is_valid_and_topologically_sorted(s2_build, precision):
    """TensorRT's parser needs producers before consumers; the fp16 converter used to append
    its input casts at the end (onnxruntime tolerated it, the ONNX checker did not)."""
    model = onnx.load(str(s2_build[0] / f"model.{precision}.onnx"))
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    seen = {v.name for v in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        assert set(node.input) <= seen, node.name
        seen.update(node.output)


@pytest.mark.parametrize("backend", ["eager", "folded", "onnxruntime"])
def test_backends_agree_and_validate(s2_build, backend):
    out, _ = s2_build
    engine = load_engine(out, backend=backend)
    assert engine.profile.name == "sentinel2-scd" and engine.max_batch == 4
    x, _ = synthetic_tiles(engine.profile, 5, seed=5)  # 5 > max batch: split into 4 + 1
    ref = load_engine(out, backend="eager")(x)
    y = engine(x)
    assert y.shape == (5, 2, 6, 256, 256) and y.dtype == np.float32
    assert np.abs(y - ref).max() < 1e-4
    other = load_profile("landsat8-ss")  # another profile's tile shape is refused, naming the expectation
    with pytest.raises(InputError, match=r"expected T_in=2"):
        engine(np.zeros((1, *other.input_shape), np.float32))
    with pytest.raises(InputError, match="wrong dtype: expected float32, got float64"):
        engine(x.astype(np.float64))
    bad = x[:1].copy()
    bad[0, 0, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        engine(bad)


def test_unknown_backend_and_missing_artifact(s2_build, tmp_path):
    out, _ = s2_build
    with pytest.raises(EngineError, match="unknown backend"):
        load_engine(out, backend="cuda-magic")
    with pytest.raises(EngineError, match="not a build directory"):
        load_engine(tmp_path)
    with pytest.raises(EngineError, match="runs in fp32 only"):
        load_engine(out, backend="folded", precision="int8")


def test_damaged_artifact_or_report_is_refused(s2_build, tmp_path):
    """Every artifact's sha256 is in the report and checked on load: an ONNX with sign bits
    flipped in one weight tensor, which onnxruntime would run silently, is refused with a
    'rebuild' message; a malformed report is one clear error, not a KeyError."""
    import shutil

    out, report = s2_build
    arts = {a["name"]: a for a in report["artifacts"]}
    assert all(len(a["sha256"]) == 64 for a in arts.values() if a["path"])
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    model = onnx.load(str(copy / "model.fp32.onnx"))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(init.raw_data)
    for i in range(3, len(raw) // 16, 4):  # the sign byte of 1/16 of the float32 weights
        raw[i] ^= 0x80
    init.raw_data = bytes(raw)
    onnx.save(model, str(copy / "model.fp32.onnx"))
    OnnxRuntimeEngine(copy / "model.fp32.onnx")  # it loads and would run: only the hash tells
    with pytest.raises(EngineError, match="does not match the sha256.*rebuild"):
        load_engine(copy, backend="onnxruntime")
    load_engine(copy, backend="onnxruntime", precision="fp16")  # the untouched artifacts still load
    (copy / "checkpoint.safetensors").write_bytes(b"x" + (copy / "checkpoint.safetensors").read_bytes()[1:])
    with pytest.raises(EngineError, match="checkpoint.safetensors does not match the sha256"):
        load_engine(copy, backend="folded")
    good = json.loads((out / "build_report.json").read_text())
    for bad, message in (({k: v for k, v in good.items() if k != "max_batch"}, "'max_batch' is missing"),
                         ([good], "it holds a list"), ({**good, "max_batch": 0}, "max_batch is 0")):
        (copy / "build_report.json").write_text(json.dumps(bad))
        with pytest.raises(EngineError, match=f"not a valid build report: {message}"):
            load_engine(copy)
    (copy / "build_report.json").write_text("{not json")
    with pytest.raises(EngineError, match="not valid JSON"):
        load_engine(copy)
    # a report from before the format field, or from a newer format, is refused by name
    for bad, message in (({k: v for k, v in good.items() if k != "format"}, "it has no format version"),
                         ({**good, "format": 99}, "it has format 99, this stsun reads format 2")):
        (copy / "build_report.json").write_text(json.dumps(bad))
        with pytest.raises(EngineError, match=f"not a valid build report: {message}"):
            load_engine(copy)


def test_corrupted_or_truncated_onnx(s2_build, tmp_path):
    out, _ = s2_build
    data = (out / "model.fp32.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 100)
    for path in (truncated, garbage):
        with pytest.raises(EngineError, match="corrupted or truncated"):
            OnnxRuntimeEngine(path)


def test_compat_check_flags_problems(s2_build, tmp_path):
    out, _ = s2_build
    model = onnx.load(str(out / "model.fp32.onnx"))
    model.graph.node[0].op_type = "Unique"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "height"
    report = check_compat(model)
    assert not report.compatible
    assert any("Unique" in p for p in report.problems)
    assert any("only axis 0 (batch) may be dynamic" in p for p in report.problems)


def test_build_cli_every_profile_passes_fp32(tmp_path):
    """Every built-in profile builds at tiny size and passes the fp32 gate."""
    from typer.testing import CliRunner

    from stsun.app.cli import app

    for name in builtin_profile_names():
        out = tmp_path / name
        res = CliRunner().invoke(app, ["build", "--profile", name, "--size", "tiny", "--precision", "fp32",
                                       "--max-batch", "2", "--out", str(out)])
        assert res.exit_code == 0, (name, res.output)
        report = json.loads((out / "build_report.json").read_text())
        assert report["passed"] and {a["name"] for a in report["artifacts"]} == {"folded", "onnx-fp32"}


def test_build_cli_bad_arguments(tmp_path):
    from typer.testing import CliRunner

    from stsun.app.cli import app

    res = CliRunner().invoke(app, ["build", "--profile", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown profile" in res.output
    res = CliRunner().invoke(app, ["build", "--profile", "sentinel2-ss", "--precision", "fp8", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown precision" in res.output


def test_build_script_expected_failures_are_one_line_on_stderr(tmp_path):
    """The script as users run it: an invalid option combination is one `error:` line on stderr,
    exit 2, no traceback, and nothing computed or written."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "b"
    res = subprocess.run([sys.executable, str(root / "export" / "build_engine.py"), "--profile", "sentinel2-bcd",
                          "--attention", "plugin", "--precision", "fp32,int8", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid build options") and "int8" in lines[0]
    assert "Traceback" not in res.stderr and not out.exists()


def test_sentinel2_scd_builds_at_base_size(tmp_path):
    report = build_artifacts(load_profile("sentinel2-scd"), tmp_path / "base", size="base", precisions=("fp32",),
                   max_batch=2, fidelity_tiles=2)
    assert report["model_size"] == "base" and report["passed"]
    f = next(a for a in report["artifacts"] if a["name"] == "onnx-fp32")["fidelity"]
    assert f["argmax_agreement"] >= 0.9999 and f["max_abs_err"] <= 1e-3


def test_attention_plugin_export(tiny_model, tmp_path):
    """The TensorRT-plugin export mode: one custom node per LGWA attention, carrying the window."""
    from stsun.export.onnx_export import export_fp32

    p = load_profile("sentinel2-bcd")
    path = export_fp32(fold(tiny_model, p), p, tmp_path / "plugin.onnx", {}, attention_plugin=True)
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type == "WindowAttention"]
    assert len(nodes) == tiny_model.config.enc_depth + tiny_model.config.dec_depth
    assert {n.domain for n in nodes} == {"stsun"} and "Softmax" not in {n.op_type for n in model.graph.node}
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert [(a["win_h"], a["win_w"]) for a in attrs[:4]] == [(32, 8), (16, 16), (8, 32), (32, 32)]
    assert all(a["plugin_namespace"] == b"stsun" and a["aot"] == 1 and a["num_heads"] == 2 for a in attrs)
    assert attrs[0]["head_dim"] == 32 and attrs[0]["scale"] == pytest.approx(32 ** -0.5)
    # TensorRT hands the attributes to the plugin in its registered order
    assert [a.name for a in nodes[0].attribute][:7] == ["grid_h", "grid_w", "win_h", "win_w", "num_heads",
                                                        "head_dim", "scale"]
    assert not check_compat(model).compatible  # unknown op without the plugin...
    assert check_compat(model, plugin_ops=("WindowAttention",)).compatible  # ...fine with it
    # the normal export is untouched afterwards
    plain = onnx.load(str(export_fp32(fold(tiny_model, p), p, tmp_path / "plain.onnx", {})))
    assert "WindowAttention" not in {n.op_type for n in plain.graph.node}
