import numpy as np
import pytest

from stsun import load_profile

rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")
from stsun.data.synthetic import write_scene  # noqa: E402


def test_scene_geotiffs_are_georeferenced_and_round_trip(tmp_path):
    p = load_profile("sentinel2-bcd")
    files = write_scene(p, tmp_path, size=300, seed=2, nodata_stripes=1)
    assert [f.name for f in files["dates"]] == ["date1.tif", "date2.tif"]
    with rasterio.open(files["dates"][0]) as src:
        assert src.crs.to_epsg() == 32633 and src.res == (10.0, 10.0)
        assert src.count == 10 and src.descriptions == p.band_names and src.dtypes[0] == "uint16"
        dn = src.read()
        valid = src.dataset_mask() > 0
    with rasterio.open(files["labels"][0]) as lab:
        labels = lab.read(1)
    # nodata pixels in the image are exactly the label's nodata
    assert (~valid).any() and np.array_equal(~valid, labels == 255)
    refl = dn[:, valid] * p.scaling.scale + p.scaling.offset
    assert 0.0 < np.median(refl) < 0.6
