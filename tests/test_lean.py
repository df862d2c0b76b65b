"""The runtime install (issue 28): running a finished build imports nothing of the build extra.

Tests marked ``lean`` need only the runtime (numpy, onnxruntime, rasterio). In the full install
they run each command in a fresh interpreter with the build extra's modules blocked; .ci/run also
runs them in a second environment made with the lean install, where ``import torch`` must fail.
They run a build directory: ``STSUN_LEAN_BUILD`` names one (CI builds it with the full
environment), else one is built here (which needs the build extra). .ci/run also compares the
maps the two installs write for one scene byte for byte.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.lean

BUILD_MODULES = ("torch", "onnx", "onnxscript", "safetensors", "triton")
# Every module on the runtime path, with the extra (beyond the default install) it needs.
RUNTIME_MODULES = {
    "stsun": None, "stsun.errors": None, "stsun.precision": None, "stsun.profiles": None,
    "stsun.runtime": None, "stsun.runtime.engine": None, "stsun.runtime.backends.ort": None,
    "stsun.runtime.backends.trt": None, "stsun.runtime.backends.triton_client": None,
    "stsun.runtime.scene": None, "stsun.runtime.scene_inputs": None, "stsun.training.evaluate": None,
    "stsun.app.cli": None, "stsun.app.manifest": None, "stsun.app.user_tiles": None,
    "stsun.app.many": "distributed",
    "stsun.runtime.serving.server": None, "stsun.runtime.serving.repository": "onnx",  # the serve extra brings onnx
    "stsun.runtime.serving.supervisor": "tritonclient", "stsun.runtime.serving.guard": "aiohttp",
}
FULL = importlib.util.find_spec("torch") is not None


def python(code: str, *, block: tuple[str, ...] = BUILD_MODULES) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the ``block`` modules blocked: importing a module
    mapped to None raises ModuleNotFoundError, as in an environment without it."""
    code = f"import sys\nfor m in {block!r}: sys.modules[m] = None\n" + code
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def stsun(*args: str, block: tuple[str, ...] = BUILD_MODULES) -> subprocess.CompletedProcess:
    return python(f"sys.argv = ['stsun', *{list(args)!r}]\nfrom stsun.app.cli import main\nmain()", block=block)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    if os.environ.get("STSUN_LEAN_BUILD"):
        return Path(os.environ["STSUN_LEAN_BUILD"])
    if not FULL:
        pytest.skip("no build: set STSUN_LEAN_BUILD to a build directory made with the full install")
    from stsun.app.pipeline import build_artifacts
    from stsun.profiles import load_profile

    out = tmp_path_factory.mktemp("lean") / "build"
    build_artifacts(load_profile("sentinel2-scd"), out, precisions=("fp32",), max_batch=2)
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> list[Path]:
    from stsun.data.synthetic import write_scene
    from stsun.profiles import load_profile

    return write_scene(load_profile("sentinel2-scd"), tmp_path_factory.mktemp("scene"), 160, seed=5)["dates"]


def test_torch_is_absent_from_the_lean_install() -> None:
    if FULL:
        pytest.skip("the full install: the lean environment of .ci/run checks this")
    assert python("import torch", block=()).returncode != 0


@pytest.mark.parametrize("allowed", [(), ("onnx",)], ids=["runtime", "serve"])
def test_runtime_modules_import_without_the_build_extra(allowed: tuple[str, ...]) -> None:
    block = tuple(m for m in BUILD_MODULES if m not in allowed)
    names = [m for m, extra in RUNTIME_MODULES.items()
             if extra is None or (extra not in block and importlib.util.find_spec(extra))]
    assert len(names) >= 15
    done = python(f"for m in {names!r}: __import__(m)\n"
                  f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {block!r} and sys.modules[m]))",
                  block=block)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli_import_loads_no_torch() -> None:
    """Not blocked: importing the CLI and listing the backends must not load torch even where it is installed."""
    done = python("from stsun.app.cli import app\nfrom stsun.runtime.backends import BACKENDS\n"
                  "[b.unavailable_reason() for b in BACKENDS.values()]\nprint('torch' in sys.modules)", block=())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_torch_backends_name_the_build_extra() -> None:
    done = python("from stsun.runtime.backends import BACKENDS\n"
                  "print(BACKENDS['eager'].unavailable_reason(), BACKENDS['onnxruntime'].unavailable_reason())")
    assert done.stdout.strip() == "torch not installed (pip install 'stsun[build]') None", done.stderr


def test_predict_with_onnxruntime_and_eager_ends_in_one_line(build_dir: Path, scene: list[Path],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    done = stsun("predict", *map(str, scene), "-o", str(out), "--engine", str(build_dir), "--backend", "onnxruntime")
    assert done.returncode == 0, done.stderr
    import rasterio

    with rasterio.open(out) as src:
        maps = src.read()
        assert src.count == 3 and src.width == src.height == 160  # class per date, then from-to change
    assert maps[:2].max() < 6 and len(np.unique(maps[:2])) > 1  # sentinel2-scd has 6 classes
    if FULL:  # the same command with torch importable writes the same bytes
        again = stsun("predict", *map(str, scene), "-o", str(tmp_path / "full.tif"), "--engine", str(build_dir),
                      block=())
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "full.tif").read_bytes() == out.read_bytes()

    eager = stsun("predict", *map(str, scene), "-o", str(tmp_path / "eager.tif"), "--engine", str(build_dir),
                  "--backend", "eager")
    assert eager.returncode == 2
    assert eager.stderr.strip() == ("error: this needs the build extra (torch is not installed): "
                                    "pip install 'stsun[build]'")
    assert not (tmp_path / "eager.tif").exists()


def test_onnxruntime_cache_holds_the_optimized_graph_and_changes_no_output(build_dir: Path, tmp_path: Path) -> None:
    from stsun.data.synthetic import synthetic_tiles
    from stsun.runtime import load_engine

    plain = load_engine(build_dir)
    cached = load_engine(build_dir, cache=tmp_path)
    (graph,) = tmp_path.iterdir()
    assert graph.name.endswith(".onnx") and graph.stat().st_size > 0
    written = graph.stat().st_mtime_ns
    again = load_engine(build_dir, cache=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [graph.name] and graph.stat().st_mtime_ns == written
    x, _ = synthetic_tiles(plain.profile, 2, seed=1)
    assert np.array_equal(plain(x), cached(x)) and np.array_equal(plain(x), again(x))
