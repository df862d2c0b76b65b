"""stsun/app/outputs.py and the result Item's place, without a store: which files go up, under
which keys, in which order, and what is refused before any compute (uploads recorded, not made)."""
import json
import os
import stat

import pytest

from stsun.app import outputs
from stsun.app.catalogue import check_item_path, write_collection
from stsun.errors import SceneError
from stsun.runtime.scene import check_output


@pytest.fixture
def uploads(monkeypatch):
    done = []
    monkeypatch.setattr(outputs, "upload", lambda path, url: done.append((path.name, url)))
    return done


def touch(folder, *names):
    for name in names:
        (folder / name).write_text(name)


def test_a_job_goes_up_map_first_record_last_and_never_takes_another_jobs_files(tmp_path, uploads):
    touch(tmp_path, "a.tif", "a.job.json", "a.json", "a.png", "a.b.tif", "a.b.json", "a.b.job.json")
    outputs.publish_job(tmp_path / "a.tif", "s3://bucket/run/")
    assert [name for name, _ in uploads] == ["a.tif", "a.png", "a.json", "a.job.json"]
    assert [url for _, url in uploads] == [f"s3://bucket/run/{n}" for n in ("a.tif", "a.png", "a.json", "a.job.json")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.b.job.json", "a.b.json", "a.b.tif"]


@pytest.mark.parametrize("key", ["x.tiff", "x.TIF", "x.tif"])
def test_sibling_keys_share_the_maps_base_name_whatever_its_suffix(tmp_path, uploads, key):
    touch(tmp_path, "map.tif", "map.json", "map.probs.tif")
    urls = outputs.publish(tmp_path / "map.tif", f"s3://bucket/out/{key}")
    assert urls == [f"s3://bucket/out/{key}", "s3://bucket/out/x.probs.tif", "s3://bucket/out/x.json"]


def test_a_stores_staging_folder_is_private_and_a_planted_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs.tempfile, "gettempdir", lambda: str(tmp_path))
    local, url = outputs.local_dir("s3://bucket/run")
    assert url == "s3://bucket/run/" and local.is_dir()
    for folder in (local, local.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert outputs.local_dir("s3://bucket/run/")[0] == local  # every run of this host: the same folder
    os.chmod(local, 0o777)  # as another user's planted folder would be
    with pytest.raises(SceneError, match="not a private folder"):
        outputs.local_dir("s3://bucket/run/")


def test_the_result_item_never_overwrites_an_input_or_a_users_file(tmp_path):
    (tmp_path / "date1.json").write_text(json.dumps({"type": "Feature", "properties": {}}))
    with pytest.raises(SceneError, match="would overwrite the input"):
        check_output(tmp_path / "date1.tif", [tmp_path / "date1.json"])
    with pytest.raises(SceneError, match="not a result Item of stsun's"):
        check_item_path(tmp_path / "date1.tif")
    (tmp_path / "old.json").write_text(json.dumps({"type": "Feature", "properties": {"stsun:version": "0"}}))
    assert check_item_path(tmp_path / "old.tif") == tmp_path / "old.json"  # a previous result: replaced


def test_a_corrupt_item_is_left_out_of_the_catalogue_with_a_warning(tmp_path):
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "a", "geometry": None, "links": [], "assets": {},
            "properties": {"datetime": "2024-06-01T00:00:00Z"}}
    (tmp_path / "a.json").write_text(json.dumps(item))
    (tmp_path / "b.json").write_text("{truncated")
    (tmp_path / "c.json").write_text(json.dumps({"type": "Collection"}))
    with pytest.warns(UserWarning) as caught:
        path = write_collection(tmp_path, None, ["a", "b", "c"])
    assert sorted(str(w.message).split(":")[0].rsplit("/", 1)[-1] for w in caught) == ["b.json", "c.json"]
    assert [f["id"] for f in json.loads(path.read_text())["features"]] == ["a"]
