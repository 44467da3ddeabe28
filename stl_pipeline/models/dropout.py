"""Dropout whose CPU mask is drawn 64 bits at a time.

PyTorch draws a CPU dropout mask one element at a time, through MKL's vectorized streams only
on Intel processors: on an AMD host, dropping 3,811 x 512 activations took 19-25 ms, longer than
the matrix product before it, and up to a sixth of a frozen-vector model's step. Four 16-bit
draws per random 64-bit word give the same Bernoulli mask (its rate within 1/65,536 of ``p``)
2.6-4 times as fast at a tenth of the release's shapes, forward and backward, 1.9-3.1 times at
its size (``benchmarks/kernels.py``). On other devices PyTorch's own kernel runs.
"""

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # the values a 16-bit draw takes


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``: zero each element with probability ``p`` and scale the
    rest so that the expectation is ``x``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability {p} is not between 0 and 1")
    if not training or p == 0.0:
        return x
    dropped = round(p * _LEVELS)
    if x.device.type != "cpu" or dropped == _LEVELS:
        return F.dropout(x, p, True)
    words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
    draws = words.view(torch.int16)[: x.numel()].view(x.shape)  # uniform over [-2^15, 2^15)
    kept = draws >= dropped - _LEVELS // 2
    return x * kept.to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped))


class Dropout(nn.Module):
    """``nn.Dropout`` over :func:`dropout` (no parameters: checkpoints load either way)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
