"""The group's recipes, chosen on validation: train ``hm_sage_model`` (or, with ``--ranker``,
``hm_ranker_model``) with each configuration on one graph and print its best validation
MAP@12 beside the heuristics' on the same week. The test week is never scored here.

    .venv/bin/python benchmarks/personalized.py --scale 0.1 --keep DIR --until graph
    .venv/bin/python benchmarks/personalized_recipe.py DIR --set lr=0.03 \\
        --set epochs=200,patience=10,hidden=128 [--device cuda] [--json PATH]
    .venv/bin/python benchmarks/personalized_recipe.py DIR --ranker --set objective=lambdarank

Each ``--set`` is one configuration: comma-separated overrides of ``HmTrainConfig`` (with
``--ranker``, of ``RankerConfig``, the GNN fixed: the folder's ``model.pt``, or one trained
with the defaults where there is none); the defaults are always trained first. ``--json``
writes every finished run's figures and history.
"""

import argparse
import json
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path


def parse_overrides(text: str, kind: type) -> dict:
    """``key=value,...`` as fields of the dataclass ``kind``, of the right types."""
    types = {f.name: type(getattr(kind(), f.name)) for f in fields(kind)}
    found = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--set {text!r}: {key!r} is not a {kind.__name__} field ({', '.join(types)})")
        if types[key] is bool:
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--set {text!r}: {key} takes true or false, not {value!r}")
            found[key] = value.lower() == "true"
        else:
            found[key] = types[key](value)
    return found


def heuristics(graph) -> dict[str, float]:
    """The heuristics' MAP@12 on the validation week, from its own snapshot."""
    import torch

    from stl_pipeline.personalized.evaluate import baselines, evaluate
    from stl_pipeline.personalized.windows import make_window

    window = make_window(graph, graph.info["val_start_day"], graph.info["window_days"], torch.device("cpu"))
    return {
        m: evaluate(s, window).metrics["MAP@12"] for m, s in baselines(window, None, None, None, None).items()
    }


def train_gnn(graph, config, device):
    """``train_hm`` with its checkpoints in a folder that goes when it returns."""
    from stl_pipeline.personalized.model import train_hm

    with tempfile.TemporaryDirectory(prefix="stl-recipe-") as checkpoints:
        return train_hm(graph, config, device, Path(checkpoints))


def gnn_run(graph, changes: dict, device) -> dict:
    from stl_pipeline.personalized.config import HmTrainConfig

    result = train_gnn(graph, replace(HmTrainConfig(), **changes), device)
    return {
        "val_map@12": result.best_val_map,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "history": result.history,
    }


def fixed_gnn(graph, work: Path, device) -> dict:
    """The ranker's GNN: the folder's ``model.pt`` (benchmarks/personalized.py's), else the
    defaults trained here."""
    import torch

    from stl_pipeline.personalized.config import HmTrainConfig
    from stl_pipeline.personalized.model import model_record

    if (work / "model.pt").is_file():
        return torch.load(work / "model.pt", weights_only=True)
    print(f"no {work / 'model.pt'}: training hm_sage_model with the defaults", flush=True)
    return model_record(train_gnn(graph, HmTrainConfig(), device), graph, HmTrainConfig(), "recipe")


def ranker_run(graph, changes: dict, device, sage: dict) -> dict:
    from stl_pipeline.personalized.config import RankerConfig
    from stl_pipeline.personalized.ranker import train_ranker

    result = train_ranker(graph, sage, replace(RankerConfig(), **changes), device)
    return {
        "val_map@12": result.best_val_map,
        "best_epoch": result.best_iteration,
        "epochs_run": len(result.history),
        "training_rows": result.training_rows,
        "history": result.history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a benchmarks/personalized.py --keep folder, past its graph")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="one configuration's overrides"
    )
    parser.add_argument(
        "--ranker", action="store_true", help="tune hm_ranker_model (RankerConfig), the GNN fixed"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from stl_pipeline.personalized.config import HmTrainConfig, RankerConfig

    configs = [{}] + [parse_overrides(s, RankerConfig if args.ranker else HmTrainConfig) for s in args.sets]

    from stl_pipeline.device import resolve_device
    from stl_pipeline.graph.store import load_graph

    device = resolve_device(args.device)
    graph, info = load_graph(args.work / "graph.safetensors")
    graph.info = info
    found = {"heuristics": heuristics(graph)}
    reference = dict(found["heuristics"])  # what the table compares with
    sage = fixed_gnn(graph, args.work, device) if args.ranker else None
    if sage is not None:
        found["hm_sage"] = reference["hm_sage"] = sage["best_val_map"]  # the fixed GNN's, same week
    runs = []
    for changes in configs:
        began = time.perf_counter()
        run = ranker_run(graph, changes, device, sage) if sage else gnn_run(graph, changes, device)
        runs.append(
            {"set": ",".join(f"{k}={v}" for k, v in changes.items()) or "defaults"}
            | run
            | {"seconds": time.perf_counter() - began}
        )
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "history"}), flush=True)
        if args.json:  # after each run, so a run cut short keeps the finished ones
            args.json.write_text(json.dumps(found | {"runs": runs}, indent=1, default=float))
    best = max(reference, key=reference.get)
    step = "tree" if sage else "epoch"
    print(
        f"\nValidation MAP@12 on {args.work}, device {device}; "
        + ", ".join(f"{m} {v:.4f}" for m, v in reference.items())
        + "\n"
    )
    print(f"| configuration | val MAP@12 | vs {best} | best {step} | {step}s run | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        ratio = run["val_map@12"] / reference[best]
        print(
            f"| {run['set']} | {run['val_map@12']:.4f} | {ratio:.2f}x | {run['best_epoch']} | "
            f"{run['epochs_run']} | {run['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
