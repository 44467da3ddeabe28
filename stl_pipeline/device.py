"""Which torch device and precision a GPU-bound step runs on.

``auto`` picks CUDA when present. Reduced precision is autocast: fp16 and bf16 on CUDA,
and bf16 on a CPU with native bf16 instructions (AVX-512 BF16 or AMX), where the backbone
runs twice as fast (docs/benchmarks.md); elsewhere CPU autocast is slower than fp32, so
the CPU runs fp32 there. Precision ``auto`` is bf16 on such a CPU, where it was measured to
validate as well as fp32, and fp32 everywhere else. torch is imported where it is used: the
resources that name a precision load with the code location, which should not pay for torch.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
REDUCED: tuple[str, ...] = ("bf16", "fp16")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", *REDUCED)
DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device_spec(spec: str) -> str:
    """``spec`` normalized, if it names a device at all (whether it exists is known on the host)."""
    normal = spec.strip().lower()
    if not DEVICE_SPEC.fullmatch(normal):
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    return normal


def resolve_device(spec: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device that exists here."""
    import torch

    spec = check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {spec!r} was asked for but CUDA is not available; use auto or cpu")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return device
    return torch.device("cpu")


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (oneDNN's own test; asked once, as
    ``autocast`` asks it every training step)."""
    import torch

    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def check_precision(precision: str) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    return precision  # type: ignore[return-value]


def effective_precision(device: torch.device, precision: Precision) -> Precision:
    """The precision actually used: any on CUDA, bf16 on a CPU that has it natively, else fp32;
    ``auto`` is bf16 on such a CPU and fp32 elsewhere."""
    check_precision(precision)
    cpu_bf16 = device.type == "cpu" and native_cpu_bf16()
    if precision == "auto":
        return "bf16" if cpu_bf16 else "fp32"
    if device.type == "cuda" or (precision == "bf16" and cpu_bf16):
        return precision
    return "fp32"


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    import torch

    if effective_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(
        device_type=device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    )


def describe(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@contextlib.contextmanager
def deterministic(on: bool = True) -> Iterator[None]:
    """PyTorch's deterministic kernels while the block runs (a process-wide switch, restored
    after); ops without one warn instead of failing. Without them two CPU threads sum a graph's
    messages in an order that varies from run to run: training would not repeat itself, and
    served vectors would differ in their last bits from one materialization to the next."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
