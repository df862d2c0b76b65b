"""The build: profile + checkpoint -> folded model -> ONNX -> TensorRT, each artifact checked
against the eager model and recorded in ``build_report.json``.

It sits on top of the pipeline: it exports with ``stsun.export`` and validates every artifact
by running it with the backend that will serve it (``stsun.runtime``), as a user would. The
steps are small methods of ``ArtifactBuild``, run in order over one validated ``BuildOptions``
that is written into the report.

With ``data`` (``--data``) the user's own imagery replaces generated tiles everywhere a build
looks at pixels (``stsun.app.user_tiles``): int8 calibration, BatchNorm calibration and the held-out
tiles every artifact is judged on, with the task metric gated where the data is labelled.
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.markup import escape

import stsun
from stsun.app.user_tiles import UserTiles, draw_user_tiles
from stsun.atomic import atomic_write
from stsun.build_report import FORMAT, REPORT_NAME, BuildReport
from stsun.data.synthetic import synthetic_tiles
from stsun.digest import file_sha256
from stsun.errors import BuildError, CheckpointError
from stsun.export.fidelity import FidelityTiles, fidelity
from stsun.export.onnx_export import CALIBRATION_METHODS, DERIVED_ONNX, export_fp32, model_metadata, quantize_int8
from stsun.export.plugin_artifacts import run_with_reference, write_kernels
from stsun.export.trt.compat import check_compat
from stsun.export.trt.plan import build_plan
from stsun.kernels.contract import PLUGIN_NAME
from stsun.model import Metadata
from stsun.model.checkpoint import DEMO_CHECKPOINT, load_model, resolve_checkpoint, save_checkpoint
from stsun.precision import ONNX_PRECISIONS
from stsun.profiles import Profile
from stsun.runtime import EagerEngine, FoldedEngine, OnnxRuntimeEngine, TensorRTEngine
from stsun.runtime.backends import BACKENDS
from stsun.training.train import calibrate_batchnorm, calibrate_task_statistics

ATTENTION = ("tensorrt", "plugin")  # how LGWA attention reaches TensorRT (see BuildOptions)
PLUGIN_CHECK_TILES = 1  # onnx's reference evaluator is pure numpy: seconds per tile
FIDELITY_SEED, CALIBRATION_SEED = 20260101, 7  # held-out tiles differ from calibration tiles


class BuildOptions(BaseModel):
    """What to build. ``attention="tensorrt"`` exports attention as MatMul/Softmax for TensorRT to
    fuse; ``"plugin"`` also exports ``model.<p>.plugin.onnx`` with one ``stsun::WindowAttention``
    node per LGWA attention, writes the fused kernel's PTX for sm_80/sm_90, and builds the
    TensorRT engines from those graphs with the plugin (``stsun.export.trt.plugin``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path | None = None          # default: the demo checkpoint (or random init for its size)
    size: Literal["tiny", "base", "large"] | None = None
    precisions: tuple[str, ...] = ONNX_PRECISIONS
    max_batch: int = Field(8, ge=1)
    fidelity_tiles: int = Field(4, ge=1)     # held-out 256 px two-date tiles' worth of pixels
    calibration_tiles: int = Field(16, ge=1)  # int8 calibration
    calibrate_bn: bool = False              # recalibrate the task's BatchNorm statistics on this profile
    data: tuple[Path, ...] = ()             # the user's imagery (see stsun.app.user_tiles); () = generated tiles
    data_seed: int = 0                      # which of the user's tiles are drawn
    # int8 activation-range calibrators tried on the held-out tiles, the best kept; default all
    # of them with data, MinMax on generated tiles
    calibration_methods: tuple[str, ...] | None = None
    cpp: bool = False                       # also an AOTInductor package for C++ services
    attention: str = "tensorrt"

    @field_validator("precisions")
    @classmethod
    def _known_precisions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in value if p not in ONNX_PRECISIONS]
        if unknown or not value:
            raise ValueError(f"unknown precision {unknown}; choose from {', '.join(ONNX_PRECISIONS)}")
        return value

    @field_validator("calibration_methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or set(value) - set(CALIBRATION_METHODS)):
            raise ValueError(f"unknown calibration method in {list(value)}; "
                             f"choose from {', '.join(CALIBRATION_METHODS)}")
        return value

    @property
    def methods(self) -> tuple[str, ...]:
        return self.calibration_methods or (CALIBRATION_METHODS if self.data else ("MinMax",))

    @field_validator("attention")
    @classmethod
    def _known_attention(cls, value: str) -> str:
        if value not in ATTENTION:
            raise ValueError(f"unknown attention mode {value!r}; choose from {', '.join(ATTENTION)}")
        return value

    @model_validator(mode="after")
    def _plugin_precisions(self) -> "BuildOptions":
        if self.attention == "plugin" and "int8" in self.precisions:
            raise ValueError("the attention plugin path has fp32 and fp16 engines only; drop int8 or use "
                             "--attention tensorrt")
        return self

    @classmethod
    def parse(cls, **options) -> "BuildOptions":
        """Validated options, or a BuildError naming the option and what is wrong."""
        try:
            return cls(**options)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: "
                                 f"{e['msg'].removeprefix('Value error, ')}"
                                 for e in err.errors())
            raise BuildError(f"invalid build options: {problems}") from None


class ArtifactBuild:
    """One build in progress: the state every step reads, and the report they fill."""

    def __init__(self, profile: Profile, out: Path, options: BuildOptions, console: Console) -> None:
        self.profile, self.out, self.options, self.console = profile, out, options, console
        self.report: dict = {}
        self.onnx: dict[str, Path] = {}     # precision -> ONNX the TensorRT plans are built from
        self.user: UserTiles | None = None

    def run(self) -> dict:
        self.previous = self._previous_artifacts()
        for step in (self.data_step, self.model_step, self.reference_step, self.folded_step, self.onnx_step,
                     self.plugin_step,
                     self.aoti_step, self.tensorrt_step):
            step()
        self.report["passed"] = all(a["fidelity"]["gate"]["passed"] for a in self.report["artifacts"])
        BuildReport.model_validate(self.report)  # what BuildDir will read back: a bug here fails the build, not a user
        atomic_write(self.out / REPORT_NAME, lambda tmp: tmp.write_text(json.dumps(self.report, indent=2) + "\n"))
        return self.report

    def _previous_artifacts(self) -> dict[str, dict]:
        """The earlier build in ``out``, when it had the same options (``--cpp`` aside) and profile:
        its artifacts by name, each reused when the checkpoint and the tiles (``--data``) are
        also the same and its file is unchanged: adding ``--cpp`` to a build compiles the
        package, not everything again."""
        try:
            old = json.loads((self.out / REPORT_NAME).read_text())
            same = {k: v for k, v in old["options"].items() if k != "cpp"} == \
                {k: v for k, v in json.loads(self.options.model_dump_json()).items() if k != "cpp"}
            if same and old["profile"] == json.loads(self.profile.model_dump_json()):
                return old
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return {}

    def reused(self, name: str) -> bool:
        """Record ``name`` as the earlier build made it, when it can be (see _previous_artifacts)."""
        old = self.previous
        entry = next((a for a in old.get("artifacts", []) if a["name"] == name), None)
        if not entry or not entry["path"] or old["checkpoint"]["sha256"] != self.sha or \
                old.get("data") != self.report.get("data"):
            return False
        path = self.out / entry["path"]
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            return False
        if name == "onnx-int8" and "int8_calibration" in old:  # how it was calibrated, as then
            self.report["int8_calibration"] = old["int8_calibration"]
        self.report["artifacts"].append({**entry, "reused": True})
        self.console.print(f"  {name:<14} kept from the earlier build (same checkpoint, options and file)")
        return True

    def record(self, name: str, kind: str, precision: str, path: Path | None, seconds: float, outputs: np.ndarray,
               **extra) -> dict:
        """Add one artifact, judged against the eager reference, to the report."""
        entry = {"name": name, "format": kind, "precision": precision,
                 "path": path.name if path else None, "bytes": path.stat().st_size if path else None,
                 "sha256": file_sha256(path) if path else None,  # verified whenever a backend loads it
                 "build_seconds": round(seconds, 2),
                 "fidelity": fidelity(outputs, self.ref[:len(outputs)], precision, self.tiles), **extra}
        self.report["artifacts"].append(entry)
        f = entry["fidelity"]
        mark = "[green]ok[/]" if f["gate"]["passed"] else "[red]FAILED[/]"
        metric = f"  {f['metric']['name']} {f['metric']['artifact']:.4f} ({f['metric']['delta_points']:+.2f} pt)" \
            if "metric" in f else ""
        self.console.print(f"  {name:<14} agreement {f['argmax_agreement']:.6f}  worst class "
                           f"{f['worst_class_agreement']:.4f}  max|err| {f['max_abs_err']:.2e}{metric}  {mark}")
        if not f["gate"]["passed"]:
            self.console.print(f"    {escape(f['gate']['reason'])}")
        return entry

    def _heldout_count(self) -> int:
        p = self.profile
        # The same pixel budget as `fidelity_tiles` two-date 256 px tiles, at least one tile.
        return max(1, self.options.fidelity_tiles * 2 * 256 ** 2 // (p.t_in * p.tile_size ** 2))

    def data_step(self) -> None:
        """The user's calibration and held-out tiles, when the build has ``data``."""
        o = self.options
        if not o.data:
            return
        self.user = draw_user_tiles(o.data, self.profile, o.calibration_tiles, self._heldout_count(), o.data_seed)
        r = self.user.record
        self.console.print(f"data: {escape(r['data'])} ({escape(r['kind'])}): {r['calibration']['tiles']} "
                           f"calibration and {r['heldout']['tiles']} held-out tiles from {r['images']} images"
                           f"{', labelled' if r['labelled'] else ''}")

    def model_step(self) -> None:
        """Load the checkpoint (recalibrated if asked) and keep the exact weights in the build."""
        o, profile = self.options, self.profile
        self.out.mkdir(parents=True, exist_ok=True)
        size = o.size or (None if o.checkpoint else profile.model_size)
        resolved = resolve_checkpoint(o.checkpoint, size)
        self.model = load_model(resolved, size=size)
        source = "random init (seed 0)" if resolved is None else (
            "demo checkpoint" if resolved == DEMO_CHECKPOINT else str(resolved))
        if resolved is None:
            self.console.print(f"[yellow]warning:[/] no checkpoint given and no demo checkpoint for size "
                               f"'{self.model.config.size}': building from randomly initialised weights")
        if o.calibrate_bn and self.user:  # the task's statistics from the user's calibration tiles
            if self.model.config.variant == "research":
                raise CheckpointError("a research-variant model has no per-task BatchNorm statistics to calibrate")
            x, meta = self.user.calibration.x, Metadata.from_profile(profile)
            calibrate_task_statistics(self.model, profile.task, ((x[i:i + 4], meta) for i in range(0, len(x), 4)))
            self.model.eval()
            source += f", BatchNorm statistics recalibrated on {len(x)} calibration tiles of {self.user.source}"
        elif o.calibrate_bn:  # a sensor the checkpoint was not calibrated for: its task's statistics from this profile
            calibrate_batchnorm(self.model, [profile])
            self.model.eval()
            source += f", BatchNorm statistics recalibrated on generated {profile.name} tiles"
        ckpt = save_checkpoint(self.model, self.out / "checkpoint")
        self.sha = file_sha256(ckpt)
        self.report = {
            "format": FORMAT, "profile": json.loads(profile.model_dump_json()), "model_size": self.model.config.size,
            "checkpoint": {"source": source, "file": ckpt.name, "sha256": self.sha},
            "options": json.loads(o.model_dump_json()),
            "stsun_version": stsun.__version__, "torch_version": torch.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.machine(), "max_batch": o.max_batch, "attention": o.attention,
            "data": self.user.record if self.user else {"data": "generated",
                                                        "calibration": {"tiles": o.calibration_tiles,
                                                                        "seed": CALIBRATION_SEED}},
            "artifacts": [],
        }
        self.meta = model_metadata(profile, {"checkpoint_sha256": self.sha, "stsun_version": stsun.__version__,
                                             "model_size": self.model.config.size, "max_batch": o.max_batch})
        self.console.print(f"[bold]{profile.name}[/]: {self.model.config.size} model from {escape(source)} -> "
                           f"{escape(str(self.out))}")

    def reference_step(self) -> None:
        """Held-out tiles and the eager model's logits for them, which every artifact must match."""
        p = self.profile
        if self.user:
            self.x = self.user.heldout.x
            self.tiles = FidelityTiles(p, self.user.source, self.user.heldout.target)
        else:
            self.x, _ = synthetic_tiles(p, self._heldout_count(), seed=FIDELITY_SEED)
            self.tiles = FidelityTiles(p)
        self.ref = EagerEngine(self.model, p, self.options.max_batch)(self.x)

    def folded_step(self) -> None:
        t = time.perf_counter()
        self.folded = FoldedEngine(self.model, self.profile, self.options.max_batch)
        self.record("folded", "torch", "fp32", None, time.perf_counter() - t, self.folded(self.x))

    def _calibration(self) -> np.ndarray:
        if self.user:
            return self.user.calibration.x
        return synthetic_tiles(self.profile, self.options.calibration_tiles, seed=CALIBRATION_SEED)[0]

    def _export(self, precision: str, path: Path, plugin: bool = False) -> float:
        """Write one ONNX: fp32 traced, the others derived from the fp32 one written just before
        (``_fp32_first``); the TensorRT plans are built from the last ones written. Returns seconds."""
        t = time.perf_counter()
        if precision == "fp32":
            export_fp32(self.folded.module, self.profile, path, self.meta, attention_plugin=plugin)
        elif precision == "int8":
            self._int8(path)
        else:
            DERIVED_ONNX[precision](self.onnx["fp32"], path, self._calibration)
        self.onnx[precision] = path
        return time.perf_counter() - t

    def _int8(self, path: Path) -> None:
        """Quantise with each calibration method, judge each on the held-out tiles and keep the
        best: on labelled data the highest task metric, then the mean of overall and worst-class
        argmax agreement (the worst class decides as much as the mean)."""
        methods, tiles = self.options.methods, self._calibration()
        tried: dict[str, dict] = {}
        candidates: dict[str, Path] = {}
        for method in methods:
            if len(methods) == 1:
                quantize_int8(self.onnx["fp32"], path, lambda: tiles, method=method)
                break
            candidates[method] = quantize_int8(self.onnx["fp32"], path.with_name(f"{path.stem}.{method}.onnx"),
                                               lambda: tiles, method=method)
            engine = OnnxRuntimeEngine(candidates[method], self.profile, self.options.max_batch,
                                       providers=["CPUExecutionProvider"])
            f = fidelity(engine(self.x), self.ref, "int8", self.tiles)
            tried[method] = {"argmax_agreement": f["argmax_agreement"],
                             "worst_class_agreement": f["worst_class_agreement"],
                             "score": (f["argmax_agreement"] + f["worst_class_agreement"]) / 2,
                             **({"metric": f["metric"]["artifact"]} if "metric" in f else {})}
        best = max(tried, key=lambda m: (tried[m].get("metric", 0.0), tried[m]["score"])) if tried else methods[0]
        for method, candidate in candidates.items():
            if method == best:
                candidate.replace(path)
            else:
                candidate.unlink()
        self.report["int8_calibration"] = {"method": best, "tiles": len(tiles), "data": self.tiles.data,
                                           "candidates": tried}

    @staticmethod
    def _fp32_first(precisions: tuple[str, ...]) -> list[str]:
        return ["fp32", *[p for p in precisions if p != "fp32"]]  # every other ONNX derives from fp32

    def onnx_step(self) -> None:
        for precision in self._fp32_first(self.options.precisions):
            path = self.out / f"model.{precision}.onnx"
            if self.reused(f"onnx-{precision}"):
                self.onnx[precision] = path
                continue
            self.console.print(f"  onnx-{precision:<9} exporting ...")
            seconds = self._export(precision, path)
            engine = OnnxRuntimeEngine(path, self.profile, self.options.max_batch, providers=["CPUExecutionProvider"])
            compat = check_compat(path).to_dict()
            self.record(f"onnx-{precision}", "onnx", precision, path, seconds, engine(self.x), tensorrt_compat=compat)
            if not compat["compatible"]:
                self.console.print(f"  [yellow]not TensorRT-compatible:[/] {escape('; '.join(compat['problems'][:2]))}")

    def plugin_step(self) -> None:
        """Plugin ONNX per precision, checked on the CPU with the reference attention in place of
        the plugin, plus the kernels' PTX; the TensorRT plans are then built from these graphs."""
        if self.options.attention != "plugin":
            return
        x = self.x[:PLUGIN_CHECK_TILES]
        for precision in self._fp32_first(self.options.precisions):
            path = self.out / f"model.{precision}.plugin.onnx"
            seconds = self._export(precision, path, plugin=True)
            compat = check_compat(path, plugin_ops=(PLUGIN_NAME,)).to_dict()
            self.record(f"onnx-{precision}-plugin", "onnx", precision, path, seconds, run_with_reference(path, x),
                        tensorrt_compat=compat, checked_with="onnx reference evaluator, PyTorch reference attention "
                                                             f"for {PLUGIN_NAME}, {len(x)} tile(s)")
        t = time.perf_counter()
        # TensorRT engines are strongly typed: fp32 kernels for the fp32 graph, fp16 for the fp16 one
        kernels = write_kernels([self.onnx[p] for p in self._fp32_first(self.options.precisions)], self.out / "kernels")
        worst = max(k["ptxas"]["spill_bytes"] for k in kernels)
        self.report["attention_plugin"] = {"kernels": kernels, "seconds": round(time.perf_counter() - t, 2)}
        self.console.print(f"  kernels        {len(kernels)} PTX (sm_80, sm_90a) assembled by ptxas, "
                           f"max spill {worst} B")

    def aoti_step(self) -> None:
        """AOTInductor package for C++ services (runtime/cpp)."""
        if not self.options.cpp or self.reused("aoti-fp32"):
            return
        self.console.print("  aoti-fp32      compiling the AOTInductor package (about a minute on 2 cores) ...")
        from torch._inductor import aoti_load_package

        from stsun.export.aoti_export import export_aoti

        mb = self.options.max_batch
        t = time.perf_counter()
        pt2 = export_aoti(self.folded.module, self.profile, self.out / "model.fp32.pt2", mb,
                          {"checkpoint_sha256": self.sha, "stsun_version": stsun.__version__})
        seconds = time.perf_counter() - t
        runner = aoti_load_package(str(pt2))
        with torch.no_grad():
            outputs = np.concatenate([runner(torch.from_numpy(self.x[i:i + mb])).numpy()
                                      for i in range(0, len(self.x), mb)])
        self.record("aoti-fp32", "aoti", "fp32", pt2, seconds, outputs)

    def tensorrt_step(self) -> None:
        trt = BACKENDS["tensorrt"]
        reason = trt.unavailable_reason()
        self.report["tensorrt"] = {"built": reason is None, "reason": reason}
        if reason:
            self.console.print(f"  [yellow]TensorRT engine skipped:[/] {escape(reason)}", soft_wrap=True)
            return
        if "int8" in self.options.precisions:
            self._tensorrt_calibration_cache()
        suffix = "-plugin" if self.options.attention == "plugin" else ""
        for precision in self.options.precisions:
            compat = next(a["tensorrt_compat"] for a in self.report["artifacts"]
                          if a["name"] == f"onnx-{precision}{suffix}")
            if precision not in trt.precisions or not compat["compatible"]:
                why = "; ".join(compat["problems"][:2]) or f"the {trt.name} backend runs {', '.join(trt.precisions)}"
                self.report["tensorrt"].setdefault("skipped", {})[precision] = why
                continue
            plan = self.out / f"model.{precision}.plan"
            if self.reused(f"tensorrt-{precision}"):
                continue
            mb = self.options.max_batch
            info = build_plan(self.onnx[precision], plan, self.profile, precision, mb, self.out / "timing.cache")
            engine = TensorRTEngine(plan, self.profile, mb)
            self.record(f"tensorrt-{precision}", "tensorrt", precision, plan, info.pop("build_seconds"),
                        engine(self.x), engine_info=info)

    def _tensorrt_calibration_cache(self) -> None:
        """TensorRT's own int8 scales for the fp32 graph, calibrated on the same tiles as the
        int8 ONNX (``stsun.export.trt.calibration``; TensorRT 10 only)."""
        from stsun.export.trt.calibration import calibrator_unavailable, write_calibration_cache

        if reason := calibrator_unavailable():
            self.report["tensorrt"]["int8_calibration_cache"] = {"written": False, "reason": reason}
            return
        info = write_calibration_cache(self.onnx["fp32"], self.out / "model.int8.calibration.cache",
                                       self._calibration(), self.profile, self.options.max_batch)
        self.report["tensorrt"]["int8_calibration_cache"] = {"written": True, "data": self.tiles.data, **info}


def build_artifacts(profile: Profile, out: Path, console: Console | None = None, **options) -> dict:
    """Build every artifact ``options`` (see BuildOptions) asks for into ``out``; returns the
    report also written to ``out/build_report.json``. Raises BuildError for invalid options."""
    return ArtifactBuild(profile, Path(out), BuildOptions.parse(**options), console or Console(stderr=True)).run()


__all__ = ["ArtifactBuild", "BuildOptions", "build_artifacts"]
