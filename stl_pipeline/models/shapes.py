"""Row counts rounded up to a bucket. oneDNN, which runs the CPU's bf16 matrix products,
builds and caches a kernel for every new shape: a step whose row count moves by a few each
time (the tokens present in a batch, its distinct positives) built about 40 new ones an
epoch, and the process grew by about 40 MB an epoch at 3,811 products (docs/benchmarks.md).
Padded to a multiple of ``ROWS``, a run sees a handful of shapes."""

import torch
import torch.nn.functional as F

ROWS = 256


def padded(rows: int, multiple: int = ROWS) -> int:
    """``rows`` rounded up to a multiple of ``multiple``."""
    return -(-rows // multiple) * multiple


def pad_rows(x: torch.Tensor, multiple: int = ROWS, value: float = 0) -> torch.Tensor:
    """``x`` with rows of ``value`` appended up to a multiple of ``multiple`` rows."""
    extra = padded(len(x), multiple) - len(x)
    if not extra:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, extra), value=value)
