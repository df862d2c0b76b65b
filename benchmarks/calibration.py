"""int8 calibrated on generated tiles vs on the user's tiles, each judged on the user's held-out tiles.

python benchmarks/calibration.py [--pairs 12] [--steps 24] [--out benchmarks/results/calibration_cpu.json]

A LEVIR-style aerial change dataset from the project's generator (``stsun.data.demo``): the demo
checkpoint fine-tuned on ``--pairs`` pairs (as ``stsun train --data``), then the user's tiles drawn
as ``build --data`` draws them (``stsun.app.user_tiles``) from ``--pairs`` other pairs of the same
generator, never trained on. The fp32 ONNX is quantised with each of onnxruntime's calibrators on
(a) the build's generated calibration tiles (what a build without --data uses) and (b) the user's
calibration tiles; every variant is scored on the same held-out user tiles against the fp32 model:
argmax agreement, worst-class agreement, change F1 and its change from fp32.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer


def main(pairs: Annotated[int, typer.Option(min=4)] = 12, steps: Annotated[int, typer.Option(min=1)] = 24,
         calibration_tiles: int = 16, heldout_tiles: int = 12,
         out: Path = Path("benchmarks/results/calibration_cpu.json")) -> None:
    from stsun.app.pipeline import CALIBRATION_SEED, build_artifacts
    from stsun.app.user_tiles import draw_user_tiles
    from stsun.atomic import atomic_write
    from stsun.data.datasets import open_dataset
    from stsun.data.demo import aerial_bcd_profile, write_change_pairs
    from stsun.data.synthetic import synthetic_tiles
    from stsun.export.fidelity import FidelityTiles, fidelity
    from stsun.export.onnx_export import CALIBRATION_METHODS, quantize_int8
    from stsun.model.checkpoint import load_model
    from stsun.profiles import load_profile
    from stsun.runtime import EagerEngine, OnnxRuntimeEngine
    from stsun.training.finetune import FineTuneOptions, fine_tune

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        profile = load_profile(aerial_bcd_profile(work / "aerial-bcd.toml"))
        train = write_change_pairs(work / "train", pairs, size=512, seed=0)
        user = write_change_pairs(work / "user", pairs, size=512, seed=1)
        ckpt = work / "run" / "model.safetensors"
        t = time.perf_counter()
        record = fine_tune(open_dataset(train, profile), ckpt, progress=False,
                           options=FineTuneOptions(epochs=1, epoch_steps=steps, batch=2, lr=2e-3, val_fraction=0.25,
                                                   calibration_batches=4, eval_batch=4))
        train_seconds = time.perf_counter() - t
        build = work / "build"
        build_artifacts(profile, build, checkpoint=ckpt, precisions=("fp32",), fidelity_tiles=1)
        tiles = draw_user_tiles([user], profile, calibration_tiles, heldout_tiles, seed=0)
        model = load_model(ckpt)
        ref = EagerEngine(model, profile, 4)(tiles.heldout.x)
        judged_on = FidelityTiles(profile, "user held-out tiles", tiles.heldout.target)
        sources = {"generated": synthetic_tiles(profile, calibration_tiles, seed=CALIBRATION_SEED)[0],
                   "user": tiles.calibration.x}
        rows = []
        for source, x in sources.items():
            for method in CALIBRATION_METHODS:
                q = quantize_int8(build / "model.fp32.onnx", work / f"int8.{source}.{method}.onnx", lambda x=x: x,
                                  method=method)
                f = fidelity(OnnxRuntimeEngine(q, profile, 4, providers=["CPUExecutionProvider"])(tiles.heldout.x),
                             ref, "int8", judged_on)
                rows.append({"calibration_data": source, "method": method, "argmax_agreement": f["argmax_agreement"],
                             "per_class_agreement": f["per_class_agreement"],
                             "worst_class_agreement": f["worst_class_agreement"], "f1": f["metric"]["artifact"],
                             "f1_fp32": f["metric"]["fp32"], "delta_points": f["metric"]["delta_points"],
                             "gate_passed": f["gate"]["passed"]})
                print(f"{source:>9} {method:<10} agreement {f['argmax_agreement']:.4f} worst class "
                      f"{f['worst_class_agreement']:.4f} F1 {f['metric']['artifact']:.4f} "
                      f"({f['metric']['delta_points']:+.2f} pt)")
    result = {"command": f"python benchmarks/calibration.py --pairs {pairs} --steps {steps}", "profile": profile.name,
              "pairs": pairs, "pair_size": 512, "fine_tune": {"steps": record["steps_done"], "batch": 2,
                                                              "seconds": round(train_seconds, 1),
                                                              "validation_f1": record["final_metric"]},
              "user_tiles": tiles.record,
              "generated_calibration": {"tiles": calibration_tiles, "seed": CALIBRATION_SEED},
              "fp32_f1": rows[0]["f1_fp32"], "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
