"""The research variant against outputs of the authors' own code (tests/data/research/README.md
says how they were produced): the imported model, the folded model and the fp32 ONNX must
reproduce them, and the importer must account for every tensor."""
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from stsun import STSUN, InputError, Metadata, load_checkpoint, load_profile, save_checkpoint
from stsun.app.cli import app
from stsun.app.pipeline import build_artifacts
from stsun.errors import CheckpointError
from stsun.export.onnx_export import export_fp32, model_metadata
from stsun.model.folding import fold
from stsun.model.research_import import UNREAD, convert, infer_config, read_state_dict
from stsun.runtime import OnnxRuntimeEngine, load_engine
from stsun.training.train import calibrate_batchnorm

DATA = Path(__file__).parent / "data" / "research"
PROFILES = {"whu": "whu-ss", "levircd": "levir-cd-bcd", "tscd": "tscd-bcd", "whucd": "whu-cd-scd"}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def authors():
    return load_file(str(DATA / "authors_state_dict.safetensors")), np.load(DATA / "authors_outputs.npz")


@pytest.fixture(scope="module")
def imported(authors):
    state, _ = authors
    return convert(state, infer_config(state))


def case(outputs, dataset):
    """(input tile batch, sampled flat indices into their (B, T_out, H, W, C) output, their values)."""
    x = torch.from_numpy(outputs[f"{dataset}_input_uint8"]).float() / 255.0
    return x, torch.from_numpy(outputs[f"{dataset}_output_index"]), torch.from_numpy(outputs[f"{dataset}_output_value"])


def max_error(ours, idx, theirs) -> float:
    ours = torch.as_tensor(ours).permute(0, 1, 3, 4, 2).reshape(-1)  # ours is (B, T_out, C, H, W)
    return float((ours[idx] - theirs).abs().max())


def test_inferred_config(imported):
    cfg = imported.config
    assert (cfg.variant, cfg.embed_dim, cfg.num_heads, cfg.enc_depth, cfg.dec_depth) == ("research", 32, 16, 4, 4)
    assert (cfg.unified_dim, cfg.unified_grid, cfg.temporal_dim, cfg.mlp_ratio) == (8, 128, 4, 4.0)


@pytest.mark.parametrize("dataset", list(PROFILES))
def test_imported_and_folded_reproduce_the_authors_outputs(authors, imported, dataset):
    _, outputs = authors
    x, idx, theirs = case(outputs, dataset)
    profile = load_profile(PROFILES[dataset])
    assert tuple(outputs[f"{dataset}_output_shape"]) == (len(x), profile.t_out, profile.tile_size, profile.tile_size,
                                                         profile.c_out)
    with torch.no_grad():
        eager = imported(x, Metadata.from_profile(profile))
        folded = fold(imported, profile)(x)
    assert float(theirs.std()) > 0.05  # logits of a size the tolerance is small against
    assert max_error(eager, idx, theirs) <= TOLERANCE
    assert max_error(folded, idx, theirs) <= TOLERANCE


@pytest.mark.parametrize("dataset", ["whu", "levircd"])
def test_fp32_onnx_reproduces_the_authors_outputs(authors, imported, dataset, tmp_path):
    _, outputs = authors
    x, idx, theirs = case(outputs, dataset)
    profile = load_profile(PROFILES[dataset])
    path = export_fp32(fold(imported, profile), profile, tmp_path / "model.fp32.onnx", model_metadata(profile, {}))
    engine = OnnxRuntimeEngine(path, profile, providers=["CPUExecutionProvider"])
    assert max_error(engine(x.numpy()), idx, theirs) <= TOLERANCE


def test_imported_ckpt_builds_and_runs_scenes(authors, tmp_path):
    """stsun import-research on a Lightning .ckpt, then the build (fold, ONNX, fidelity) for the
    tscd profile: its ONNX reproduces the authors' outputs and runs a whole scene."""
    state, outputs = authors
    ckpt = tmp_path / "epoch=99.ckpt"  # Lightning's layout; keys as a wrapping module saves them
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 99, "global_step": 1000,
                "pytorch-lightning_version": "2.2.0", "optimizer_states": [], "lr_schedulers": []}, ckpt)
    ours = tmp_path / "tscd.safetensors"
    result = CliRunner().invoke(app, ["import-research", str(ckpt), "--dataset", "tscd", "--out", str(ours)])
    assert result.exit_code == 0, result.output
    assert "--profile tscd-bcd --checkpoint" in result.output
    research = json.loads(ours.with_suffix(".json").read_text())["research"]
    assert {k: research[k] for k in ("dataset", "task_index", "t_in", "t_out", "classes", "tile_size", "profile")} == \
        {"dataset": "tscd", "task_index": 3, "t_in": 4, "t_out": 3, "classes": 1, "tile_size": 256,
         "profile": "tscd-bcd"}
    assert research["dropped_unread_tensors"] == list(UNREAD) and research["heads"] == 16

    profile = load_profile("tscd-bcd")
    report = build_artifacts(profile, tmp_path / "build", checkpoint=ours, precisions=("fp32",), max_batch=2,
                             fidelity_tiles=1)
    assert report["passed"] and report["model_size"] == "research"
    engine = load_engine(tmp_path / "build", backend="onnxruntime")
    x, idx, theirs = case(outputs, "tscd")
    assert max_error(engine(x.numpy()), idx, theirs) <= TOLERANCE

    rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")
    from stsun.data.synthetic import write_scene
    from stsun.runtime.scene import SceneOptions, predict_scene

    files = write_scene(profile, tmp_path / "scene", size=320, seed=1)  # two tiles per axis, blended
    out = predict_scene(engine, files["dates"], tmp_path / "change.tif", SceneOptions(progress=False))
    with rasterio.open(out) as src:
        assert (src.count, src.width, src.height) == (3, 320, 320)  # a change map per adjacent pair


def test_the_fixture_sees_each_difference(authors, imported):
    """Negative controls: the paper variant's choice in place of the authors' moves the outputs
    far beyond the tolerance, so the equivalence above is not a weak check."""
    _, outputs = authors
    x, idx, theirs = case(outputs, "tscd")
    meta = Metadata.from_profile(load_profile("tscd-bcd"))
    windowed = [b.attn for b in (*imported.encoder, *imported.decoder) if b.attn.window_hw is not None]
    for name, module, attr, paper, research in [
        ("transposed input SSUM weight", [imported.input_dum], "in_weight", "transpose", "view"),
        ("transposed TUM weight", [imported.tum_in], "in_weight", "transpose", "view"),
        ("masked window padding", windowed, "pad_tokens", False, True),
    ]:
        for m in module:
            setattr(m, attr, paper)
        try:
            with torch.no_grad():
                assert max_error(imported(x, meta), idx, theirs) > 10 * TOLERANCE, name
        finally:
            for m in module:
                setattr(m, attr, research)


def mutate(state, tmp_path, edit):
    state = dict(state)
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return CliRunner().invoke(app, ["import-research", str(path), "--dataset", "whu", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("decoder.blocks.2.attn.proj.weight"), "missing: decoder.blocks.2.attn.proj.weight"),
    (lambda s: s.update({"decoder.extra_head.weight": torch.zeros(2)}), "unused: decoder.extra_head.weight"),
    (lambda s: s.update({"encoder.blocks.1.mlp.fc2.bias": torch.zeros(31)}),
     "mis-shaped: encoder.blocks.1.mlp.fc2.bias (31,) (expected (32,))"),
    (lambda s: s.pop("encoder.pos_embed"), "missing tensor encoder.pos_embed"),
])
def test_importer_names_missing_unused_and_misshaped_tensors(authors, tmp_path, edit, message):
    result = mutate(authors[0], tmp_path, edit)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.json").exists()


def test_importer_refuses_pickled_objects_unless_trusted(authors, tmp_path):
    path = tmp_path / "with-objects.ckpt"
    torch.save({"state_dict": authors[0], "hyper_parameters": {"norm_layer": functools.partial(max, 0)}}, path)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        read_state_dict(path)
    assert read_state_dict(path, trust_pickle=True).keys() == authors[0].keys()


def test_heads_must_divide_the_width(authors):
    with pytest.raises(CheckpointError, match="not divisible by 12 heads"):
        infer_config(authors[0], heads=12)


def test_profile_must_fit_the_authors_dataset(imported):
    whu = Metadata.from_profile(load_profile("whu-ss"))
    with pytest.raises(InputError, match="has no research_dataset"):
        imported(torch.rand(1, 1, 3, 512, 512), dataclasses.replace(whu, research_dataset=None))
    with pytest.raises(InputError, match="unknown research_dataset 'loveda'"):
        imported.generate(dataclasses.replace(whu, research_dataset="loveda"))
    with pytest.raises(InputError, match=r"t_in 1 \(needs 2\).*tile_size 512 \(needs 1024\)"):
        imported.generate(dataclasses.replace(whu, research_dataset="levircd"))


def test_research_checkpoint_round_trip_and_no_batchnorm_calibration(imported, tmp_path):
    path = save_checkpoint(imported, tmp_path / "r")
    loaded, _ = load_checkpoint(path)
    assert loaded.config == imported.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), imported.state_dict().values()))
    with pytest.raises(CheckpointError, match="research-variant"):
        calibrate_batchnorm(loaded, [load_profile("whu-ss")])


def test_decoder_continues_the_authors_window_schedule(imported):
    """Their blocks are numbered encoder-first in one sequence: with 3 + 3 blocks the decoder
    starts at the global block, not at a 32 x 8 window."""
    model = STSUN(dataclasses.replace(imported.config, enc_depth=3, dec_depth=3))
    assert [b.attn.window_hw for b in model.encoder] == [(32, 8), (16, 16), (8, 32)]
    assert [b.attn.window_hw for b in model.decoder] == [None, (32, 8), (16, 16)]
    assert all(b.attn.pad_tokens and isinstance(b.local[0], torch.nn.BatchNorm2d) for b in model.decoder)
