"""Checkpoint files, written atomically and read weights-only: what training writes and what
evaluation and serving read, without importing either's code."""

from pathlib import Path

from stl_pipeline.storage import atomic_writer

LAST, BEST = "last.pt", "best.pt"
RECORD = "record.pt"  # a model record (what the model assets return), registered in MLflow
# What the best checkpoint keeps: what a model record reads, not the optimizer's moments and
# the RNG states that only resuming needs. It is written at every better epoch; the moments
# would treble its size.
BEST_KEYS = ("epoch", "model", "history", "best_epoch", "best_score", "config")


def save_checkpoint(path: Path, state: dict) -> None:
    """Through a Python file, so that a full disk surfaces as the OSError it is (torch's own
    writer reports "unexpected pos") and the file is closed, its space freed, at once."""
    import torch  # here: the code location loads this module without torch

    with atomic_writer(path) as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
