"""Two CPU kernels of a training step, ours against PyTorch's own, forward and backward.

Dropout: ``models.dropout.dropout`` draws its mask as four 16-bit values per random 64-bit
word; ``torch.nn.functional.dropout`` calls ``bernoulli_``, which draws one element at a time
unless MKL's vectorized streams serve it (on Intel processors only). Shapes: the visual
tower's hidden layer and a graph layer's scenes.

Gathering catalogue rows and scoring them (``einsum("nd,nkd->nk")``): ``models.shapes.take``
(``index_select``, whose backward is ``index_add``) against ``table[index]``, whose backward
under deterministic kernels is a sort. Shapes: the catalogue read's tokens and their 32
nearest products, and each query's 8 same-category negatives.

Shapes are a step's at a tenth of the release and at its size; precision is what training
runs: fp32, or bf16 (``--precisions``). The last column is PyTorch's time over ours,
measured in the same run.

    .venv/bin/python benchmarks/kernels.py [--repeats 20] [--threads 2] [--precisions fp32,bf16]
        [--sizes tenth,release]
"""

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tabulate import tabulate

from stl_pipeline.models.dropout import dropout
from stl_pipeline.models.shapes import take

DROPOUT_SHAPES = {  # (rows, width): the visual tower's hidden layer, a graph layer's scenes
    "tenth": [(3811, 512), (4774, 128)],
    "release": [(38111, 512), (47739, 128)],
}
# (catalogue rows, queries, rows gathered per query): the catalogue read, the own negatives
GATHER_SHAPES = {
    "tenth": [(3811, 2560, 32), (3811, 2910, 8)],
    "release": [(38111, 25600, 32), (38111, 28900, 8)],
}
WIDTH = 128  # the scoring space


def seconds(step: Callable[[], None], repeats: int) -> float:
    step()  # the first call builds kernels and caches
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def dropout_row(shape: tuple[int, int], precision: str, repeats: int) -> tuple[float, float]:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)

    def run(drop: Callable) -> Callable[[], None]:
        def step() -> None:
            x.grad = None
            drop(x, 0.3, True).float().sum().backward()

        return step

    return seconds(run(F.dropout), repeats), seconds(run(dropout), repeats)


def gather_row(shape: tuple[int, int, int], precision: str, repeats: int) -> tuple[float, float]:
    rows, queries, per_query = shape
    table = torch.randn(rows, WIDTH, requires_grad=True)
    seen = torch.randn(queries, WIDTH)
    index = torch.randint(0, rows, (queries, per_query))

    def run(gather: Callable) -> Callable[[], None]:
        def step() -> None:
            table.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                scores = torch.einsum("nd,nkd->nk", seen, gather(table, index))
            scores.float().sum().backward()

        return step

    return seconds(run(lambda t, i: t[i]), repeats), seconds(run(take), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--sizes", default="tenth,release")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as training runs (TrainConfig.deterministic)
    torch.manual_seed(0)
    rows = []
    for kernel, shapes, measure in (
        ("dropout p=0.3", DROPOUT_SHAPES, dropout_row),
        (f"gather and score, width {WIDTH}", GATHER_SHAPES, gather_row),
    ):
        for size in args.sizes.split(","):
            for precision in args.precisions.split(","):
                for shape in shapes[size]:
                    theirs, ours = measure(shape, precision, args.repeats)
                    rows.append([kernel, size, "x".join(map(str, shape)), precision, theirs, ours])
    print(f"{torch.get_num_threads()} threads, {args.repeats} repeats, forward and backward, ms a call")
    print(
        tabulate(
            [
                [*row[:4], f"{row[4] * 1e3:.2f}", f"{row[5] * 1e3:.2f}", f"{row[4] / row[5]:.2f}"]
                for row in rows
            ],
            headers=["kernel", "size", "shape", "precision", "PyTorch's", "ours", "PyTorch's / ours"],
        )
    )


if __name__ == "__main__":
    main()
