"""The committed ``triton_repo/`` is what `stsun triton-repo` writes from the default build today
(it went stale once: following the README rewrote four tracked files)."""
from pathlib import Path

from stsun import load_profile
from stsun.app.pipeline import build_artifacts
from stsun.runtime.serving.repository import ServingConfig, write_triton_repo

COMMITTED = Path(__file__).resolve().parents[1] / "triton_repo"


def test_committed_repository_equals_the_default_build(tmp_path):
    """`build_engine.py --profile sentinel2-scd` (fp32 is all the repository serves; the fidelity
    check's tile count does not change the artifact), then `stsun triton-repo --intra-op-threads 1`,
    byte for byte."""
    build_artifacts(load_profile("sentinel2-scd"), tmp_path / "build", precisions=("fp32",), fidelity_tiles=1)
    write_triton_repo(tmp_path / "build", tmp_path / "repo", serving=ServingConfig(intra_op_threads=1))
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "repo") == files(COMMITTED)
    stale = [str(f) for f in files(COMMITTED) if (COMMITTED / f).read_bytes() != (tmp_path / "repo" / f).read_bytes()]
    assert not stale, ("regenerate: stsun triton-repo build/sentinel2-scd --repo triton_repo "
                       f"--intra-op-threads 1 ({stale})")
