"""Generation and ingestion at the release's size: time and peak memory.

Each stage runs in a fresh process so its peak resident memory (including
render workers) is its own.

    .venv/bin/python benchmarks/full_scale.py [--workers 2] [--keep DIR]
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stl_pipeline.generate import FULL_SCALE, GeneratorConfig, generate_dataset
from stl_pipeline.ingest.tables import ingest


def peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def stage(name: str, out: Path, workers: int) -> dict:
    start = time.perf_counter()
    if name == "generate":
        summary = generate_dataset(GeneratorConfig(**FULL_SCALE), out, workers=workers)
        detail = f"{summary['products']:,} products, {summary['scenes']:,} scenes, {summary['pairs']:,} pairs"
    else:
        result = ingest(out / "fashion.json", out / "fashion-cat.json")
        pairs, products = len(result.pairs), len(result.products)
        detail = f"{pairs:,} pairs, {products:,} products, {len(result.quarantine)} quarantined"
    return {"stage": name, "seconds": time.perf_counter() - start, "peak_mb": peak_mb(), "detail": detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="write the dataset here and keep it")
    parser.add_argument("--stage", choices=["generate", "ingest"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.out, args.workers)))
        return

    work = Path(tempfile.mkdtemp(prefix="stl-bench-full-"))
    out = args.keep or work / "full"
    try:
        rows = []
        for name in ("generate", "ingest"):
            command = [
                sys.executable,
                __file__,
                "--stage",
                name,
                "--out",
                str(out),
                "--workers",
                str(args.workers),
            ]
            rows.append(
                json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            )
        images = sum(1 for _ in (out / "images").iterdir())
        disk = sum(p.stat().st_size for p in (out / "images").iterdir()) / 1e6
        print(f"Full scale ({images:,} images, {disk:,.0f} MB of JPEG), {args.workers} render workers")
        print(f"| {'stage':<8} | {'seconds':>7} | {'peak RSS MB':>11} | {'what':<50} |")
        print(f"|{'-' * 10}|{'-' * 9}|{'-' * 13}|{'-' * 52}|")
        for row in rows:
            print(
                f"| {row['stage']:<8} | {row['seconds']:7.1f} | {row['peak_mb']:11.0f} "
                f"| {row['detail']:<50} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
