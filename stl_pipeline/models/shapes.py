"""Row counts rounded up to a bucket. oneDNN, which runs the CPU's bf16 matrix products,
builds and caches a kernel for every new shape: a step whose row count moves by a few each
time (the tokens present in a batch, its distinct positives) built about 40 new ones an
epoch, and the process grew by about 40 MB an epoch at 3,811 products (docs/benchmarks.md).
Padded to a multiple of ``ROWS``, a run sees a handful of shapes."""

import torch
import torch.nn.functional as F

ROWS = 256


def pad_rows(x: torch.Tensor, multiple: int = ROWS) -> torch.Tensor:
    """``x`` with zero rows appended up to a multiple of ``multiple`` rows."""
    extra = -len(x) % multiple
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, extra)) if extra else x


def take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an index of any shape, through ``index_select``. The same rows,
    but its backward is ``index_add``: that of ``table[index]`` is ``index_put_`` with
    accumulation, which PyTorch's deterministic kernels run as a sort on the CPU. Gathering
    and scoring the catalogue read's 32 nearest products and the 8 own negatives of a step
    ran 1.5-3.5 times as fast at a tenth's shapes, 1.1-1.9 at the release's
    (benchmarks/kernels.py)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])
