"""``stl-generate``: write a generated STL-format dataset to a directory."""

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stl_pipeline.generate.dataset import FULL_SCALE, SHAPES, GeneratorConfig, generate_dataset


def main(argv: list[str] | None = None) -> int:
    defaults = GeneratorConfig()
    parser = argparse.ArgumentParser(
        prog="stl-generate",
        description="Write fashion.json, fashion-cat.json, fashion-styles.json and images/ "
        "in the formats of the Shop-the-Look release.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to create")
    parser.add_argument("--products", type=int, default=defaults.products)
    parser.add_argument("--scenes", type=int, default=defaults.scenes)
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="total pairs (default: scenes x annotated, or 2-5 a dense scene)",
    )
    parser.add_argument(
        "--shape",
        choices=SHAPES,
        default=defaults.shape,
        help="release: every photo shows 2-5 garments and about --annotated of them are in pairs; "
        "dense: all of them are",
    )
    parser.add_argument(
        "--annotated",
        type=float,
        default=defaults.annotated,
        help="release shape: annotated garments a scene on average, 1 to 2.5 (most scenes have one)",
    )
    parser.add_argument(
        "--full-scale",
        action="store_true",
        help=f"the release's size: {FULL_SCALE['products']:,} products, {FULL_SCALE['pairs']:,} pairs "
        f"over {FULL_SCALE['scenes']:,} scenes",
    )
    parser.add_argument("--styles", type=int, default=defaults.styles)
    parser.add_argument(
        "--off-style",
        type=float,
        default=defaults.off_style,
        help="share of a scene's products from another style (harder when higher)",
    )
    parser.add_argument(
        "--jitter", type=float, default=defaults.jitter, help="colour, placement and pixel noise in [0, 0.5]"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: auto)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)

    sizes = (
        FULL_SCALE
        if args.full_scale
        else {"products": args.products, "scenes": args.scenes, "pairs": args.pairs}
    )
    config = GeneratorConfig(
        **sizes,
        shape=args.shape,
        annotated=args.annotated,
        styles=args.styles,
        off_style=args.off_style,
        jitter=args.jitter,
        seed=args.seed,
    )
    return write(
        parser, config, args.out, args.force, lambda: generate_dataset(config, args.out, args.workers)
    )


def write(
    parser: argparse.ArgumentParser, config: Any, out: Path, force: bool, generate: Callable[[], dict]
) -> int:
    """Validate ``config``, make room at ``out`` (only with ``force``), generate, and print
    the summary as JSON: what both generators' commands end with."""
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    if out.exists():
        if not force:
            parser.error(f"{out} exists; pass --force to replace it")
        shutil.rmtree(out)
    start = time.perf_counter()
    summary = generate()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["out"] = str(out)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
