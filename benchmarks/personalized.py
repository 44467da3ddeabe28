"""The personalized group, stage by stage: time and peak memory of each asset's work, and the
report's table (every method's MAP@12 and recall@12, the candidates' recall per generator,
the ranker's feature importances).

Each stage runs in a fresh process, reading the previous stage's files, so its peak resident
memory is its own; on CUDA the GPU's peak allocation is reported too. Ingestion is compared
with its floor, pyarrow reading the same transactions file with no validation.

    .venv/bin/python benchmarks/personalized.py --demo          # the demo's size
    .venv/bin/python benchmarks/personalized.py --scale 0.1     # a tenth of the release
    .venv/bin/python benchmarks/personalized.py --scale 1 --epochs 4 --train-windows 2 --loss bce
        # the release (1.37M customers, 105,542 articles, 31.8M purchases) on 2 CPU cores:
        # the GNN trains 4 epochs over 2 weeks with the binary loss, which learns faster in so
        # few steps; on a GPU host drop all three for the defaults
    ... --json PATH   # total_seconds, peak_rss_mb, stages, report, candidate_recall, importance
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

MODEL_FILES = {"hm_sage": "model.pt", "hm_ranker": "ranker.pt"}
STAGES = ("generate", "read_csv_floor", "ingest", "graph", "train", "ranker", "report", "recommend")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _records(work: Path) -> dict[str, dict]:
    """The models this run trained (``--until train`` then ``--from report`` skips the ranker)."""
    import torch

    return {
        m: torch.load(work / f, weights_only=True) for m, f in MODEL_FILES.items() if (work / f).is_file()
    }


def stage(
    name: str,
    work: Path,
    scale: float | None,
    device_spec: str,
    epochs: int | None,
    windows: int | None,
    loss: str | None,
) -> dict:
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

            changes = {"epochs": epochs, "train_windows": windows, "loss": loss}
            config = replace(HmTrainConfig(), **{k: v for k, v in changes.items() if v is not None})
            result = train_hm(graph, config, device, work / "checkpoints")
            torch.save(model_record(result, graph, config, "benchmark"), work / "model.pt")
            (work / "train_history.json").write_text(json.dumps(result.history, default=float))
            detail = (
                f"{result.epochs_run} epochs over {config.train_windows} weeks, best at "
                f"{result.best_epoch}, val MAP@12 "
                f"{result.best_val_map:.4f} (popularity {result.popularity_val_map:.4f})"
            )
        elif name == "ranker":
            from stl_pipeline.personalized.config import RankerConfig
            from stl_pipeline.personalized.ranker import ranker_record, train_ranker

            sage = torch.load(work / "model.pt", weights_only=True)
            config = RankerConfig()
            result = train_ranker(graph, sage, config, device)
            torch.save(ranker_record(result, graph, config, sage, "benchmark"), work / "ranker.pt")
            detail = (
                f"{result.training_rows:,} candidates, {result.best_iteration} trees, "
                f"best val MAP@12 {result.best_val_map:.4f}"
            )
        elif name == "report":
            from stl_pipeline.personalized.report import report_table

            records = _records(work)
            table, recall = report_table(graph, records, customers, articles, work / "data", device)
            table.to_csv(work / "report.csv", index=False)
            if len(recall):  # the ranker's candidates, when this run trained one
                recall.to_csv(work / "recall.csv", index=False)
            test = table[table["window"] == "test"].set_index("method")
            detail = "test MAP@12 " + ", ".join(f"{m} {test.loc[m, 'MAP@12']:.4f}" for m in test.index)
        else:
            from stl_pipeline.personalized.recommend import recommend

            report = pd.read_csv(work / "report.csv")
            val = report[report["window"] == "val"].set_index("method")["MAP@12"]
            records = _records(work)
            method = max(records, key=lambda m: val[m])  # as hm_champion picks
            record = records[method]
            lists, _ = recommend(
                graph,
                record,
                pd.Index(customers["customer_id"]),
                pd.Index(articles["article_id"]),
                90,
                device,
            )
            detail = f"{lists['customer_id'].nunique():,} customers' top-12 by {method}"
        gpu = _gpu_peak_mb(device)
    return {
        "stage": name,
        "seconds": time.perf_counter() - began,
        "peak_mb": peak_mb(),
        "gpu_peak_mb": gpu,
        "detail": detail,
    }


def _results(work: Path) -> dict:
    """The report's rows (``map@12`` being MAP@12, RelBench's definition), the candidates' recall
    and the ranker's feature importances, from a finished run's files."""
    import pandas as pd

    found: dict = {}
    if (work / "report.csv").is_file():
        report = pd.read_csv(work / "report.csv").rename(columns={"window": "split"})
        report["map@12"] = report["MAP@12"]
        found["report"] = report.to_dict("records")
    if (work / "recall.csv").is_file():
        found["candidate_recall"] = pd.read_csv(work / "recall.csv").to_dict("records")
    if (work / "ranker.pt").is_file():
        import torch

        from stl_pipeline.personalized.ranker import importance_table

        importance = importance_table(torch.load(work / "ranker.pt", weights_only=True)["importance"], 50)
        found["importance"] = importance.to_dict("records")
    return found


def _print_results(found: dict) -> None:
    import pandas as pd

    if "report" in found:
        report = pd.DataFrame(found["report"])
        columns = [
            "split",
            "method",
            "map@12",
            "MAP@12_gain_low",
            "MAP@12_gain_high",
            "Recall@12",
            "customers",
        ]
        print("\nMAP@12 (RelBench's), its paired 95% interval against the best heuristic, recall@12\n")
        print(report[columns].round(4).to_markdown(index=False))
    if "candidate_recall" in found:
        print("\nCandidate recall: the share of the window's purchases among the candidates\n")
        print(pd.DataFrame(found["candidate_recall"]).set_index("window").T.round(4).to_markdown())
    if "importance" in found:
        print("\nThe ranker's feature importance (share of total gain), top 15\n")
        print(pd.DataFrame(found["importance"]).head(15).round(4).to_markdown(index=False))


def main() -> None:
    from stl_pipeline.personalized.config import LOSSES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--demo", action="store_true", help="the demo's generated size")
    size.add_argument("--scale", type=float, help="a fraction of the release's size (1: all of it)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, help="the GNN's training epochs (default: the asset's)")
    parser.add_argument("--train-windows", type=int, help="the GNN's training weeks (default: the asset's)")
    parser.add_argument("--loss", choices=LOSSES, help="the GNN's loss (default: the asset's)")
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    parser.add_argument(
        "--from", dest="first", choices=STAGES, default=STAGES[0], help="resume a --keep folder at this stage"
    )
    parser.add_argument(
        "--until",
        choices=STAGES,
        default=STAGES[-1],
        help="stop after this stage (e.g. graph)",
    )
    parser.add_argument(
        "--json", type=Path, help="write the stages and the report here, for CI and dashboards"
    )
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale = None if args.demo else args.scale
    if args.stage:
        print(
            json.dumps(
                stage(args.stage, args.work, scale, args.device, args.epochs, args.train_windows, args.loss)
            )
        )
        return
    if args.first != STAGES[0] and args.keep is None:
        parser.error("--from needs the --keep folder of an earlier run")
    work = args.keep or Path(tempfile.mkdtemp(prefix="stl-bench-hm-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # Each finished stage's row is kept in the folder, so a run resumed --from a stage
        # reports the earlier stages too.
        log = work / "stages.jsonl"
        kept = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        rows = [r for r in kept if STAGES.index(r["stage"]) < STAGES.index(args.first)]
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name in STAGES[STAGES.index(args.first) : STAGES.index(args.until) + 1]:
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
            for flag, value in (
                ("--epochs", args.epochs),
                ("--train-windows", args.train_windows),
                ("--loss", args.loss),
            ):
                if value is not None:
                    command += [flag, str(value)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"stage {name} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            with log.open("a") as out:
                out.write(json.dumps(rows[-1]) + "\n")
            print(f"{name} done in {rows[-1]['seconds']:.1f} s", file=sys.stderr)
        found = _results(work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    floor = next((r["seconds"] for r in rows if r["stage"] == "read_csv_floor"), None)
    size_text = "demo size" if args.demo else f"scale {args.scale:g} of the release"
    print(f"\nPersonalized group, {size_text}, device {args.device}\n")
    print("| stage | seconds | vs floor | peak RSS MB | GPU peak MB | detail |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        ratio = f"{row['seconds'] / floor:.1f}x" if row["stage"] == "ingest" and floor else ""
        gpu = f"{row['gpu_peak_mb']:.0f}" if row["gpu_peak_mb"] is not None else "-"
        cells = [row["stage"], f"{row['seconds']:.1f}", ratio, f"{row['peak_mb']:.0f}", gpu, row["detail"]]
        print("| " + " | ".join(cells) + " |")
    assets = [r for r in rows if r["stage"] not in ("generate", "read_csv_floor")]
    total = sum(r["seconds"] for r in assets)
    print(f"\nThe group's assets ({assets[0]['stage'] if assets else '-'} to {args.until}): {total:.1f} s")
    _print_results(found)
    if args.json:
        summary = {
            "size": "demo" if args.demo else args.scale,
            "device": args.device,
            "total_seconds": total,
            "peak_rss_mb": max((r["peak_mb"] for r in assets), default=0.0),
            "stages": {r["stage"]: {"seconds": r["seconds"], "peak_rss_mb": r["peak_mb"]} for r in rows},
            **found,
        }
        args.json.write_text(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
