"""The C++ consumer (runtime/cpp) builds with CMake against the torch wheel and reproduces Python."""
import shutil
import subprocess

import numpy as np
import pytest

from stsun import load_profile
from stsun.app.pipeline import build_artifacts
from stsun.classmaps import encode_maps, map_layout
from stsun.data.synthetic import synthetic_tiles
from stsun.runtime import load_engine
from stsun.runtime.cpp_io import build_example, read_tensor, write_tensor

pytestmark = [pytest.mark.own_process,  # loads a compiled AOTInductor package into the process
              pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("c++")),
                                 reason="cmake and a C++ compiler are needed to build runtime/cpp")]


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpp")
    options = {"precisions": ("fp32",), "max_batch": 4, "fidelity_tiles": 2}
    first = build_artifacts(load_profile("sentinel2-scd"), root / "build", **options)
    onnx = root / "build" / "model.fp32.onnx"
    written = onnx.stat().st_mtime_ns
    # --cpp on an existing build adds the package and keeps what is there
    report = build_artifacts(load_profile("sentinel2-scd"), root / "build", cpp=True, **options)
    kept = next(a for a in report["artifacts"] if a["name"] == "onnx-fp32")
    assert kept["reused"] and kept["sha256"] == first["artifacts"][1]["sha256"] and onnx.stat().st_mtime_ns == written
    aoti = next(a for a in report["artifacts"] if a["name"] == "aoti-fp32")
    assert aoti["fidelity"]["gate"]["passed"] and "reused" not in aoti, aoti
    build_example(root / "cmake")
    return root


def test_cpp_example_matches_python(cpp_build):
    """Logits as the folded and onnxruntime backends give them; the map bands `stsun predict`
    writes (classes per date, from-to codes), with nodata 255 where an input pixel is NaN."""
    root = cpp_build
    engine = load_engine(root / "build", backend="folded")
    p = engine.profile
    x, _ = synthetic_tiles(p, 3, seed=21)
    x[0, 1, 4, :30, :40] = np.nan  # one band of the second date missing
    x[2, 0, :, 200:, :] = np.nan
    write_tensor(root / "input.bin", x)
    res = subprocess.run([str(root / "cmake" / "stsun_example"), str(root / "build" / "model.fp32.pt2"),
                          str(root / "input.bin"), str(root / "out"), "3", "--threads", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "profile sentinel2-scd batch 3, 1 threads" in res.stdout
    logits = read_tensor(root / "out.logits.bin", np.float32)
    maps = read_tensor(root / "out.maps.bin", np.uint8)
    valid = np.isfinite(x).all(axis=(1, 2))
    want = engine(np.where(np.isfinite(x), x, 0).astype(np.float32))
    assert logits.shape == want.shape == (3, 2, 6, 256, 256)
    assert np.abs(logits - want).max() < 1e-4
    ort = load_engine(root / "build", backend="onnxruntime")(np.nan_to_num(x))
    assert np.abs(logits - ort).max() < 1e-4
    bands, dtype, nodata = map_layout(p.task, p.t_out, p.c_out)
    want_maps = np.where(valid[:, None], encode_maps(want, p.task, p.c_out), nodata).astype(dtype)
    assert maps.shape == (3, bands, 256, 256) and maps.dtype == np.uint8
    assert (maps[0, :, :30, :40] == 255).all() and (maps[2, :, 200:] == 255).all()
    assert (maps != want_maps).mean() < 1e-4  # argmax ties between the two runtimes only


def test_cpp_reports_errors(cpp_build, tmp_path):
    root = cpp_build
    exe, pt2 = str(root / "cmake" / "stsun_example"), str(root / "build" / "model.fp32.pt2")
    write_tensor(tmp_path / "bad.bin", np.zeros((1, 2, 7, 256, 256), np.float32))
    res = subprocess.run([exe, pt2, str(tmp_path / "bad.bin"), str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 1 and "expects input (B, T_in=2, C_in=10, H=256, W=256)" in res.stderr
    res = subprocess.run([exe, str(tmp_path / "missing.pt2"), str(tmp_path / "bad.bin"), str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "could not load STSUN package" in res.stderr
