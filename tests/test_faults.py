"""Expected failures as an operator meets them: the real `stsun` command in a subprocess, each
fault one line on stderr, exit 2, no traceback, nothing written (SIGTERM: exit 143, no
temporary file left)."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")

from stsun import load_profile  # noqa: E402
from stsun.app.pipeline import build_artifacts  # noqa: E402
from stsun.data.synthetic import write_scene  # noqa: E402

STSUN = [sys.executable, "-c", "from stsun.app.cli import main; main()"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    profile = load_profile("sentinel2-scd")
    build_artifacts(profile, root / "build", precisions=("fp32",), max_batch=4, fidelity_tiles=1)
    dates = write_scene(profile, root / "scene", size=300, seed=21)["dates"]
    return root, dates


def run(args, **kwargs):
    return subprocess.run(STSUN + [str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)


def one_line(res, *fragments, gdal_noise=False):
    lines = [line for line in res.stderr.splitlines() if line.strip() and "tile/s]" not in line]  # not progress
    if gdal_noise:  # libtiff prints its write errors itself, below anything Python can silence
        lines = [line for line in lines if not line.startswith("_tiff")]
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert all(f in lines[0] for f in fragments), lines[0]
    assert "error" not in res.stdout


def predict(root, dates, out, *extra, **kwargs):
    return run(["predict", *dates, "-o", out, "--engine", root / "build", *extra], **kwargs)


def test_bad_input_files(setup, tmp_path):
    root, dates = setup
    data = Path(dates[1]).read_bytes()
    (tmp_path / "truncated.tif").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "notes.tif").write_text("this is not a raster\n")
    (tmp_path / "emptydir").mkdir()
    out = tmp_path / "out.tif"
    for bad, fragment in (("truncated.tif", "truncated or damaged"), ("empty.tif", "the file is empty"),
                          ("notes.tif", "not a raster GDAL can read"),
                          ("emptydir", "no file for the profile's band(s) B2")):
        one_line(predict(root, [dates[0], tmp_path / bad], out), bad, fragment)
    assert not list(tmp_path.glob("*out.tif*"))


def test_truncated_mid_scene(setup, tmp_path):
    """The header reads, a block in the middle does not: found while reading, reported as such."""
    root, dates = setup
    scene = write_scene(load_profile("sentinel2-scd"), tmp_path / "big", size=900, seed=22)["dates"]
    data = bytearray(Path(scene[1]).read_bytes())
    with rasterio.open(scene[1]) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_2", "TIFF", bidx=1))
    data[offset:offset + 4096] = os.urandom(4096)  # garbage in a deflate block of the third block row
    Path(scene[1]).write_bytes(bytes(data))
    one_line(predict(root, scene, tmp_path / "out.tif"), "date2.tif", "truncated or damaged")
    assert not list(tmp_path.glob("*out.tif*"))


def test_unwritable_outputs(setup, tmp_path):
    root, dates = setup
    one_line(predict(root, dates, "/proc/stsun-map.tif"), "writing /proc/stsun-map.tif failed")
    one_line(predict(root, dates, dates[0]), "would overwrite the input")
    one_line(predict(root, dates, tmp_path), "is a directory")


def test_file_size_limit(setup, tmp_path):
    """A file-size limit (as a full disk would) stops the write: the cause is named, not buried in
    GDAL warnings, and no partial file stays."""
    root, dates = setup

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    res = predict(root, dates, tmp_path / "out.tif", "--probabilities", preexec_fn=limit)
    one_line(res, "file-size limit (60000 bytes)", gdal_noise=True)
    assert not list(tmp_path.glob("*out*"))


def test_malformed_build_and_checkpoint(setup, tmp_path):
    root, dates = setup
    build = tmp_path / "build"
    shutil.copytree(root / "build", build)
    report = json.loads((build / "build_report.json").read_text())
    (build / "build_report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "max_batch"}))
    one_line(run(["predict", *dates, "-o", tmp_path / "o.tif", "--engine", build]), "'max_batch' is missing")
    (build / "build_report.json").write_text(json.dumps([report]))
    one_line(run(["predict", *dates, "-o", tmp_path / "o.tif", "--engine", build]), "holds a list")
    from safetensors.torch import load_file, save_file

    state = load_file(str(root / "build" / "checkpoint.safetensors"))
    name = next(k for k in state if k.endswith("qkv.weight"))
    state[name] = state[name][:, :-1].contiguous()
    save_file(state, str(tmp_path / "bad.safetensors"))
    shutil.copy(root / "build" / "checkpoint.json", tmp_path / "bad.json")
    one_line(run(["calibrate-bn", "--checkpoint", tmp_path / "bad.safetensors", "--out", tmp_path / "c.safetensors"]),
             "mis-shaped", name)


def test_sigterm_mid_scene_leaves_no_temporary_file(setup, tmp_path):
    root, _ = setup
    scene = write_scene(load_profile("sentinel2-scd"), tmp_path / "big", size=1600, seed=23)["dates"]
    out = tmp_path / "out" / "map.tif"
    proc = subprocess.Popen(STSUN + ["predict", *map(str, scene), "-o", str(out), "--engine", str(root / "build")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(out.parent.glob(".map.tif.*")):
        time.sleep(0.2)  # wait until the run has created its temporary files
    assert any(out.parent.glob(".map.tif.*")), "the run never started writing"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(out.parent.iterdir()) == []
