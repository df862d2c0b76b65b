"""`stsun demo -o DIR`: inputs for every journey, each readable by the command it prints."""
import shlex

import pytest
from typer.testing import CliRunner

pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")

from stsun.app.cli import app  # noqa: E402
from stsun.app.manifest import read_manifest  # noqa: E402
from stsun.data.datasets import open_dataset  # noqa: E402
from stsun.profiles import load_profile  # noqa: E402
from stsun.runtime.scene_inputs import native_grid, resolve_date  # noqa: E402


def test_demo_writes_inputs_the_printed_commands_read(tmp_path):
    res = CliRunner().invoke(app, ["demo", "-o", str(tmp_path / "d"), "--size", "256"])
    assert res.exit_code == 0, res.output
    commands = [shlex.split(line) for line in res.output.splitlines() if line.startswith("  stsun ")]
    assert [c[1] for c in commands] == ["predict", "predict", "predict", "predict-many", "train", "evaluate"]
    s2 = load_profile("sentinel2-scd")
    grids = []
    for c in commands[:3]:  # the scene, the SAFE products (offset from their metadata), the STAC items
        dates = [resolve_date(p, s2) for p in c[2:4]]
        assert all(d.kind in ("multi-band raster", "Sentinel-2 SAFE product", "STAC item") for d in dates)
        grids.append(native_grid(dates[0], s2))
    assert {d.dn_offset for d in resolve_date(commands[1][2], s2).bands} == {-1000.0}
    assert grids[0] == grids[1] == grids[2]
    jobs = read_manifest(commands[3][2], 2, tmp_path / "items")
    assert [j.id for j in jobs.jobs] == ["33UUP_20230601_20240601"]
    train = dict(zip(commands[4][2::2], commands[4][3::2]))
    levir = open_dataset(train["--data"], load_profile(train["--profile"]))
    assert levir.profile.tile_size == 256 and levir.profile.task == "bcd" and len(levir.samples()) == 10
