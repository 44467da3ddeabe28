"""How each method's quality moves with the size of the data: the lineage at several scales.

Runs ``benchmarks/end_to_end.py`` at each ``--scales`` (shares of the release's size, the
release's shape unless ``--shape dense``) on the same seed, and prints, per scale and
method, test HR@10 and MRR on the same-category pool with their 95% intervals for Shop the
Look and for Complete the Look by context (``all``, ``annotated``: other garments of the
scene are annotated, ``image_only``: Kang et al.'s setting), the share of the room
between popularity and the oracle each recovers on HR@10, its HR@10 lead over the method
without a graph it leads least surely (paired per query, with its interval), and each
trained model's epochs and training seconds. The plot (``--plot``) draws the recovered share on image-only and
all Complete-the-Look queries against the catalogue's size.

A second table asks what the frozen vectors know at each size: a linear probe
(scikit-learn's logistic regression, trained on the train pairs, scored on the test
pairs) predicts the scene's latent style from the Complete-the-Look region's vector (all
queries and image-only ones) and from the whole scene's, and a product's style from its
image and from its Shop-the-Look crop, against the majority class. A model cannot read
from the region more of a look than the probe finds there.

    .venv/bin/python benchmarks/learning_curve.py --scales 0.01 0.03 0.1 0.3 \\
        [--shape release] [--plot docs/learning_curve.png] [--json PATH] [--device cpu]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from stl_pipeline.catalogue import asset_path
from stl_pipeline.evaluation.report import MARGIN_COLUMNS, lead_text
from stl_pipeline.features.partitions import PARTITIONS
from stl_pipeline.generate import FULL_SCALE, SHAPES, STYLES_FILE
from stl_pipeline.registry import MODEL_ASSETS
from stl_pipeline.vectors import load_partitions

ROOT = Path(__file__).resolve().parents[1]
ASSET_OF = MODEL_ASSETS
SHOWN = [("stl", "all"), ("ctl", "all"), ("ctl", "image_only"), ("ctl", "annotated")]


def run_scale(scale: float, shape: str, device: str, seed: int, work: Path) -> dict:
    """end_to_end.py's JSON at ``scale``; its run's files stay in ``work``."""
    out = work / "result.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "end_to_end.py"),
        *("--scale", str(scale), "--shape", shape, "--device", device, "--seed", str(seed)),
        *("--work", str(work), "--json", str(out)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode or not out.exists():
        raise SystemExit(f"scale {scale} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    print(done.stdout, flush=True)
    return json.loads(out.read_text())


def probes(work: Path, scale: float) -> list[dict]:
    """Linear probes of the latent style on the frozen vectors of the run in ``work``."""
    from sklearn.linear_model import LogisticRegression

    data = work / "stl_data"
    truth = json.loads((work / "dataset" / STYLES_FILE).read_text())
    pairs = pd.read_parquet(asset_path(data, "stl_pairs"))
    pairs["scene_style"] = pairs["scene"].map(truth["scenes"])
    pairs["product_style"] = pairs["product"].map(truth["products"])
    single = pairs["scene"].map(pairs.groupby("scene").size()) == 1
    split = pairs["split"].astype(str)
    vectors = {
        asset: load_partitions(asset_path(data, asset), PARTITIONS)
        for asset in ("ctl_scene_embeddings", "scene_embeddings", "product_embeddings", "stl_crop_embeddings")
    }
    cases = [
        ("CTL region -> scene style", "ctl_scene_embeddings", "pair_id", "scene_style", split == "test"),
        (
            "CTL region -> scene style, image only",
            "ctl_scene_embeddings",
            "pair_id",
            "scene_style",
            (split == "test") & single,
        ),
        ("whole scene -> scene style", "scene_embeddings", "scene", "scene_style", split == "test"),
        ("product image -> product style", "product_embeddings", "product", "product_style", split == "test"),
        ("STL crop -> product style", "stl_crop_embeddings", "pair_id", "product_style", split == "test"),
    ]
    rows = []
    for name, asset, key, label, tested in cases:
        embeddings = vectors[asset]
        train = (split == "train") & pairs[key].isin(embeddings.keys)
        tested = tested & pairs[key].isin(embeddings.keys)
        probe = LogisticRegression(max_iter=2000)
        probe.fit(embeddings.take(list(pairs.loc[train, key])), pairs.loc[train, label])
        truth_test = pairs.loc[tested, label]
        accuracy = probe.score(embeddings.take(list(pairs.loc[tested, key])), truth_test)
        rows.append(
            {
                "scale": scale,
                "probe": name,
                "train": int(train.sum()),
                "test": int(tested.sum()),
                "accuracy": round(float(accuracy), 3),
                "majority": round(float(truth_test.value_counts(normalize=True).max()), 3),
            }
        )
    return rows


def rows_of(result: dict, scale: float) -> list[dict]:
    """One row per method and (task, context) at ``scale``: the figures the table shows."""
    table = pd.DataFrame(result["retrieval"])
    table = table[table["pool"] == "same_category"]
    rows = []
    for (method, task, context), row in table.set_index(["method", "task", "context"]).iterrows():
        asset = ASSET_OF.get(method)
        training = result["training"].get(asset, {})
        rows.append(
            {
                "scale": scale,
                "products": round(FULL_SCALE["products"] * scale),
                "method": method,
                "task": task,
                "context": context,
                "queries": int(row["queries"]),
                **{m: row[m] for m in ("HR@10", "HR@10_low", "HR@10_high", "MRR", "MRR_low", "MRR_high")},
                "recovered": row.get("recovered_HR@10"),
                **{m: row.get(m) for m in (*MARGIN_COLUMNS, "margin_over")},
                "epochs": training.get("epochs_run"),
                "train_s": result["assets"].get(asset) if asset else None,
            }
        )
    return rows


def shown_table(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows[["scale", "products", "method", "task", "context", "queries"]].copy()
    for metric in ("HR@10", "MRR"):
        out[metric] = [
            f"{v:.3f} ({lo:.3f}-{hi:.3f})"
            for v, lo, hi in zip(rows[metric], rows[f"{metric}_low"], rows[f"{metric}_high"], strict=True)
        ]
    out["recovered"] = rows["recovered"].round(2)
    out["lead over no graph (paired)"] = lead_text(rows)
    out["epochs"] = rows["epochs"].astype("Int64")
    out["train s"] = rows["train_s"].round(0).astype("Int64")
    order = {key: i for i, key in enumerate(SHOWN)}
    out["_order"] = [order.get((t, c), 9) for t, c in zip(out["task"], out["context"], strict=True)]
    return out.sort_values(["_order", "scale"], kind="stable").drop(columns="_order")


def plot(rows: pd.DataFrame, path: Path, shape: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    methods = [m for m in rows["method"].unique() if m not in ("random", "popularity", "oracle")]
    for axis, context in zip(figure.subplots(1, 2, sharey=True), ("image_only", "all"), strict=True):
        ctl = rows[(rows["task"] == "ctl") & (rows["context"] == context)]
        for method in methods:
            own = ctl[ctl["method"] == method].sort_values("products")
            axis.plot(own["products"], own["recovered"], marker="o", label=method)
        axis.axhline(0.6, color="grey", linestyle=":", linewidth=1)
        axis.set_xscale("log")
        axis.set_xlabel("products in the catalogue")
        axis.set_title(f"Complete the Look, {context.replace('_', ' ')} queries")
        axis.grid(alpha=0.3)
    first = figure.axes[0]
    first.set_ylabel("share of popularity-to-oracle HR@10 recovered")
    first.legend(fontsize=8)
    figure.suptitle(f"Test HR@10 (same-category pool), {shape}-shaped generated data")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100, bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--shape", default="release", choices=SHAPES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()

    found, probed = [], []
    for scale in args.scales:
        with tempfile.TemporaryDirectory(prefix=f"stl-curve-{scale}-") as work:
            found += rows_of(run_scale(scale, args.shape, args.device, args.seed, Path(work)), scale)
            probed += probes(Path(work), scale)
    rows = pd.DataFrame(found)
    print(f"\nLearning curve, {args.shape}-shaped data, test scenes, same-category pool (95% intervals):\n")
    print(tabulate(shown_table(rows), headers="keys", showindex=False))
    print("\nLinear probes of the latent style on the frozen vectors (test pairs):\n")
    print(tabulate(probed, headers="keys"))
    if args.plot:
        plot(rows, args.plot, args.shape)
        print(f"\nplot: {args.plot}")
    if args.json:
        result = {"rows": rows.to_dict(orient="records"), "probes": probed}
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
