"""The one-way architecture, checked by reading the source (no imports run):

    core < kernels < model < export < runtime < app (CLI, build pipeline, predict-many, benchmarks)

A module may import its own layer and the layers below it, never one above. Run alone with
``python -m pytest -q tests/test_architecture.py`` (the import walk itself reads the source with
``ast`` and imports nothing of the project).
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it is installed as (pyproject.toml's package-dir).
PACKAGES = {"stsun": "stsun", "export": "stsun.export", "runtime": "stsun.runtime", "kernels": "stsun.kernels",
            "benchmarks": "benchmarks"}
# Bottom to top, by folder: a module belongs to the layer of its folder (the longest matching
# package). Modules directly in ``stsun/`` are the core; entry scripts are listed by name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("stsun", "stsun.profiles")),
    ("kernels", ("stsun.kernels",)),
    ("model", ("stsun.model", "stsun.data", "stsun.training")),
    ("export", ("stsun.export",)),
    ("runtime", ("stsun.runtime",)),
    ("app", ("stsun.app", "stsun.export.build_engine", "stsun.__main__", "benchmarks")),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str | None:
    """The layer of the longest listed package holding ``module``; ``stsun`` itself holds only the
    modules directly in it, so a new subpackage has no layer until it is listed here."""
    best, best_len = None, -1
    for name, prefixes in LAYERS:
        for p in prefixes:
            inside = module.startswith(p + ".") and (p != "stsun" or module.count(".") == 1)
            if (module == p or inside) and len(p) > best_len:
                best, best_len = name, len(p)
    return best


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(module: str, path: Path, lazy: bool = True) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file; with ``lazy=False`` only those that
    run when the module is imported (its top-level statements)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.append((node.lineno, target))
            # `from pkg import sub` may import a submodule: judge it by the submodule's layer
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_imports_point_down_the_pipeline():
    known = modules()
    upward = []
    for module, path in known.items():
        mine = RANK[layer_of(module)]
        for line, target in imports(module, path):
            if not target.startswith(("stsun", "benchmarks")):
                continue
            theirs = layer_of(target)
            if theirs is not None and RANK[theirs] > mine:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({layer_of(module)}) imports {target} ({theirs})")
    assert upward == []


def import_graph() -> dict[str, list[str]]:
    """Module -> the project modules it imports at import time. Importing one's own parent
    package is left out: Python has already started it (that is not a circle)."""
    known = modules()
    return {m: sorted({t for _, t in imports(m, p, lazy=False)
                       if t in known and t != m and not m.startswith(t + ".")}) for m, p in known.items()}


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in graph[m]:
            if state.get(t) == "open":
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_circle():
    assert cycles(import_graph()) == []
    # the check is not vacuous
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]


def test_import_stsun_loads_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, stsun, stsun.runtime; "
                          "print(sorted(m for m in ('torch', 'onnx', 'triton') if m in sys.modules))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The walker is not vacuous: a model module importing the runtime is flagged."""
    bad = tmp_path / "lgwa.py"
    bad.write_text("from stsun.runtime import load_engine\n\ndef f():\n    from ..export import onnx_export\n")
    found = [(t, layer_of(t)) for _, t in imports("stsun.model.lgwa", bad)]
    assert ("stsun.runtime", "runtime") in found and ("stsun.export.onnx_export", "export") in found
    assert RANK["runtime"] > RANK[layer_of("stsun.model.lgwa")]


def test_tensorrt_has_one_home():
    """Only stsun.export.trt imports tensorrt or pycuda."""
    users = {str(path.relative_to(ROOT)) for module, path in modules().items()
             if any(t.split(".")[0] in ("tensorrt", "pycuda") for _, t in imports(module, path))}
    assert users and all(u.startswith("export/trt/") for u in users), users


def test_capability_tables_agree():
    """Backends and precisions are each one table; everything else reads them."""
    from stsun.export.onnx_export import DERIVED_ONNX
    from stsun.precision import KERNEL_PRECISIONS, ONNX_PRECISIONS, PRECISIONS
    from stsun.runtime.backends import BACKENDS

    assert all(set(b.precisions) <= set(PRECISIONS) for b in BACKENDS.values())
    assert set(DERIVED_ONNX) == set(ONNX_PRECISIONS) - {"fp32"}  # every ONNX precision can be produced
    assert set(KERNEL_PRECISIONS) == {"fp32", "fp16", "bf16"}
    assert BACKENDS["eager"].unavailable_reason() is None


@pytest.mark.parametrize("command", [["predict", "--help"], ["predict-many", "--help"]])
def test_cli_help_lists_every_backend(command):
    from stsun.app.cli import app
    from stsun.runtime.backends import BACKENDS

    res = CliRunner().invoke(app, command, terminal_width=200)
    assert res.exit_code == 0 and all(name in res.output for name in BACKENDS)
