import json

import pytest
from typer.testing import CliRunner

from stsun.app.cli import app
from stsun.profiles import ProfileError, builtin_profile_names, load_profile

REQUIRED = {"sentinel2-scd", "sentinel2-bcd", "sentinel2-ss", "landsat8-ss", "whu-ss", "whu-cd-scd",
            "levir-cd-bcd", "tscd-bcd", "loveda-ss", "dynamicearthnet-scd"}


def test_builtin_profiles_present_and_consistent():
    assert REQUIRED <= set(builtin_profile_names())
    s2 = load_profile("sentinel2-scd")
    assert (s2.task, s2.c_in, s2.t_in, s2.t_out, s2.gsd_m, s2.tile_size) == ("scd", 10, 2, 2, 10.0, 256)
    assert s2.classes == ("impervious surface", "agriculture", "forest and other vegetation",
                          "wetlands", "soil", "water")
    assert s2.scaling.scale == pytest.approx(1e-4)
    # Paper Table I configurations (T_in, T_out, C_in, C_out, size, GSD)
    table = {"whu-ss": (1, 1, 3, 1, 512, 0.3), "whu-cd-scd": (2, 2, 3, 1, 1024, 0.075),
             "levir-cd-bcd": (2, 1, 3, 1, 1024, 0.5), "tscd-bcd": (4, 3, 3, 1, 256, 0.5),
             "loveda-ss": (1, 1, 3, 7, 1024, 0.3), "dynamicearthnet-scd": (24, 24, 4, 6, 1024, 3.0)}
    for name, row in table.items():
        p = load_profile(name)
        assert (p.t_in, p.t_out, p.c_in, p.c_out, p.tile_size, p.gsd_m) == row, name


def write(tmp_path, text):
    f = tmp_path / "custom.toml"
    f.write_text(text)
    return f


GOOD = """
name = "my-sensor-bcd"
sensor = "custom"
task = "bcd"
gsd_m = 2.0
tile_size = 512
t_in = 3
classes = ["change"]
[[bands]]
name = "red"
wavelength_nm = 650
[[bands]]
name = "nir"
wavelength_nm = 840
"""


def test_user_profile_file(tmp_path):
    p = load_profile(write(tmp_path, GOOD))
    assert (p.t_out, p.c_in, p.patch, p.dates_days) == (2, 2, 2, (0.0, 365.0, 730.0))


@pytest.mark.parametrize("edit, field", [
    (("gsd_m = 2.0", "gsd_m = -2.0"), "gsd_m"),
    (("wavelength_nm = 840", "wavelength_nm = -40"), "bands.1.wavelength_nm"),
    (("classes = [\"change\"]", "classes = [\"change\"]\nrgb_bands = [\"red\", \"nir\", \"blue\"]"), "rgb_bands"),
    (("task = \"bcd\"", "task = \"detect\""), "task"),
    (("tile_size = 512", "tile_size = 300"), "tile_size must be a multiple of 256"),
    (("t_in = 3", "t_in = 3\nt_out = 3"), "t_out must be 2"),
    (("t_in = 3", "t_in = 3\ndates_days = [0, 10]"), "dates_days must have t_in=3"),
    (("t_in = 3", "t_in = 3\ncolour = 1"), "colour"),
])
def test_bad_profile_names_the_field(tmp_path, edit, field):
    with pytest.raises(ProfileError, match=field.replace(".", r"\.")):
        load_profile(write(tmp_path, GOOD.replace(*edit)))


def test_unknown_profile_lists_builtins():
    with pytest.raises(ProfileError, match="sentinel2-scd"):
        load_profile("sentinel3-xyz")


def test_cli_profiles_json(tmp_path):
    res = CliRunner().invoke(app, ["profiles", "--json", "--file", str(write(tmp_path, GOOD))])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert REQUIRED | {"my-sensor-bcd"} <= set(rows)
    r = rows["sentinel2-scd"]
    assert set(r) >= {"name", "task", "bands", "gsd", "tile_size", "t_in", "t_out", "classes"}
    assert (r["task"], len(r["bands"]), r["gsd"], r["t_out"], len(r["classes"])) == ("scd", 10, 10.0, 2, 6)


def test_cli_profiles_bad_file_exit_code(tmp_path):
    res = CliRunner().invoke(app, ["profiles", "--file", str(write(tmp_path, GOOD.replace("gsd_m = 2.0", "")))])
    assert res.exit_code == 2 and "gsd_m" in res.output


def test_sensor_facts_live_in_the_profile(tmp_path):
    """A radar band is a band like any other (no optical-only wavelength limit); the RGB preview
    bands and the DN offset are profile fields."""
    sar = GOOD.replace('name = "nir"\nwavelength_nm = 840', 'name = "VV"\nwavelength_nm = 55465763')
    p = load_profile(write(tmp_path, sar))
    assert p.wavelengths_nm == (650.0, 55465763.0) and p.rgb_bands is None and p.scaling.dn_offset == 0.0
    s2 = load_profile("sentinel2-scd")
    assert s2.rgb_bands == ("B4", "B3", "B2") and load_profile("whu-ss").rgb_bands == ("red", "green", "blue")


def test_cli_profiles_fit_80_columns():
    res = CliRunner().invoke(app, ["profiles"], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    text = " ".join(line.strip() for line in lines)
    for name in builtin_profile_names():  # every name and every class name whole, none cut short
        assert name in text
        assert all(c in text for c in load_profile(name).classes)
