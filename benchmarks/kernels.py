"""Two small kernels of every training step against PyTorch's own, forward and backward.

- ``dropout``: ``models.dropout.dropout`` (a CPU mask of four 16-bit draws per random 64-bit
  word) against ``torch.nn.functional.dropout`` (``bernoulli_``, one draw at a time off Intel).
- ``own scores``: each query's score with its own K negatives as a product and a sum
  (``models.losses.candidate_scores``, ``models.context.CatalogueRead``) against
  ``torch.einsum("bd,bkd->bk")``, which runs B batched (1, d) x (d, K) products.

Shapes are a step's at a tenth of the release and at its size (the widths of the default
recipe); precision is what training runs: fp32, or bf16 autocast (``--precisions``). The
last column is PyTorch's time over ours, measured in the same run.

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

DROPOUT_SHAPES = {  # (rows, width): the visual tower's hidden layer, a graph layer's scenes
    "tenth": [(3811, 512), (4774, 128)],
    "release": [(38111, 512), (47739, 128)],
}
SCORE_SHAPES = {  # (queries, K, d): same-category negatives, the catalogue read's matches
    "tenth": [(2910, 8, 128), (2816, 32, 128)],
    "release": [(28900, 8, 128), (28160, 32, 128)],
}


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


def scores_row(shape: tuple[int, int, int], precision: str, repeats: int) -> tuple[float, float]:
    rows, k, width = shape
    products = torch.randn(rows + 1000, width, requires_grad=True)
    queries = torch.randn(rows, width, requires_grad=True)
    own = torch.randint(0, len(products), (rows, k))

    def run(score: Callable) -> Callable[[], None]:
        def step() -> None:
            products.grad = queries.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                score(queries, products[own]).float().sum().backward()

        return step

    einsum = run(lambda q, p: torch.einsum("bd,bkd->bk", q, p))
    product_sum = run(lambda q, p: (q[:, None, :] * p).sum(-1))
    return seconds(einsum, repeats), seconds(product_sum, repeats)


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
    for size in args.sizes.split(","):
        for precision in args.precisions.split(","):
            for shape in DROPOUT_SHAPES[size]:
                theirs, ours = dropout_row(shape, precision, args.repeats)
                rows.append(["dropout p=0.3", size, "x".join(map(str, shape)), precision, theirs, ours])
            for shape in SCORE_SHAPES[size]:
                theirs, ours = scores_row(shape, precision, args.repeats)
                rows.append(["own scores", size, "x".join(map(str, shape)), precision, theirs, ours])
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
