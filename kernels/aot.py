"""Ahead-of-time build of the window-attention kernel to PTX, for the TensorRT plugin.

Runs without a GPU: triton compiles for any CUDA target and its bundled ptxas assembles the
result, so the PTX a TensorRT engine will embed is produced and checked on the CPU machines.

What the plugin needs from a Triton kernel, and how this module provides it:
- TensorRT launches AOT plugin kernels as (input pointers, int32 scalars, output pointers).
  The kernel's parameters are declared in that order; ``qk_scale`` (a float, which TensorRT's
  int-only extra arguments cannot carry) becomes a compile-time constant.
- Triton appends two hidden scratch-pointer parameters that TensorRT knows nothing about. This
  kernel needs no scratch memory, so they are removed from the entry point, after checking
  that the body never reads them.
- Pointers carry a 16-byte divisibility hint (TensorRT allocations are 256-byte aligned).
  Without it every load compiles to a scalar 2-byte access and nothing is pipelined.
- Shared memory stays within the 48 KiB a block gets without an opt-in attribute, which an AOT
  plugin's launch parameters cannot request; fewer pipeline stages are used if needed.
- PTX ISA 8.0 (CUDA 12.0) is requested, the lowest with sm_90a's wgmma, so any CUDA 12+ driver
  can JIT the PTX regardless of which (newer) ptxas the installed triton bundles.
- Compilation runs in a child process with a clean Triton configuration. With
  ``TRITON_INTERPRET=1`` (tests and CPU smoke runs set it) triton checks the interpreter switch
  inside its code generator and patches ``triton.language`` while interpreted kernels run, so an
  in-process compile depends on what the caller did before; a child does not. One child
  compiles a whole batch (``compile_many``), and results are cached per process.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from stsun.errors import AotError
from stsun.precision import KERNEL_PRECISIONS

from .contract import AttentionSpec
from .window_kernel import LOG2E, Launch, _window_attention_fwd

SHARED_LIMIT = 48 * 1024
PTX_ISA = 80
ARCHS = (80, 90)  # sm_80 (A100) and sm_90a (H100/H200); any other >= 80 compiles on request


def launch_of(spec: AttentionSpec) -> Launch:
    return Launch.of((spec.grid_h, spec.grid_w), (spec.win_h, spec.win_w), spec.num_heads, spec.head_dim)


@dataclass(frozen=True)
class AotKernel:
    spec: AttentionSpec
    arch: int
    name: str
    ptx: str
    num_warps: int
    num_stages: int
    shared: int
    grid_x: int  # the y extent is batch * num_heads, known only at run time
    scalars: tuple[int, ...]  # the int32 arguments between the input and output pointers

    def report(self) -> dict:
        return {"spec": asdict(self.spec), "arch": self.arch, "name": self.name, "num_warps": self.num_warps,
                "num_stages": self.num_stages, "shared_bytes": self.shared, "ptx_isa": ptx_isa(self.ptx)}


def ptx_isa(ptx: str) -> str:
    return re.search(r"^\.version\s+(\S+)", ptx, re.M).group(1)


_ENTRY = re.compile(r"\.entry\s+\w+\s*\(([^)]*)\)")


def _param_list(ptx: str) -> tuple[re.Match, list[str]]:
    """The kernel entry's match and its parameter declarations."""
    entry = _ENTRY.search(ptx)
    return entry, [p for p in entry.group(1).split(",") if p.strip()]


def entry_params(ptx: str) -> list[tuple[str, str]]:
    """(type, name) of each parameter of the PTX's kernel entry."""
    return [(re.search(r"\.param\s+\.(\w+)", p).group(1), p.split()[-1]) for p in _param_list(ptx)[1]]


def _drop_scratch_params(ptx: str, n_keep: int) -> str:
    entry, params = _param_list(ptx)
    body = ptx[entry.end(1):]
    for p in params[n_keep:]:
        if p.split()[-1] in body:
            raise AotError(f"the kernel reads its scratch parameter {p.split()[-1]}; TensorRT cannot pass it")
    return ptx[:entry.start(1)] + ",".join(params[:n_keep]) + "\n" + body


def _check(spec: AttentionSpec, arch: int) -> None:
    if spec.dtype not in KERNEL_PRECISIONS:
        raise AotError(f"dtype must be one of {KERNEL_PRECISIONS}, got {spec.dtype!r}")
    if arch < 80:
        raise AotError(f"sm_{arch} is not supported: the kernel needs sm_80 or newer")
    if not 16 <= spec.head_dim <= 128:
        raise AotError(f"the fused attention kernel needs heads 16 to 128 wide, this model's are {spec.head_dim}: "
                       f"build with --attention tensorrt")


def _compile_here(spec: AttentionSpec, arch: int) -> AotKernel:
    """Compile in this process; only correct where TRITON_INTERPRET is off (the child below)."""
    _check(spec, arch)
    launch = launch_of(spec)
    fn = _window_attention_fwd
    names = fn.arg_names
    constants = {"qk_scale": spec.scale * LOG2E, **launch.constexprs()}
    signature = {n: "constexpr" if n in constants else ("i32" if n not in ("qkv_ptr", "out_ptr") else f"*{spec.dtype}")
                 for n in names}
    attrs = {(names.index(p),): [["tt.divisibility", 16]] for p in ("qkv_ptr", "out_ptr")}
    src = ASTSource(fn, signature, constexprs=constants, attrs=attrs)
    for stages in (3, 2, 1):
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_stages": stages, "ptx_version": PTX_ISA})
        if compiled.metadata.shared <= SHARED_LIMIT:
            break
    else:
        raise AotError(f"{spec.tag} needs {compiled.metadata.shared} bytes of shared memory even with 1 stage")
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise AotError(f"{spec.tag}: the compiled kernel needs scratch memory, which TensorRT cannot provide")
    scalars = launch.scalars()
    ptx = _drop_scratch_params(compiled.asm["ptx"], 2 + len(scalars))
    expected = ["u64"] + ["u32"] * len(scalars) + ["u64"]
    if [t for t, _ in entry_params(ptx)] != expected:
        raise AotError(f"{spec.tag}: unexpected kernel parameters {entry_params(ptx)}; TensorRT passes {expected}")
    return AotKernel(spec, arch, meta.name, ptx, meta.num_warps, stages, meta.shared, launch.programs_per_head, scalars)


_CACHE: dict[tuple[AttentionSpec, int], AotKernel] = {}


def compile_many(requests: Iterable[tuple[AttentionSpec, int]]) -> list[AotKernel]:
    """PTX for each (spec, compute capability) request, compiled together in one clean child
    process (see the module docstring); cached, so asking again costs nothing."""
    requests = list(requests)
    for spec, arch in requests:
        _check(spec, arch)
    missing = list(dict.fromkeys(r for r in requests if r not in _CACHE))
    if missing:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        payload = json.dumps([[asdict(spec), arch] for spec, arch in missing])
        res = subprocess.run([sys.executable, "-m", __name__], input=payload, capture_output=True, text=True, env=env)
        try:
            answer = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise AotError(f"the ahead-of-time kernel build failed (exit {res.returncode}): "
                           f"{res.stderr.strip()[-2000:]}") from None
        if "error" in answer:
            raise AotError(answer["error"])
        for (spec, arch), k in zip(missing, answer["kernels"]):
            _CACHE[spec, arch] = AotKernel(**{**k, "spec": spec, "scalars": tuple(k["scalars"])})
    return [_CACHE[r] for r in requests]


def compile_ptx(spec: AttentionSpec, arch: int) -> AotKernel:
    """PTX of the kernel specialised for ``spec`` on compute capability ``arch`` (80 = sm_80, ...)."""
    return compile_many([(spec, arch)])[0]


def _serve_child() -> None:
    """The child's side of ``compile_many``: requests as JSON on stdin, kernels (or the first
    AotError) as one JSON line on stdout."""
    try:
        kernels = [_compile_here(AttentionSpec(**spec), arch) for spec, arch in json.load(sys.stdin)]
        answer = {"kernels": [{**asdict(k), "spec": None} for k in kernels]}
    except AotError as e:
        answer = {"error": str(e)}
    print(json.dumps(answer))


def ptxas_path() -> Path:
    """The ptxas that ships inside the triton wheel (no CUDA toolkit needed)."""
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not path.is_file():
        raise AotError(f"triton's bundled ptxas is missing at {path}")
    return path


def assemble(kernel: AotKernel) -> dict:
    """Assemble the PTX to a cubin with ptxas: proves the edited PTX is valid for its target, and
    reports registers and spills (spills would mean the block sizes are too large)."""
    target = re.search(r"^\.target\s+(\w+)", kernel.ptx, re.M).group(1)  # sm_90a on Hopper (wgmma)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(kernel.ptx)
        res = subprocess.run([str(ptxas_path()), "-v", f"-arch={target}", str(src), "-o", str(out)],
                             capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        if res.returncode:
            raise AotError(f"ptxas rejected the {kernel.spec.tag} PTX for {target}: {res.stderr.strip()}")
        cubin_bytes = out.stat().st_size
    log = res.stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return {"target": target, "cubin_bytes": cubin_bytes, "registers": registers, "spill_bytes": sum(spills)}


__all__ = ["ARCHS", "AotError", "AotKernel", "AttentionSpec", "assemble", "compile_many", "compile_ptx", "entry_params",
           "launch_of", "ptx_isa"]

if __name__ == "__main__":
    _serve_child()
