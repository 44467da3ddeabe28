"""The GNN's recipe, chosen on validation: train ``hm_sage_model`` with each configuration on
one graph and print its best validation MAP@12 beside the heuristics' on the same week. The
test week is never scored here.

    .venv/bin/python benchmarks/personalized.py --scale 0.1 --keep DIR --until graph
    .venv/bin/python benchmarks/personalized_recipe.py DIR --set lr=0.03 \\
        --set epochs=200,patience=10,hidden=128 [--device cuda] [--json PATH]

Each ``--set`` is one configuration: comma-separated overrides of ``HmTrainConfig``; the
defaults are always trained first. ``--json`` writes every finished run's figures and history.
"""

import argparse
import json
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path


def parse_overrides(text: str) -> dict:
    """``key=value,...`` as ``HmTrainConfig`` fields of the right types."""
    from stl_pipeline.personalized.config import HmTrainConfig

    types = {f.name: type(getattr(HmTrainConfig(), f.name)) for f in fields(HmTrainConfig)}
    found = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--set {text!r}: {key!r} is not an HmTrainConfig field ({', '.join(types)})")
        kind = types[key]
        if kind is bool:
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--set {text!r}: {key} takes true or false, not {value!r}")
            found[key] = value.lower() == "true"
        else:
            found[key] = kind(value)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a benchmarks/personalized.py --keep folder, past its graph")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="one configuration's overrides"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configs = [{}] + [parse_overrides(s) for s in args.sets]

    from stl_pipeline.device import resolve_device
    from stl_pipeline.graph.store import load_graph
    from stl_pipeline.personalized.config import HmTrainConfig
    from stl_pipeline.personalized.model import train_hm

    device = resolve_device(args.device)
    graph, info = load_graph(args.work / "graph.safetensors")
    graph.info = info
    reference = heuristics(graph)
    runs = []
    for changes in configs:
        config = replace(HmTrainConfig(), **changes)
        with tempfile.TemporaryDirectory(prefix="stl-recipe-") as checkpoints:
            began = time.perf_counter()
            result = train_hm(graph, config, device, Path(checkpoints))
        runs.append(
            {
                "set": ",".join(f"{k}={v}" for k, v in changes.items()) or "defaults",
                "val_map@12": result.best_val_map,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "seconds": time.perf_counter() - began,
                "history": result.history,
            }
        )
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "history"}), flush=True)
        if args.json:  # after each run, so a run cut short keeps the finished ones
            args.json.write_text(json.dumps({"heuristics": reference, "runs": runs}, indent=1, default=float))
    best = max(reference, key=reference.get)
    print(
        f"\nValidation MAP@12 on {args.work}, device {device}; heuristics: "
        + ", ".join(f"{m} {v:.4f}" for m, v in reference.items())
        + "\n"
    )
    print(f"| configuration | val MAP@12 | vs {best} | best epoch | epochs run | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        ratio = run["val_map@12"] / reference[best]
        print(
            f"| {run['set']} | {run['val_map@12']:.4f} | {ratio:.2f}x | {run['best_epoch']} | "
            f"{run['epochs_run']} | {run['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
