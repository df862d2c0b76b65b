from __future__ import annotations

import importlib.util
import os
import random
from typing import TYPE_CHECKING

import pytest

# The runtime install has no torch: there only the tests marked `lean` run (tests/test_lean.py).
if importlib.util.find_spec("torch") is not None:
    import torch

    # Without a GPU, Triton kernels run under the CPU interpreter. It must be chosen before any test
    # module imports a kernel (@triton.jit decides at definition), so it is set here, not per file.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

if TYPE_CHECKING:
    from stsun.model import STSUN


def random_model(size: str = "tiny", seed: int = 0) -> STSUN:
    """A seeded random model whose BatchNorm statistics are not the identity, so that
    folding them into convolutions is really exercised."""
    from stsun.model import STSUN, model_config
    from stsun.model.norm import TaskBatchNorm2d

    torch.manual_seed(seed)
    model = STSUN(model_config(size))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TaskBatchNorm2d):
                m.task_mean.uniform_(-0.5, 0.5)
                m.task_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> STSUN:
    return random_model("tiny")


@pytest.fixture(scope="session")
def scd_build(tmp_path_factory):
    """The default profile's fp32 build (max batch 4), made once per test process: CI runs most
    files in one process, so the files that only read it share it. Never write into it."""
    from stsun import load_profile
    from stsun.app.pipeline import build_artifacts

    out = tmp_path_factory.mktemp("scd-build") / "build"
    build_artifacts(load_profile("sentinel2-scd"), out, precisions=("fp32",), max_batch=4, fidelity_tiles=1)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``STSUN_TEST_SHUFFLE=SEED`` runs the test files in a seeded random order (the tests inside a
    file keep theirs). ``.ci/test`` sets it, so over many CI runs no file can come to depend on
    another having run before it; the seed it prints replays an order."""
    seed = os.environ.get("STSUN_TEST_SHUFFLE")
    if not seed:
        return
    files = list(dict.fromkeys(item.path for item in items))
    random.Random(seed).shuffle(files)
    rank = {path: i for i, path in enumerate(files)}
    items.sort(key=lambda item: rank[item.path])
