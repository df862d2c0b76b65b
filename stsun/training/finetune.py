"""Fine-tune (or train from scratch) one STSUN on a user's labelled dataset for one profile.

The loop is the paper's recipe at small scale: BCE + Dice (``task_loss``), AdamW, flips and
transposes, a short warm-up then a cosine learning rate. Every epoch (a pass over the training
tiles' area, unless told otherwise) it scores the validation part with the task's metric and
keeps the best weights as the checkpoint ``OUT`` (written at once, so a killed run still leaves
one). Beside it go ``OUT.state.pt`` (last weights, optimizer, step, random-generator states: a
run continues from it with ``resume=True`` exactly as if it had not stopped), ``OUT.log.json``
and ``OUT.log.png`` (loss and validation metric per epoch). Ctrl-C stops at the end of the
current step; the run then finishes as if it had ended there. At the end the profile task's
BatchNorm statistics are calibrated on training crops (the other tasks' are left as they were),
the best weights are scored again and saved.

For SCD labels that mark pixels as unchanged without a class (SECOND's "no change"), the class
loss skips them and a second term asks the two dates' class probabilities to agree there.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stsun.atomic import atomic_write
from stsun.data.datasets import NO_CHANGE, Region, UserDataset, grid_tile_count, holdout, random_crops, whole
from stsun.display import progress_bar
from stsun.errors import CheckpointError, DatasetError
from stsun.model import STSUN, Metadata, ModelConfig, model_config
from stsun.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint, save_checkpoint
from stsun.training.evaluate import PRIMARY_METRIC, evaluate_data, model_predictor, primary_metric
from stsun.training.train import calibrate_task_statistics, task_loss

STATE_FORMAT = "stsun-finetune-state/1"


@dataclass(frozen=True)
class FineTuneOptions:
    epochs: int = 20
    epoch_steps: int | None = None     # default: the training tiles' area once, in batches
    batch: int = 4
    lr: float | None = None            # default: 1e-3 fine-tuning, 2e-3 from scratch
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.05
    val_fraction: float = 0.2          # held out when the data has no val split
    augment: bool = True
    seed: int = 0
    calibration_batches: int = 8
    eval_batch: int = 4
    time_limit_s: float | None = None  # stop (as with Ctrl-C) after this many seconds of this run
    device: str | None = None          # default: cuda when there is one


def paths(out: str | Path) -> dict[str, Path]:
    """The files a run writes for checkpoint ``out``."""
    ckpt = Path(out).with_suffix(".safetensors")
    return {"checkpoint": ckpt, "state": ckpt.with_suffix(".state.pt"), "log": ckpt.with_suffix(".log.json"),
            "plot": ckpt.with_suffix(".log.png")}


def with_classes(model: STSUN, classes: tuple[str, ...], seed: int = 0) -> STSUN:
    """``model`` with every class in ``classes`` in its vocabulary: a new class gets a new
    embedding row drawn like the trained rows (their mean and spread), for training to shape."""
    new = tuple(c for c in classes if c not in model.config.class_vocabulary)
    if not new:
        return model
    config = replace(model.config, class_vocabulary=model.config.class_vocabulary + new)
    grown = STSUN(config)
    state = model.state_dict()
    old = state.pop("class_embed.weight")
    grown.load_state_dict(state, strict=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        extra = old.mean(0) + old.std(0) * torch.randn(len(new), old.shape[1], generator=gen)
        grown.class_embed.weight.copy_(torch.cat([old, extra]))
    return grown.train(model.training)


def initial_model(init: str | Path | None, profile_classes: tuple[str, ...], size: str, seed: int) -> tuple[STSUN, str]:
    """The starting model and where it came from: a checkpoint (default the demo one), or
    ``"scratch"`` for a seeded random ``size`` model."""
    if init == "scratch":
        torch.manual_seed(seed)
        model, source = STSUN(model_config(size)), f"random init ({size}, seed {seed})"
    else:
        path = Path(init) if init is not None else DEMO_CHECKPOINT
        if init is None and not DEMO_CHECKPOINT.is_file():
            raise CheckpointError("no demo checkpoint in this install: pass a checkpoint, or train from scratch")
        model, _ = load_checkpoint(path)
        source = "demo checkpoint" if path == DEMO_CHECKPOINT else str(path)
    return with_classes(model, profile_classes, seed), source


def unchanged_agreement(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - sum_c p_t(c) p_t+1(c), averaged over pixels both adjacent dates mark NO_CHANGE:
    0 when the two dates' class probabilities agree with certainty."""
    both = (target[:, 1:] == NO_CHANGE) & (target[:, :-1] == NO_CHANGE)
    if not both.any():
        return logits.sum() * 0
    if logits.shape[2] == 1:
        p1 = torch.sigmoid(logits[:, :, 0])
        prob = torch.stack([1 - p1, p1], dim=2)
    else:
        prob = torch.softmax(logits, dim=2)
    same = (prob[:, 1:] * prob[:, :-1]).sum(dim=2)
    return (1 - same)[both].mean()


def learning_rate(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    warmup = max(1, int(total * warmup_fraction))
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


class StopRequest:
    """Ctrl-C asks the loop to stop after the current step (a second Ctrl-C interrupts at
    once). Only the main thread can take signals; elsewhere Ctrl-C arrives as KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this step (Ctrl-C again to stop at once)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def save_plot(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = log["epochs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title=log["profile"])
    scored = [e for e in epochs if e.get("metric") is not None]
    ax2.plot([e["epoch"] for e in scored], [e["metric"] for e in scored], marker="o", color="tab:green")
    if log.get("final_metric") is not None:
        ax2.plot([log["best_epoch"]], [log["final_metric"]], marker="*", markersize=12, linestyle="none",
                 color="tab:red", label="best, BatchNorm calibrated")
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set(xlabel="epoch", ylabel=f"validation {log['metric']}", title=f"best epoch {log.get('best_epoch')}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def _require_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DatasetError("training on a dataset writes a plot of its log, which needs matplotlib: "
                           "pip install 'stsun[train]'") from None


class FineTune:
    """One training run in progress; ``run()`` returns the training record saved with the checkpoint."""

    def __init__(self, dataset: UserDataset, out: str | Path, init: str | Path | None = None,
                 options: FineTuneOptions = FineTuneOptions(), resume: bool = False, size: str = "tiny",
                 progress: bool = True, log: Callable[[str], None] = tqdm.write) -> None:
        _require_plotting()
        self.data, self.profile, self.files = dataset, dataset.profile, paths(out)
        self.progress, self.say = progress, log
        self.meta = Metadata.from_profile(self.profile)
        state = self._load_state() if resume else None
        if state is None and self.files["state"].exists():
            raise DatasetError(f"{self.files['state']} exists from an earlier run: resume it (--resume), or delete "
                               "it to start again")
        if state is not None:
            options = FineTuneOptions(**{**state["options"], "epochs": options.epochs,
                                         "time_limit_s": options.time_limit_s, "device": options.device})
        self.options = options
        self.device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.train_regions, self.val_regions, self.val_how = holdout(dataset, options.val_fraction, options.seed)
        if state is not None:
            self.model = STSUN(ModelConfig.from_dict(state["config"]))
            self.model.load_state_dict(state["model"])
            self.source = state["source"]
        else:
            self.model, self.source = initial_model(init, self.profile.classes, size, options.seed)
        self.model.to(self.device).train()
        self.model.task_index(self.profile.task)  # a clear error now if the model lacks the task
        self.lr = options.lr or (2e-3 if init == "scratch" else 1e-3)  # resuming: the state's options give it
        self.epoch_steps = options.epoch_steps or max(1, math.ceil(
            grid_tile_count(dataset, self.train_regions) / options.batch))
        self.total = options.epochs * self.epoch_steps
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=options.weight_decay)
        self.rng = np.random.default_rng(options.seed)
        self.step, self.history, self.epochs = 0, [], []
        self.best: dict | None = None      # {"epoch", "step", "metric", "state"}
        self.train_seconds = 0.0
        self.stopped: str | None = None    # why the run ended before its last step
        if state is not None:
            self._restore(state)

    # -- state ----------------------------------------------------------------------------
    def _load_state(self) -> dict | None:
        path = self.files["state"]
        if not path.is_file():
            raise DatasetError(f"nothing to resume: {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several kinds for a damaged file
            raise CheckpointError(f"{path} is not a readable training state ({err})") from None
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a training state ({STATE_FORMAT})")
        if state["profile"] != json.loads(self.profile.model_dump_json()):
            raise DatasetError(f"{path} was trained for profile '{state['profile']['name']}', not this "
                               f"'{self.profile.name}' (or the profile changed)")
        return state

    def _restore(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step, self.history, self.epochs = state["step"], list(state["history"]), list(state["epochs"])
        self.train_seconds = state["train_seconds"]
        self.best = state["best"]

    def _save_state(self) -> None:
        state = {"format": STATE_FORMAT, "profile": json.loads(self.profile.model_dump_json()),
                 "options": asdict(replace(self.options, epoch_steps=self.epoch_steps, lr=self.lr)),
                 "config": self.model.config.to_dict(), "source": self.source,
                 "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                 "optimizer": self.opt.state_dict(), "numpy_rng": self.rng.bit_generator.state,
                 "torch_rng": torch.get_rng_state(), "step": self.step, "history": self.history,
                 "epochs": self.epochs, "train_seconds": self.train_seconds, "best": self.best}
        atomic_write(self.files["state"], lambda tmp: torch.save(state, tmp))

    # -- loop -----------------------------------------------------------------------------
    def _validate(self) -> dict | None:
        if not self.val_regions:
            return None
        self.model.eval()
        try:
            return evaluate_data({"model": model_predictor(self.model, self.profile)}, self.data, self.val_regions,
                                 batch=self.options.eval_batch, progress=False)
        finally:
            self.model.train()

    def _train_step(self) -> float:
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.step, self.total, self.lr, self.options.warmup_fraction)
        x, target = random_crops(self.data, self.train_regions, self.options.batch, self.rng, self.options.augment)
        x, target = torch.from_numpy(x).to(self.device), torch.from_numpy(target).to(self.device)
        logits = self.model(x, self.meta)
        loss = task_loss(logits, target)
        if self.profile.task == "scd":
            loss = loss + unchanged_agreement(logits, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return loss.item()

    def _end_epoch(self) -> None:
        epoch = self.step // self.epoch_steps
        losses = self.history[-self.epoch_steps:]
        report = self._validate()
        metric = primary_metric(self.profile.task, report["results"]["model"]) if report else None
        entry = {"epoch": epoch, "step": self.step, "loss": float(np.mean(losses)), "metric": metric,
                 "seconds": round(self.train_seconds, 1)}
        self.epochs.append(entry)
        if self.best is None or metric is None or metric > self.best["metric"]:
            self.best = {"epoch": epoch, "step": self.step, "metric": metric,
                         "state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
            save_checkpoint(self.model, self.files["checkpoint"], extra={"training": self.record(final=False)})
        label = PRIMARY_METRIC[self.profile.task][1]
        shown = f", validation {label} {metric:.4f}" if metric is not None else ""
        self.say(f"epoch {epoch}: loss {entry['loss']:.4f}{shown}" + (" (best)" if self.best["epoch"] == epoch else ""))
        self._save_state()

    def _steps(self, stop: StopRequest) -> Iterator[int]:
        started = time.perf_counter()
        while self.step < self.total and not stop.requested:
            if self.options.time_limit_s and time.perf_counter() - started > self.options.time_limit_s:
                self.stopped = f"time limit of {self.options.time_limit_s:g} s"
                return
            yield self.step

    def run(self) -> dict:
        self.say(self.data.describe())
        resumed = f"resuming at step {self.step}, " if self.step else ""
        self.say(f"training on {self.device} from {self.source}: {resumed}{self.total} steps ({self.options.epochs} "
                 f"epochs of {self.epoch_steps}) of {self.options.batch} tiles, lr {self.lr:g}; "
                 f"validation: {self.val_how}")
        if self.step >= self.total:
            self.say(f"already trained {self.step} steps: give more epochs to train further")
        bar = progress_bar(total=self.total, initial=self.step, desc="train", unit="step", show=self.progress)
        with StopRequest() as stop:
            try:
                for _ in self._steps(stop):
                    t0 = time.perf_counter()
                    loss = self._train_step()
                    self.train_seconds += time.perf_counter() - t0
                    self.history.append(loss)
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(self.history[-20:]):.3f}", epoch=self.step // self.epoch_steps)
                    if self.step % self.epoch_steps == 0:
                        self._end_epoch()
            except KeyboardInterrupt:
                self.stopped = "interrupted"
            if stop.requested:
                self.stopped = "Ctrl-C"
        bar.close()
        if self.stopped:
            self.say(f"stopped at step {self.step} of {self.total} ({self.stopped})")
        self._save_state()
        return self._finish()

    # -- the end ------------------------------------------------------------------------
    def _calibration_batches(self) -> Iterator[tuple[np.ndarray, Metadata]]:
        rng = np.random.default_rng(self.options.seed + 1)  # not the training generator: resuming stays exact
        for _ in range(self.options.calibration_batches):
            x, _ = random_crops(self.data, self.train_regions, self.options.batch, rng, augment=False)
            yield x, self.meta

    def _finish(self) -> dict:
        if self.best is not None and self.best["metric"] is not None:
            self.model.load_state_dict(self.best["state"])
        used = calibrate_task_statistics(self.model, self.profile.task, self._calibration_batches())
        self.calibration = {"task": self.profile.task, "batches": used, "batch": self.options.batch,
                            "seed": self.options.seed + 1, "source": "training crops"}
        self.final = self._validate()
        record = self.record(final=True)
        self.model.eval()
        save_checkpoint(self.model.cpu(), self.files["checkpoint"], extra={"training": record})
        atomic_write(self.files["log"], lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
        save_plot(record, self.files["plot"])
        metric = record["final_metric"]
        scored = "" if metric is None else f", validation {record['metric']} {metric:.4f} after BatchNorm calibration"
        self.say(f"saved {self.files['checkpoint']} (best epoch {record['best_epoch']}{scored}); "
                 f"{record['steps_per_second']:.2f} steps/s on {self.device}")
        return record

    def record(self, final: bool) -> dict:
        """The training record: saved with the checkpoint and as OUT.log.json."""
        o = self.options
        rec = {"data": str(self.data.root.resolve()), "layout": self.data.layout.name, "profile": self.profile.name,
               "init": self.source, "task": self.profile.task, "metric": PRIMARY_METRIC[self.profile.task][1],
               "steps_done": self.step, "steps_planned": self.total, "epoch_steps": self.epoch_steps,
               "batch": o.batch, "lr": self.lr, "weight_decay": o.weight_decay, "seed": o.seed,
               "augment": o.augment, "device": str(self.device),
               "train_seconds": round(self.train_seconds, 1),
               "steps_per_second": self.step / self.train_seconds if self.train_seconds else 0.0,
               "validation": {"how": self.val_how, "regions": [r.record() for r in self.val_regions]},
               "epochs": self.epochs, "best_epoch": self.best["epoch"] if self.best else None,
               "best_metric": self.best["metric"] if self.best else None}
        if final:
            scored = self.final["results"]["model"] if self.final else None
            rec.update(stopped_early=self.stopped, batchnorm_calibration=self.calibration,
                       final_metric=primary_metric(self.profile.task, scored) if scored else None,
                       final_validation=scored, baselines=self.final["baselines"] if self.final else None)
        return rec


def fine_tune(dataset: UserDataset, out: str | Path, init: str | Path | None = None,
              options: FineTuneOptions = FineTuneOptions(), resume: bool = False, size: str = "tiny",
              progress: bool = True) -> dict:
    """Train on ``dataset`` (see the module doc) and return the training record."""
    return FineTune(dataset, out, init, options, resume, size, progress).run()


def validation_regions(dataset: UserDataset, record: dict) -> list[Region]:
    """The validation part a checkpoint's training record names, found in ``dataset``."""
    return [Region(dataset.sample(r["sample"]), tuple(r["rows"])) for r in record["validation"]["regions"]]


def evaluation_regions(dataset: UserDataset, split: str | None, record: dict) -> tuple[str, list[Region]]:
    """(split, regions) to score: ``split`` is test, val, train, all, or heldout (the validation
    part recorded by the training that wrote the checkpoint, when it trained on this dataset).
    By default: test if the data has one, else heldout if the record names it, else val, else all."""
    trained_here = bool(record.get("data")) and Path(record["data"]).resolve() == dataset.root.resolve()
    heldout = trained_here and bool(record.get("validation", {}).get("regions"))
    split = split or ("test" if "test" in dataset.splits else "heldout" if heldout
                      else "val" if "val" in dataset.splits else "all")
    if split == "heldout":
        if not heldout:
            raise DatasetError(f"the checkpoint records no validation part of {dataset.root}; choose a split of "
                               f"{', '.join([*dataset.splits, 'all'])}")
        return split, validation_regions(dataset, record)
    if split == "all":
        return split, whole(dataset.samples())
    if split not in dataset.splits:
        raise DatasetError(f"{dataset.root} has no '{split}' split (it has: {', '.join(dataset.splits)}; "
                           "or heldout, all)")
    return split, whole(dataset.splits[split])


__all__ = ["FineTune", "FineTuneOptions", "evaluation_regions", "fine_tune", "initial_model", "learning_rate", "paths",
           "unchanged_agreement", "validation_regions", "with_classes"]
