"""The training loop shared by teachers and student: early stopping, checkpoints, exact resume.

:func:`train_tagger` is the one routine both run (fit, reload the best model, score dev and
test, write ``metrics.json``); a task supplies only its :class:`Objective`.

Every epoch ends with an atomic checkpoint (weights, optimizer, scheduler, history), written in
a staging directory that replaces the model directory only when training finished. The random
state of epoch ``e`` is derived from ``seed * 100_003 + e`` and the data order from the
stream's epoch, so a run killed at any point and restarted with ``resume=True`` ends with the
same weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import pickle
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from structkd.errors import StructkdError, first_line
from structkd.pipeline import distributed
from structkd.pipeline.data import Split
from structkd.pipeline.evaluation import evaluate_splits, micro_score
from structkd.pipeline.models import Tagger, load_tagger, save_tagger
from structkd.pipeline.params import TrainParams
from structkd.storage.io import atomic_write, atomic_write_text, replace_dir, staging_dir

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class EpochRecord:
    """One row of ``history.csv`` (what ``dvc plots`` draws as learning curves)."""

    epoch: int
    train_loss: float
    dev_score: float
    lr: float
    kd_weight: float
    seconds: float
    trust: str = ""


def run_fingerprint(params: TrainParams, *extra: object) -> str:
    """What a checkpoint must match to be resumed: settings that change the trajectory.

    ``max_epochs`` and ``patience`` only decide when to stop, so a run may be resumed with more;
    a teacher's ``ensemble`` (how many members are trained) does not change any one member.
    params.yaml ``runtime`` is not in ``params`` at all: a run may resume on another device.
    """
    ignored = ("max_epochs", "patience", "ensemble")
    settings = {k: v for k, v in asdict(params).items() if k not in ignored}
    text = json.dumps([settings, *extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def make_optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """Adam by default (converges in tens of epochs on CPU); SGD as in the paper on request."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if params.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=params.lr)
    return torch.optim.Adam(trainable, lr=params.lr)


def check_finite(loss: torch.Tensor, desc: str, epoch: int) -> None:
    """Stop a run whose loss diverged (NaN or inf), naming it and the epoch."""
    if not torch.isfinite(loss):
        raise StructkdError(f"{desc}: loss became {loss.item()} in epoch {epoch}")


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: float) -> None:
    """Clip the gradient norm to ``clip``, then step (after ``loss.backward()``)."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


def fit(
    model: torch.nn.Module,
    *,
    params: TrainParams,
    batches: Callable[[int], Iterable[Any]],
    loss_fn: Callable[[Any, int], torch.Tensor],
    dev_score: Callable[[], float],
    save_best: Callable[[], None],
    out_dir: Path,
    resume: bool = False,
    resume_from: Path | None = None,
    fingerprint: str = "",
    kd_weight: Callable[[int], float] = lambda epoch: 0.0,
    trust: Callable[[int], Mapping[str, float]] = lambda epoch: {},
    desc: str = "train",
    join: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    main_process: bool = True,
) -> list[EpochRecord]:
    """Train ``model`` until dev stops improving for ``params.patience`` epochs.

    Args:
        model: the module to train.
        params: optimisation settings.
        batches: ``epoch -> iterable of batches`` (the order must depend only on the epoch).
        loss_fn: ``(batch, epoch) -> scalar loss``.
        dev_score: higher is better; evaluated after every epoch.
        save_best: called when the dev score improves (writes the model directory).
        out_dir: where ``checkpoint.pt`` and ``history.csv`` go.
        resume: continue from the checkpoint ``resume_from`` if present.
        resume_from: the checkpoint to resume from (default ``out_dir/checkpoint.pt``).
        fingerprint: identifies the run's settings; resuming a different run is refused.
        kd_weight: the distillation weight λ of an epoch, recorded in the history.
        trust: the per-language factors of λ in an epoch (``student.trust``), recorded too.
        desc: progress-bar label.
        join: context around an epoch's batches (DDP's ``join`` for uneven batch counts).
        main_process: only the main process writes checkpoints, models and the history.

    Returns:
        The per-epoch history.
    """
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(model, params)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=max(1, params.patience // 2)
    )
    history: list[EpochRecord] = []
    best, bad_epochs, start = float("-inf"), 0, 0
    checkpoint_path = out_dir / CHECKPOINT
    previous = resume_from or checkpoint_path
    if resume and previous.exists():
        try:
            state = torch.load(previous, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # truncated, damaged
            raise StructkdError(
                f"{previous}: not a readable checkpoint ({first_line(e)}); "
                "run without --resume to start over"
            ) from None
        if state["fingerprint"] != fingerprint:
            raise StructkdError(
                f"{previous}: was written with other settings; run without --resume to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = [EpochRecord(**row) for row in state["history"]]
        best, bad_epochs, start = state["best"], state["bad_epochs"], state["epoch"] + 1
        tqdm.write(f"{desc}: resuming after epoch {state['epoch']}")
    for epoch in range(start, params.max_epochs):
        if bad_epochs >= params.patience:
            break
        torch.manual_seed(params.seed * 100_003 + epoch)
        model.train()
        began, total, steps = time.perf_counter(), 0.0, 0
        bar = tqdm(
            batches(epoch),
            desc=f"{desc} epoch {epoch}",
            leave=False,
            unit="batch",
            disable=not main_process,
        )
        with join():
            for batch in bar:
                optimizer.zero_grad()
                loss = loss_fn(batch, epoch)
                check_finite(loss, desc, epoch)
                loss.backward()
                optimizer_step(model, optimizer, params.clip)
                total, steps = total + loss.item(), steps + 1
                bar.set_postfix(loss=f"{total / steps:.3f}")
        model.eval()
        score = dev_score()
        scheduler.step(score)
        record = EpochRecord(
            epoch=epoch,
            train_loss=total / max(steps, 1),
            dev_score=score,
            lr=optimizer.param_groups[0]["lr"],
            kd_weight=kd_weight(epoch),
            seconds=time.perf_counter() - began,
            trust=" ".join(f"{lang}={w:.3f}" for lang, w in trust(epoch).items()),
        )
        history.append(record)
        if score > best:
            best, bad_epochs = score, 0
            if main_process:
                save_best()
        else:
            bad_epochs += 1
        if not main_process:
            continue
        tqdm.write(
            f"{desc} epoch {epoch}: loss {record.train_loss:.4f} dev {score:.4f} "
            f"(best {best:.4f}) {record.seconds:.1f}s"
        )
        _save_checkpoint(
            checkpoint_path,
            {
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": [asdict(r) for r in history],
                "best": best,
                "bad_epochs": bad_epochs,
                "epoch": epoch,
            },
        )
        write_history(history, out_dir / "history.csv")
    return history


def write_history(history: list[EpochRecord], path: Path) -> None:
    """Per-epoch CSV for ``dvc plots``."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(EpochRecord.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(asdict(r) for r in history)
    atomic_write_text(path, text.getvalue())


def write_json(data: Any, path: Path) -> None:
    """Atomic JSON write (metrics files are read by ``dvc metrics show``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class Objective(Protocol):
    """What a tagger is trained on: its batches, its loss and how its metrics.json reads."""

    def batches(self, epoch: int) -> Iterable[Any]:
        """The batches of an epoch (the order must depend only on the epoch)."""
        ...

    def loss(self, batch: Any, epoch: int) -> torch.Tensor:
        """The scalar training loss of one batch."""
        ...

    def kd_weight(self, epoch: int) -> float:
        """The distillation weight λ of an epoch (0 without distillation)."""
        ...

    def trust(self, epoch: int) -> Mapping[str, float]:
        """Each language's factor of λ in an epoch (empty when every language gets λ)."""
        ...

    def summary(
        self, dev: dict[str, dict[str, float]], test: dict[str, dict[str, float]]
    ) -> dict[str, Any]:
        """``metrics.json`` from the best model's scores per language on dev and test."""
        ...


def train_tagger(
    model: Tagger,
    objective: Objective,
    *,
    params: TrainParams,
    dev: Mapping[str, Split],
    test: Mapping[str, Split],
    out: Path,
    fingerprint: str,
    resume: bool = False,
    desc: str = "train",
    loss: Callable[[Any, int], torch.Tensor] | None = None,
    join: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    main_process: bool = True,
    finished: Path | None = None,
) -> dict[str, Any] | None:
    """Fit ``model`` (selected on the micro dev score), reload the best, score dev and test.

    ``dev`` and ``test`` map each language to its split (loaded before training, so a broken
    test split stops the run before it starts). Training happens in the hidden
    :func:`staging_dir` of ``out`` (model, checkpoint, history, then metrics.json), which
    replaces ``out`` as a whole only when the run finished: an interrupted run leaves the old
    model directory as it was (and its own work for ``resume``). ``finished`` is the finished
    model directory that ``resume`` continues when no interrupted run is staged (default
    ``out``; a teacher ensemble's member trains in a staging tree, its old model elsewhere).
    Returns the metrics (None on a non-main process, which leaves the process group and writes
    nothing). ``loss`` replaces ``objective.loss`` (its DistributedDataParallel wrapper, with
    ``join``); the best model is scored on ``model``'s device.
    """
    work, finished = staging_dir(out), finished or out
    # the checkpoint to resume: an interrupted run's, else the finished model's (more epochs)
    resume_from = work / CHECKPOINT if (work / CHECKPOINT).exists() else finished / CHECKPOINT
    if main_process:
        _start_work(work, finished, resume)
    fit(
        model,
        params=params,
        batches=objective.batches,
        loss_fn=loss or objective.loss,
        dev_score=partial(micro_score, model, list(dev.values())),
        save_best=partial(save_tagger, model, work),
        out_dir=work,
        resume=resume,
        resume_from=resume_from,
        fingerprint=fingerprint,
        kd_weight=objective.kd_weight,
        trust=objective.trust,
        desc=desc,
        join=join,
        main_process=main_process,
    )
    distributed.finish()
    if not main_process:
        return None
    best = load_tagger(work).to(model.device)
    metrics = objective.summary(evaluate_splits(best, dev), evaluate_splits(best, test))
    write_json(metrics, work / "metrics.json")
    replace_dir(work, out)
    return metrics


def keep_interrupted(work: Path, resume: bool) -> bool:
    """Keep the staging directory ``work`` when ``resume`` continues the interrupted run it
    holds (it has a checkpoint) and return True; else remove it."""
    if resume and (work / CHECKPOINT).exists():
        return True
    shutil.rmtree(work, ignore_errors=True)
    return False


def _start_work(work: Path, out: Path, resume: bool) -> None:
    """Prepare the staging directory ``work``: empty for a new run; for ``resume``, an
    interrupted run's as it is when it has a checkpoint, else a copy of the finished model
    directory ``out``, subfolders (an ensemble's members) with their checkpoints included, and
    the top checkpoint copied last, so that a copy cut short has none and is redone."""
    if keep_interrupted(work, resume):
        return
    if resume and (out / CHECKPOINT).exists():
        top = str(out)
        shutil.copytree(out, work, ignore=lambda d, _: [CHECKPOINT] if d == top else [])
        shutil.copy2(out / CHECKPOINT, work / CHECKPOINT)
