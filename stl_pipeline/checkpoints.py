"""Checkpoint files, written atomically and read weights-only: what training writes and what
evaluation and serving read, without importing either's code."""

from pathlib import Path

from stl_pipeline.storage import atomic_write_with

LAST, BEST = "last.pt", "best.pt"
RECORD = "record.pt"  # a model record (what the model assets return), registered in MLflow
# What the best checkpoint keeps: what a model record reads, not the optimizer's moments and
# the RNG states that only resuming needs. It is written at every better epoch; the moments
# would treble its size.
BEST_KEYS = ("epoch", "model", "history", "best_epoch", "best_score", "config")


def save_checkpoint(path: Path, state: dict) -> None:
    import torch  # here: the code location loads this module without torch

    atomic_write_with(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
