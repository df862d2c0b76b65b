"""The DN graph (raw digital numbers in, map bands out) against the local engine's numpy path,
for each task's encoding: class per date and from-to codes (scd), change (bcd, one logit), class (ss)."""
import numpy as np
import onnxruntime as ort
import pytest

from stsun import load_profile
from stsun.app.pipeline import build_artifacts
from stsun.errors import InputError
from stsun.export.raw_io import add_raw_io
from stsun.export.trt.compat import check_compat
from stsun.runtime import load_engine


@pytest.mark.parametrize("name", ["sentinel2-scd", "sentinel2-bcd", "whu-ss"])
def test_dn_graph_matches_engine_maps(name, tmp_path):
    profile = load_profile(name)
    build_artifacts(profile, tmp_path / "build", precisions=("fp32",), max_batch=4, fidelity_tiles=1)
    engine = load_engine(tmp_path / "build")
    add_raw_io(tmp_path / "build" / "model.fp32.onnx", tmp_path / "dn.onnx", profile)
    session = ort.InferenceSession(str(tmp_path / "dn.onnx"), providers=["CPUExecutionProvider"])
    s = profile.scaling
    rng = np.random.default_rng(1)
    high = 255 if s.dtype == "uint8" else 9000
    dn = rng.integers(1, high, (3, *profile.input_shape)).astype(s.dtype)
    if profile.nodata is not None:
        dn[0, -1, :, :30, :40] = profile.nodata
        dn[1, 0, 0, 50:60] = profile.nodata
    maps, logits = session.run(["classes", "logits"], {"dn": dn})
    want_maps, want_logits = engine.maps(dn, with_logits=True)
    assert maps.dtype == want_maps.dtype == np.uint8
    assert maps.shape == want_maps.shape == (3, {"scd": 2 * profile.t_out - 1}.get(profile.task, profile.t_out),
                                             profile.tile_size, profile.tile_size)
    assert (maps == want_maps).all()
    np.testing.assert_array_equal(logits, want_logits)  # the same float32 input, bit for bit
    if profile.nodata is not None:
        assert (maps[0, :, :30, :40] == 255).all() and (maps[1, :, 50:60] == 255).all()
        assert (maps[2] != 255).all()
    if profile.task == "scd":  # from-to codes follow the per-date classes
        c = profile.c_out
        changed = maps[2, 0] != maps[2, 1]
        assert (maps[2, 2][changed] == 1 + maps[2, 0][changed].astype(int) * c + maps[2, 1][changed]).all()
        assert (maps[2, 2][~changed] == 0).all()
    # TensorRT has no 16-bit integer tensors: the compatibility check says so for uint16 graphs
    problems = check_compat(tmp_path / "dn.onnx").problems
    assert any("UINT16" in p for p in problems) == (s.dtype == "uint16")
    with pytest.raises(InputError, match=s.dtype):
        engine.maps(dn.astype(np.float32))
