"""The whole lineage through Dagster at a chosen size: seconds, throughput, memory, GPU, quality.

Generates a dataset at ``--scale`` of the release (1.0: 38,111 products, 47,739 scenes,
72,198 pairs; 0.1: 3,811 products, 4,774 scenes, 7,220 pairs; ``--shape dense`` puts the
pairs on a third as many scenes, every garment annotated) unless ``--data`` points at one, then
runs every asset and check of ``stl_full_pipeline`` with the ``dagster job execute`` CLI
on a fresh instance. A sampler reads the resident memory of that whole process tree
(data-loader workers and step processes included) and, on CUDA, the card's busy share
and memory. It prints one row per asset (its step, the checks on it, throughput, peak
memory and GPU during the step) and the retrieval report's held-out test rows.

    .venv/bin/python benchmarks/end_to_end.py --scale 0.1 [--shape release] [--data DIR] [--device auto]
        [--workers N] [--precision auto] [--executor in_process] [--epochs N] [--work DIR] [--json PATH]

``--epochs N`` caps every trained model's epochs (their ``epochs`` run config), for a run at
the release's size that must fit a time budget; the report then shows models stopped short.

The demo backbone (tf_efficientnet_lite0, packaged weights, 128 px) embeds, as in
``make demo``, so no hub access is needed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import yaml
from tabulate import tabulate

from stl_pipeline.catalogue import asset_path
from stl_pipeline.evaluation.report import shown
from stl_pipeline.generate import FULL_SCALE, SHAPES, GeneratorConfig, generate_dataset
from stl_pipeline.registry import MODELS

JOB = "stl_full_pipeline"


@dataclass
class Samples:
    """(time, MB) of the process tree's RSS, and (time, busy %, MB) of the GPU."""

    rss: list[tuple[float, float]] = field(default_factory=list)
    gpu: list[tuple[float, float, float]] = field(default_factory=list)

    def during(self, start: float, end: float) -> tuple[float, float | None, float | None]:
        rss = [mb for t, mb in self.rss if start <= t <= end]
        gpu = [(busy, mb) for t, busy, mb in self.gpu if start <= t <= end]
        busy = sum(b for b, _ in gpu) / len(gpu) if gpu else None
        return max(rss, default=0.0), busy, max((mb for _, mb in gpu), default=None)


def tree_rss_mb(root: psutil.Process) -> float:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            continue
    return total / 2**20


def sample_gpu(samples: Samples, stop: threading.Event) -> None:
    """The card's busy share and memory, twice a second, from one ``nvidia-smi`` that loops
    by itself: starting one for each sample cost the two-core machine's training about a
    sixth of its speed (docs/benchmarks.md). Nothing when there is no ``nvidia-smi``."""
    query = [
        "-i",
        "0",
        "--query-gpu=utilization.gpu,memory.used",
        "--format=csv,noheader,nounits",
        "-lms",
        "500",
    ]
    try:
        smi = subprocess.Popen(["nvidia-smi", *query], stdout=subprocess.PIPE, text=True)
    except OSError:
        return
    # kill, not terminate: a process started with SIGTERM ignored inherits that, and a looping
    # nvidia-smi would then outlive the run.
    threading.Thread(target=lambda: (stop.wait(), smi.kill()), daemon=True).start()
    for line in smi.stdout or ():
        try:
            busy, used = (float(v) for v in line.split(",")[:2])
        except ValueError:  # a card that reports [N/A]
            continue
        samples.gpu.append((time.time(), busy, used))
    smi.wait()


def sample(root: psutil.Process, samples: Samples, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            samples.rss.append((time.time(), tree_rss_mb(root)))
        except psutil.Error:
            return
        stop.wait(0.25)


def make_dataset(scale: float, out: Path, seed: int, shape: str = "release") -> tuple[Path, float]:
    """The release's counts times ``scale``; a dense dataset keeps its products and pairs on
    fewer scenes (2-5 pairs each)."""
    sizes = {k: max(1, round(v * scale)) for k, v in FULL_SCALE.items()}
    if shape == "dense":
        sizes["scenes"] = round(sizes["pairs"] / 3)
    start = time.perf_counter()
    generate_dataset(GeneratorConfig(**sizes, shape=shape, seed=seed), out)
    return out, time.perf_counter() - start


def environment(data: Path, work: Path, device: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STL_", "MLFLOW_", "DAGSTER_"))}
    return env | {
        "STL_DATA_DIR": str(work / "stl_data"),
        "DAGSTER_HOME": str(work / "dagster_home"),
        "STL_PAIRS_PATH": str(data / "fashion.json"),
        "STL_CATEGORIES_PATH": str(data / "fashion-cat.json"),
        "STL_IMAGE_URL_TEMPLATE": (data / "images").absolute().as_uri() + "/{signature}.jpg",
        "STL_BACKBONE": "tf_efficientnet_lite0",
        "STL_BACKBONE_WEIGHTS": "packaged",
        "STL_BACKBONE_IMAGE_SIZE": "128",
        "STL_DEVICE": device,
    }


def run_config(args: argparse.Namespace) -> dict:
    device_config: dict = {"precision": args.precision}
    if args.workers is not None:
        device_config["num_workers"] = args.workers
    config: dict = {"resources": {"torch_device": {"config": device_config}}}
    if args.epochs is not None:
        config["ops"] = {spec.asset: {"config": {"epochs": args.epochs}} for spec in MODELS}
    return config


# The in-process executor, as ``make demo`` runs the full job.
IN_PROCESS = """
import sys, yaml, dagster as dg
from stl_pipeline.demo import execute_in_this_process
with dg.DagsterInstance.get() as instance:
    with execute_in_this_process(yaml.safe_load(open(sys.argv[1])), instance) as result:
        sys.exit(0 if result.success else 1)
"""


def command(executor: str, config_path: Path) -> list[str]:
    """``multiprocess``: the dagster CLI with the code location's executor (each step in its
    own process, as runs launched from the UI); ``in_process``: every step in one process."""
    if executor == "in_process":
        return [sys.executable, "-c", IN_PROCESS, str(config_path)]
    dagster = str(Path(sys.executable).with_name("dagster"))
    return [
        dagster,
        "job",
        "execute",
        "-m",
        "stl_pipeline.definitions",
        "-j",
        JOB,
        "-c",
        str(config_path),
    ]


def step_windows(
    instance, run_id: str
) -> tuple[dict[str, list[float]], dict[str, list[str]], dict[str, str]]:
    """Per step: [start, end]; the assets each asset step made; the asset each check step guards."""
    windows: dict[str, list[float]] = {}
    made: dict[str, list[str]] = {}
    checked: dict[str, str] = {}
    for entry in instance.all_logs(run_id):
        event, step = entry.dagster_event, entry.step_key
        if event is None or step is None:
            continue
        kind = event.event_type_value
        if kind == "STEP_START":
            windows[step] = [entry.timestamp, entry.timestamp]
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and step in windows:
            windows[step][1] = entry.timestamp
        elif kind == "ASSET_MATERIALIZATION":  # once per partition of a partitioned asset
            assets = made.setdefault(step, [])
            if event.asset_key.to_user_string() not in assets:
                assets.append(event.asset_key.to_user_string())
        elif kind == "ASSET_CHECK_EVALUATION":
            checked[step] = event.event_specific_data.asset_key.to_user_string()
    return windows, made, checked


def throughput(metadata: dict, seconds: float) -> str:
    if "images_per_second" in metadata and metadata.get("computed"):
        return f"{metadata['images_per_second']:,.0f} img/s ({metadata['computed']:,} computed)"
    if "epochs_run" in metadata:
        epochs = metadata["epochs_run"]
        per_epoch = metadata.get("seconds_per_epoch") or seconds / max(1, epochs)
        return f"{epochs} epochs, {per_epoch:.2f} s/epoch, best {metadata.get('best_epoch')}"
    if "images_per_second" in metadata:
        return f"{metadata['images_per_second']:,.0f} img/s"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.1, help="share of the release's size to generate")
    parser.add_argument(
        "--data", type=Path, help="an STL-format dataset (fashion.json, fashion-cat.json, images/)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shape", default="release", choices=SHAPES, help="generated scenes' shape (stl-generate --shape)"
    )
    parser.add_argument("--device", default="auto", help="STL_DEVICE: auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--workers", type=int, help="data-loader processes (default: the resource's)")
    parser.add_argument("--executor", default="in_process", choices=["in_process", "multiprocess"])
    parser.add_argument("--epochs", type=int, help="cap every trained model's epochs (default: its own)")
    parser.add_argument(
        "--work", type=Path, help="where the run writes (default: a temporary folder, removed)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="stl-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        generated = None
        data = args.data
        if data is None:
            data, generated = make_dataset(args.scale, work / "dataset", args.seed, args.shape)
            print(f"Generated {args.shape} scale {args.scale} into {data} in {generated:.1f} s", flush=True)
        env = environment(data, work, args.device)
        Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(__file__).parents[1] / "instance" / "dagster.yaml", env["DAGSTER_HOME"])
        config_path = work / "run_config.yaml"
        config_path.write_text(yaml.safe_dump(run_config(args)))
        samples, stop = Samples(), threading.Event()
        start = time.time()
        with open(work / "run.log", "wb") as log:
            child = subprocess.Popen(
                command(args.executor, config_path), env=env, stdout=log, stderr=subprocess.STDOUT
            )
            samplers = [threading.Thread(target=sample, args=(psutil.Process(child.pid), samples, stop))]
            if args.device.startswith(("cuda", "auto")):
                samplers.append(threading.Thread(target=sample_gpu, args=(samples, stop)))
            for sampler in samplers:
                sampler.start()
            code = child.wait()
            stop.set()
            for sampler in samplers:
                sampler.join()
        total = time.time() - start
        return report(args, env, work, samples, total, generated, code)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace,
    env: dict[str, str],
    work: Path,
    samples: Samples,
    total: float,
    generated: float | None,
    code: int,
) -> int:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            print(f"no run was recorded; see {work / 'run.log'}")
            return 1
        run = runs[0]
        windows, made, checked = step_windows(instance, run.run_id)
        metadata = {}
        for asset in {a for assets in made.values() for a in assets}:
            record = instance.get_latest_materialization_event(dg.AssetKey(asset))
            found = record.asset_materialization.metadata if record else {}
            metadata[asset] = {k: v.value for k, v in found.items()}
    step_of = {asset: step for step, assets in made.items() for asset in assets}
    rows, assets = [], {}
    for step, (begin, end) in windows.items():
        if step in checked:
            continue
        outputs = made.get(step, [])
        label = f"{step} ({', '.join(outputs)})" if len(outputs) > 1 else outputs[0] if outputs else step
        checks = [s for s, asset in checked.items() if step_of.get(asset) == step and s in windows]
        check_seconds = sum(windows[s][1] - windows[s][0] for s in checks)
        last = max([end, *(windows[s][1] for s in checks)])
        peak, busy, gpu_mb = samples.during(begin, last)
        assets[label] = round(end - begin, 2)
        rows.append(
            [
                label,
                f"{end - begin:.1f}",
                f"{len(checks)} / {check_seconds:.1f}" if checks else "",
                throughput(metadata.get(outputs[0], {}) if outputs else {}, end - begin),
                f"{peak:,.0f}",
                "" if busy is None else f"{busy:.0f}%",
                "" if gpu_mb is None else f"{gpu_mb:,.0f}",
            ]
        )
    peak_rss = max((mb for _, mb in samples.rss), default=0.0)
    print(f"\n{JOB} run {run.run_id[:8]}: {run.status.value}, exit code {code}; {args.executor} executor")
    print(
        f"Dataset: {args.data or f'generated, {args.shape}, at scale {args.scale}'}"
        + (f" ({generated:.1f} s to generate, not counted below)" if generated else "")
    )
    print(f"Lineage: {total:.1f} s in all, peak RSS of the process tree {peak_rss:,.0f} MB\n")
    headers = ["asset", "seconds", "checks / s", "throughput", "peak RSS MB", "GPU busy", "GPU MB"]
    print(tabulate(rows, headers=headers))
    report_path = asset_path(Path(env["STL_DATA_DIR"]), "retrieval_report")
    retrieval = None
    if report_path.exists():
        table = pd.read_parquet(report_path)
        retrieval = table[table["split"] == "test"].reset_index(drop=True)
        print("\nRetrieval report, held-out test scenes, same-category pool (95% bootstrap intervals):\n")
        print(tabulate(shown(table), headers="keys", showindex=False, floatfmt=".3f"))
    if args.json:
        result = {
            "scale": None if args.data else args.scale,
            "shape": None if args.data else args.shape,
            "device": args.device,
            "executor": args.executor,
            "epochs_cap": args.epochs,
            "succeeded": code == 0,
            "generate_seconds": generated,
            "total_seconds": round(total, 2),
            "peak_rss_mb": round(peak_rss, 1),
            "assets": assets,
            "training": {
                asset: {k: meta[k] for k in ("epochs_run", "best_epoch", "seconds_per_epoch") if k in meta}
                for asset, meta in metadata.items()
                if "epochs_run" in meta
            },
            "retrieval": [] if retrieval is None else retrieval.to_dict(orient="records"),
        }
        args.json.write_text(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
