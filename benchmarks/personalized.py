"""The personalized group, stage by stage: time and peak memory of each asset's work.

Each stage runs in a fresh process, reading the previous stage's files, so its peak resident
memory is its own; on CUDA the GPU's peak allocation is reported too. Ingestion is compared
with its floor, pyarrow reading the same transactions file with no validation.

    .venv/bin/python benchmarks/personalized.py --demo          # the demo's size
    .venv/bin/python benchmarks/personalized.py --scale 0.1     # a tenth of the release
    .venv/bin/python benchmarks/personalized.py --scale 1 --device cuda   # the release (1.37M
        customers, 105,542 articles, 31.8M purchases) on a GPU host
    .venv/bin/python benchmarks/personalized.py --scale 1 --until graph   # its CPU-bound part
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

STAGES = ("generate", "read_csv_floor", "ingest", "graph", "train", "report", "recommend")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def stage(name: str, work: Path, scale: float | None, device_spec: str, epochs: int | None) -> dict:
    import pandas as pd

    from stl_pipeline.personalized.files import HM_FILES

    data = work / "data"
    paths = [data / f for f in HM_FILES]
    began = time.perf_counter()
    gpu = None
    if name == "generate":
        from stl_pipeline.personalized.generate import FULL_SCALE, HmConfig, generate_hm

        if scale is None:
            config = HmConfig()
        else:
            sizes = {k: max(1, round(v * scale)) for k, v in FULL_SCALE.items() if k != "days"}
            config = HmConfig(**sizes, days=FULL_SCALE["days"])
        summary = generate_hm(config, data)
        detail = ", ".join(f"{summary[k]:,} {k}" for k in ("customers", "articles", "purchases"))
    elif name == "read_csv_floor":
        import pyarrow.csv as pacsv

        rows = sum(batch.num_rows for batch in pacsv.open_csv(paths[0]))
        detail = f"{rows:,} lines streamed, no validation"
    elif name == "ingest":
        from stl_pipeline.personalized.ingest import ingest_hm

        tables = ingest_hm(*paths)
        for table in ("transactions", "articles", "customers"):
            getattr(tables, table).to_parquet(work / f"{table}.parquet", index=False)
        (work / "windows.json").write_text(json.dumps(tables.windows.as_dict()))
        detail = f"{len(tables.transactions):,} purchases, {len(tables.quarantine)} quarantined"
    elif name == "graph":
        from datetime import date

        from stl_pipeline.graph.store import save_graph
        from stl_pipeline.personalized.graph import BUYS, build_hm_graph
        from stl_pipeline.personalized.split import Windows

        windows = Windows(
            **{k: date.fromisoformat(v) for k, v in json.loads((work / "windows.json").read_text()).items()}
        )
        tables = [pd.read_parquet(work / f"{t}.parquet") for t in ("transactions", "articles", "customers")]
        graph = build_hm_graph(*tables, windows)
        save_graph(graph, work / "graph.safetensors", info=graph.info)
        detail = f"{graph[BUYS].edge_index.shape[1]:,} purchase edges and their reverse"
    else:
        import torch

        from stl_pipeline.device import resolve_device
        from stl_pipeline.graph.store import load_graph

        device = resolve_device(device_spec)
        graph, info = load_graph(work / "graph.safetensors")
        graph.info = info
        articles = pd.read_parquet(work / "articles.parquet", columns=["article_id"])
        customers = pd.read_parquet(work / "customers.parquet", columns=["customer_id"])
        began = time.perf_counter()  # the graph's load is not the stage's work
        if name == "train":
            from dataclasses import replace

            from stl_pipeline.personalized.config import HmTrainConfig
            from stl_pipeline.personalized.model import model_record, train_hm

            config = HmTrainConfig() if epochs is None else replace(HmTrainConfig(), epochs=epochs)
            result = train_hm(graph, config, device, work / "checkpoints")
            torch.save(model_record(result, graph, config, "benchmark"), work / "model.pt")
            detail = (
                f"{result.epochs_run} epochs, best val MAP@12 {result.best_val_map:.4f} "
                f"(popularity {result.popularity_val_map:.4f})"
            )
        elif name == "report":
            from stl_pipeline.personalized.report import report_table

            record = torch.load(work / "model.pt", weights_only=True)
            table = report_table(graph, record, customers, articles, work / "data", device)
            table.to_csv(work / "report.csv", index=False)
            test = table[table["window"] == "test"].set_index("method")
            detail = f"test MAP@12 hm_sage {test.loc['hm_sage', 'MAP@12']:.4f}, " + ", ".join(
                f"{m} {test.loc[m, 'MAP@12']:.4f}" for m in test.index if m != "hm_sage"
            )
        else:
            from stl_pipeline.personalized.model import load_model
            from stl_pipeline.personalized.recommend import recommend

            record = torch.load(work / "model.pt", weights_only=True)
            model = load_model(record, graph).to(device)
            lists, _ = recommend(
                graph, model, pd.Index(customers["customer_id"]), pd.Index(articles["article_id"]), 90, device
            )
            detail = f"{lists['customer_id'].nunique():,} customers' top-12"
        gpu = _gpu_peak_mb(device)
    return {
        "stage": name,
        "seconds": time.perf_counter() - began,
        "peak_mb": peak_mb(),
        "gpu_peak_mb": gpu,
        "detail": detail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--demo", action="store_true", help="the demo's generated size")
    size.add_argument("--scale", type=float, help="a fraction of the release's size (1: all of it)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the asset's)")
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    parser.add_argument(
        "--until",
        choices=STAGES,
        default=STAGES[-1],
        help="stop after this stage (e.g. graph, on a CPU host)",
    )
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale = None if args.demo else args.scale
    if args.stage:
        print(json.dumps(stage(args.stage, args.work, scale, args.device, args.epochs)))
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="stl-bench-hm-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = []
        for name in STAGES[: STAGES.index(args.until) + 1]:
            command = [
                sys.executable,
                __file__,
                "--stage",
                name,
                "--work",
                str(work),
                "--device",
                args.device,
            ]
            command += ["--demo"] if args.demo else ["--scale", str(args.scale)]
            if args.epochs is not None:
                command += ["--epochs", str(args.epochs)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"stage {name} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{name} done in {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    floor = next(r["seconds"] for r in rows if r["stage"] == "read_csv_floor")
    size_text = "demo size" if args.demo else f"scale {args.scale:g} of the release"
    print(f"\nPersonalized group, {size_text}, device {args.device}\n")
    print("| stage | seconds | vs floor | peak RSS MB | GPU peak MB | detail |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        ratio = f"{row['seconds'] / floor:.1f}x" if row["stage"] == "ingest" else ""
        gpu = f"{row['gpu_peak_mb']:.0f}" if row["gpu_peak_mb"] is not None else "-"
        cells = [row["stage"], f"{row['seconds']:.1f}", ratio, f"{row['peak_mb']:.0f}", gpu, row["detail"]]
        print("| " + " | ".join(cells) + " |")
    total = sum(r["seconds"] for r in rows if r["stage"] not in ("generate", "read_csv_floor"))
    print(f"\nThe group's assets (ingest to {args.until}): {total:.1f} s")


if __name__ == "__main__":
    main()
