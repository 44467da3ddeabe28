"""The model lifecycle both groups train through: seeding and deterministic kernels, an
optimizer and learning-rate schedule, early stopping on a validation score, and checkpoints
from which a killed run resumes exactly.

A group supplies a ``Trainable``: its model, one epoch's steps, the loss of a step and its
validation score. Everything else lives here once, so a fix to resuming or stopping reaches
both groups.

A checkpoint holds the model, the optimizer, the schedule, the fp16 gradient scaler, every
random generator (the CPU one that steps and negatives are drawn from, torch's, and the CUDA
device's that dropout uses there) and the history, so a run killed after epoch n and resumed
ends in exactly the state an uninterrupted run reaches. ``best.pt`` keeps only what a model
record reads. Both are written atomically and read with ``weights_only=True``.
"""

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from stl_pipeline.checkpoints import BEST, BEST_KEYS, LAST, load_checkpoint, save_checkpoint
from stl_pipeline.device import Precision, autocast, deterministic, effective_precision
from stl_pipeline.storage import CorruptArtifactError, read_artifact

OPTIMIZERS = ("adamw", "adam")


class NonFiniteLoss(FloatingPointError):
    pass


class Schedule(Protocol):
    """The fields of a group's training config that the lifecycle reads."""

    lr: float
    weight_decay: float
    epochs: int
    patience: int  # validations without a better score before stopping
    eval_every: int  # epochs between validations (the last epoch always validates)
    lr_decay_patience: int  # validations without a better score before the rate halves; 0: never
    checkpoint_every: int
    optimizer: str
    deterministic: bool
    seed: int


class Trainable(Protocol):
    """What a group supplies: the model, an epoch's steps, a step's loss, the validation."""

    model: torch.nn.Module
    score: str  # the validation metric early stopping watches, a key of ``validate()``

    def steps(self, generator: torch.Generator) -> Sequence[Any]:
        """One epoch's batches, drawn on ``generator``."""
        ...

    def loss(self, batch: Any, generator: torch.Generator) -> torch.Tensor: ...

    def validate(self) -> dict[str, float]:
        """Validation metrics, ``score`` among them; leaves the model in training mode."""
        ...


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    history: list[dict[str, float]]
    stopped_early: bool


def check_schedule(config: Schedule) -> None:
    """Refuse a schedule that cannot train, naming the knob."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}: use one of {OPTIMIZERS}")
    if config.lr_decay_patience < 0:
        raise ValueError(
            f"lr_decay_patience counts epochs: {config.lr_decay_patience} is below 0 (0 keeps the rate)"
        )
    for knob in ("epochs", "patience", "eval_every", "checkpoint_every"):
        if getattr(config, knob) < 1:
            raise ValueError(f"{knob} is {getattr(config, knob)}: it must be at least 1")


def _optimizer(model: torch.nn.Module, config: Schedule) -> torch.optim.Optimizer:
    if config.optimizer == "adam":  # weight decay as an L2 term in the gradient
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # One fused update per step instead of a loop over parameter tensors: fewer kernel launches
    # on CUDA; the same speed on the CPU.
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def _resumable(last: Path) -> dict | None:
    """The state to resume from; None when there is none, or when it is damaged: training
    is deterministic, so starting afresh ends where the interrupted run would have."""
    if not last.exists():
        return None
    try:
        return read_artifact(last, load_checkpoint, "training starts afresh")
    except CorruptArtifactError as error:
        warnings.warn(str(error), stacklevel=3)
        last.unlink(missing_ok=True)
        return None


def fit(
    trainable: Trainable,
    config: Schedule,
    checkpoint_dir: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    precision: Precision = "fp32",
    finish: Callable[[dict], dict] | None = None,
) -> FitResult:
    """Train ``trainable.model`` on its device, resuming from ``checkpoint_dir/last.pt`` when it
    was written with the same config. ``precision`` bf16 or fp16 autocasts (device.py says where); fp16
    scales the loss, so small gradients do not underflow to zero. ``finish`` rewrites the best
    checkpoint once, when training ends (the STL models fit their popularity prior there)."""
    check_schedule(config)
    model = trainable.model
    with deterministic(config.deterministic):
        checkpoint_dir = Path(checkpoint_dir)
        torch.manual_seed(config.seed)
        sampler = torch.Generator().manual_seed(config.seed)
        optimizer = _optimizer(model, config)
        scheduler = None
        if config.lr_decay_patience:
            # Its patience counts validations after the best, as early stopping's does.
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.5, patience=config.lr_decay_patience - 1, threshold=0.0
            )
        device = next(model.parameters()).device
        precision = effective_precision(device, precision)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        start, history, best = 0, [], (-1, -math.inf)
        last = checkpoint_dir / LAST
        state = _resumable(last)
        if state is not None and state["config"] == asdict(config):  # type: ignore[call-overload]
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:  # empty when it was written without fp16
                scaler.load_state_dict(state["scaler"])
            sampler.set_state(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and state["cuda_rng"] is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            start, history = state["epoch"] + 1, list(state["history"])
            best = (state["best_epoch"], state["best_score"])
            if state["finished"]:
                return FitResult(best[0], best[1], start, history, start < config.epochs)
        model.train()
        epoch = start - 1
        for epoch in range(start, config.epochs):
            losses = []
            for batch in trainable.steps(sampler):
                with autocast(device, precision):
                    loss = trainable.loss(batch, sampler)
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(
                        f"the loss became {loss.item()} at epoch {epoch}; lower lr (now {config.lr}) or "
                        f"check the inputs for non-finite values. The last good checkpoint is {last}"
                    )
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
            metrics = {
                "epoch": float(epoch),
                "loss": sum(losses) / max(1, len(losses)),
                "lr": optimizer.param_groups[0]["lr"],  # this epoch's
            }
            validates = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
            if validates:
                metrics |= trainable.validate()
            history.append(metrics)
            if on_epoch:
                on_epoch(epoch, metrics)
            improved = validates and metrics[trainable.score] > best[1]
            if validates and scheduler is not None:
                scheduler.step(metrics[trainable.score])
            if improved:
                best = (epoch, metrics[trainable.score])
            waited = (epoch - best[0]) // config.eval_every  # validations without a better score
            finished = epoch + 1 == config.epochs or (validates and waited >= config.patience)
            if improved or finished or (epoch + 1) % config.checkpoint_every == 0:
                state = {
                    "epoch": epoch,
                    "finished": finished,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "scaler": scaler.state_dict(),
                    "sampler": sampler.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "history": history,
                    "best_epoch": best[0],
                    "best_score": best[1],
                    "config": asdict(config),  # type: ignore[call-overload]
                }
                if improved:
                    save_checkpoint(checkpoint_dir / BEST, {key: state[key] for key in BEST_KEYS})
                if finished and finish is not None:  # before "finished" is on disk: a kill redoes it
                    save_checkpoint(checkpoint_dir / BEST, finish(load_checkpoint(checkpoint_dir / BEST)))
                save_checkpoint(last, state)
            if finished:
                break
        return FitResult(best[0], best[1], epoch + 1, history, epoch + 1 < config.epochs)
