import json

import pytest
import torch

from stsun import Metadata, load_model, load_profile, save_checkpoint
from stsun.model.checkpoint import CheckpointError, load_checkpoint


def test_checkpoint_round_trip(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "m")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    cfg = json.loads(path.with_suffix(".json").read_text())["config"]
    assert cfg["size"] == "tiny" and "water" in cfg["class_vocabulary"] and cfg["tasks"] == ["ss", "bcd", "scd"]
    loaded = load_model(path)
    meta = Metadata.from_profile(load_profile("sentinel2-bcd"))
    x = torch.rand(1, 2, 10, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, meta), tiny_model(x, meta), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp")), "temporary files left behind"


def test_random_model_is_seeded():
    a, b = load_model(checkpoint=None, size="base", seed=7), load_model(checkpoint=None, size="base", seed=7)
    assert a.config.size == "base"
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


def test_truncated_checkpoint_and_wrong_size(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "m")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read as safetensors"):
        load_checkpoint(path)
    good = save_checkpoint(tiny_model, tmp_path / "good")
    with pytest.raises(CheckpointError, match="holds a 'tiny' model, not 'large'"):
        load_model(good, size="large")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
