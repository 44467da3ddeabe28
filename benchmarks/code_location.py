"""What loading the code location costs, and what a step of a UI-launched run pays for it.

Each row is a fresh process, run ``--repeat`` times (median seconds, largest peak
RSS): ``import dagster`` alone is the floor, then ``import stl_pipeline.definitions``.
With ``--data DIR`` (an STL-format dataset), it also times the ingestion the way an
operator runs it, ``dagster asset materialize --select stl_pairs,stl_products`` under
the default multiprocess executor, against the ingestion function alone.

    .venv/bin/python benchmarks/code_location.py [--repeat 5] [--data DIR]
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

PROBE = "import resource, sys, time; t = time.perf_counter(); import {module}; " + (
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
)


def import_cost(module: str, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True
        )
        seconds, mb = out.stdout.split()
        runs.append((float(seconds), float(mb)))
    return statistics.median(s for s, _ in runs), max(mb for _, mb in runs)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    return seconds, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data", type=Path, help="an STL-format dataset for the ingestion rows")
    args = parser.parse_args()
    floor = import_cost("dagster", args.repeat)
    rows = [["import dagster (floor)", f"{floor[0]:.2f}", f"{floor[1]:,.0f}", "1.00"]]
    own = import_cost("stl_pipeline.definitions", args.repeat)
    rows.append(
        ["import stl_pipeline.definitions", f"{own[0]:.2f}", f"{own[1]:,.0f}", f"{own[0] / floor[0]:.2f}"]
    )
    if args.data:
        with tempfile.TemporaryDirectory() as work:
            env = {
                **os.environ,
                "STL_DATA_DIR": str(Path(work) / "data"),
                "DAGSTER_HOME": str(Path(work) / "home"),
                "STL_PAIRS_PATH": str(args.data.absolute() / "fashion.json"),
                "STL_CATEGORIES_PATH": str(args.data.absolute() / "fashion-cat.json"),
            }
            Path(env["DAGSTER_HOME"]).mkdir()
            pure = (
                "from stl_pipeline.ingest.tables import ingest; import sys; "
                "ingest(sys.argv[1] + '/fashion.json', sys.argv[1] + '/fashion-cat.json')"
            )
            alone = timed([sys.executable, "-c", pure, str(args.data.absolute())], env)
            dagster = str(Path(sys.executable).with_name("dagster"))
            select = "stl_pairs,stl_products"
            command = [dagster, "asset", "materialize", "-m", "stl_pipeline.definitions", "--select", select]
            materialize = timed(command, env)
        rows.append(["ingest() alone (floor)", f"{alone[0]:.2f}", f"{alone[1]:,.0f}", "1.00"])
        rows.append(
            [
                f"dagster asset materialize --select {select}",
                f"{materialize[0]:.2f}",
                f"{materialize[1]:,.0f}",
                f"{materialize[0] / alone[0]:.2f}",
            ]
        )
    print(tabulate(rows, headers=["what", "seconds", "peak RSS MB", "ratio to floor"]))


if __name__ == "__main__":
    main()
