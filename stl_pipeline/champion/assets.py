"""``stl_champion`` and ``hm_champion``: each group's challenger against the model it serves.

The challenger is the group's best trained method on validation. It is scored on the same
held-out test queries (customers) as the current champion, the MLflow alias ``@champion``,
and promoted unless it is worse beyond noise (champion/decide.py). The quality gate is a
blocking check on each asset: a challenger that fails it is not promoted, and every serving
asset downstream stops. What is served is the champion's snapshot (champion/store.py), so
serving keeps answering from it while a retrain runs and after a challenger loses.
"""

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.asset_inputs import MODEL_INS
from stl_pipeline.catalogue import asset_path
from stl_pipeline.champion.decide import Decision, decide
from stl_pipeline.champion.store import (
    champion_version,
    current,
    group_dir,
    move_aliases,
    set_current,
    write_snapshot,
)
from stl_pipeline.personalized.config import REGISTERED_MODELS
from stl_pipeline.registry import MODELS, by_method
from stl_pipeline.resources import HmFiles, MlflowTracker, QualityGate, StlFiles
from stl_pipeline.vectors import Embeddings

GATE_CHECK = "challenger_passes_quality_gate"


class StlChampionConfig(dg.Config):
    metric: str = Field(
        default="HR@10",
        description="Picks the challenger on validation and compares it with the champion on test.",
    )
    task: str = Field(default="ctl", description="ctl (Complete the Look) or stl (Shop the Look).")
    margin: float = Field(
        default=0.0,
        ge=0,
        description="The challenger is kept out only if its paired 95% interval against the champion "
        "lies wholly below -margin.",
    )


def _metadata(decision: Decision, challenger: dict, serving: dict, gate: dict) -> dict:
    both = {
        "challenger": decision.challenger,
        "champion": decision.champion,
        "difference": decision.difference,
    }
    return {
        "decision": "promoted" if decision.promoted else "kept",
        "reason": decision.reason,
        "challenger": f"{challenger['method']} ({challenger['registered']} version {challenger['version']})",
        "serving": f"{serving['method']} ({serving['registered']} version {serving['version']})"
        if serving
        else "nothing yet",
        "test_queries": decision.queries,
        **{
            f"test_{decision.metric}_{name}": f"{s.mean:.4f} ({s.low:.4f}-{s.high:.4f})"
            for name, s in both.items()
            if s is not None
        },
        "gate": "passed" if gate["passed"] else f"failed: {gate['reason']}",
    }


def _conclude(
    context: dg.AssetExecutionContext,
    group: str,
    data_dir: Path,
    mlflow: MlflowTracker,
    names: list[str],
    decision: Decision,
    challenger: dict,
    record: dict,
    files: dict[str, Path],
    arrays: Callable[[], dict[str, np.ndarray]],
    gate: dict,
) -> dg.Output[dict]:
    """Promote (snapshot, then ``current.json``), move the aliases, tag both MLflow runs, and
    return what the asset stores: the decision and what is served now."""
    if decision.promoted:
        write_snapshot(data_dir, group, challenger["mlflow_run_id"], record, files, arrays())
        set_current(data_dir, group, challenger)
    tracker = mlflow.tracker()
    move_aliases(tracker.client, names, challenger["registered"], challenger["version"], decision.promoted)
    try:
        serving = current(data_dir, group)
    except FileNotFoundError:
        serving = {}
    tags = {
        "champion.decision": "promoted" if decision.promoted else "kept",
        "champion.reason": decision.reason,
        "champion.metric": decision.metric,
        "champion.challenger_score": f"{decision.challenger.mean:.4f}",
        "champion.champion_score": f"{decision.champion.mean:.4f}" if decision.champion else "none",
        "champion.serving_run": serving.get("mlflow_run_id", "none"),
    }
    tracker.existing(challenger["mlflow_run_id"]).set_tags(tags)
    if serving and serving["mlflow_run_id"] != challenger["mlflow_run_id"]:
        tracker.existing(serving["mlflow_run_id"]).set_tags(tags)
    context.log.info(f"{group} champion: {tags['champion.decision']}: {decision.reason}")
    value = {"decision": decision.as_dict(), "challenger": challenger, "serving": serving, "gate": gate}
    return dg.Output(value, metadata=_metadata(decision, challenger, serving, gate))


@dg.asset(group_name="champion", io_manager_key="model_io_manager", ins=MODEL_INS)
def stl_champion(
    context: dg.AssetExecutionContext,
    config: StlChampionConfig,
    retrieval_report: pd.DataFrame,
    stl_graph: HeteroData,
    stl_pairs: pd.DataFrame,
    stl_crop_embeddings: Embeddings,
    ctl_scene_embeddings: Embeddings,
    ctl_scene_context: Embeddings,
    quality_gate: QualityGate,
    mlflow: MlflowTracker,
    stl_files: StlFiles,
    **models: dict,
) -> dg.Output[dict]:
    """The Shop-the-Look model that serving uses: the best trained method on validation,
    promoted over the current champion unless worse on the same test queries."""
    from stl_pipeline.champion.scoring import stl_scores
    from stl_pipeline.evaluation.report import overall

    records = by_method(models)
    rows = overall(retrieval_report)
    rows = rows[
        (rows["split"] == "val") & (rows["task"] == config.task) & (rows["pool"] == "same_category")
    ].set_index("method")[config.metric]
    method = max(records, key=lambda m: rows.get(m, float("-inf")))  # registry order on ties
    baseline = max(rows.get("popularity", float("inf")), rows.get("frozen_knn", float("inf")))
    margin = quality_gate.ctl_hr10_margin
    passed = bool(rows.get(method, float("-inf")) >= baseline + margin)
    gate = {
        "passed": passed,
        "challenger": method,
        f"val_{config.task}_{config.metric}": float(rows.get(method, float("nan"))),
        f"best_baseline_val_{config.task}_{config.metric}": float(baseline),
        "margin": margin,
        "reason": f"{method}'s validation {config.task.upper()} {config.metric} "
        f"{rows.get(method, float('nan')):.4f} {'>=' if passed else '<'} the best of popularity and "
        f"frozen kNN {baseline:.4f} + {margin}",
    }
    record = records[method]
    spec = next(s for s in MODELS if s.method == method)
    challenger = {
        "method": method,
        "registered": spec.registered,
        "version": str(record["version"]),
        "mlflow_run_id": record["mlflow_run_id"],
    }
    names = [s.registered for s in MODELS]
    data_dir = Path(stl_files.data_dir)
    found = champion_version(mlflow.tracker().client, names)
    ours, theirs, why = stl_scores(
        config.task,
        config.metric,
        record,
        found and group_dir(data_dir, "stl") / found[2],
        stl_graph,
        stl_pairs,
        {"stl": stl_crop_embeddings, "ctl": ctl_scene_embeddings},
        ctl_scene_context,
    )
    label = f"{config.task.upper()} {config.metric}"
    decision = decide(label, ours, theirs, config.margin, passed, gate["reason"], why)
    files = {
        "graph.safetensors": asset_path(data_dir, "stl_graph"),
        "pairs.parquet": asset_path(data_dir, "stl_pairs"),
    }
    from stl_pipeline.champion.scoring import product_vectors
    from stl_pipeline.champion.store import PRODUCTS

    def arrays() -> dict:  # computed once, on promotion: what every server of the champion reads
        return {PRODUCTS: product_vectors(record, stl_graph)}

    return _conclude(
        context, "stl", data_dir, mlflow, names, decision, challenger, record, files, arrays, gate
    )


class HmChampionConfig(dg.Config):
    margin: float = Field(
        default=0.0,
        ge=0,
        description="The challenger is kept out only if its paired 95% interval of test MAP@12 "
        "against the champion lies wholly below -margin.",
    )


@dg.asset(group_name="personalized", io_manager_key="model_io_manager")
def hm_champion(
    context: dg.AssetExecutionContext,
    config: HmChampionConfig,
    hm_report: pd.DataFrame,
    hm_sage_model: dict,
    hm_ranker_model: dict,
    hm_graph: HeteroData,
    quality_gate: QualityGate,
    mlflow: MlflowTracker,
    hm_files: HmFiles,
) -> dg.Output[dict]:
    """The personalized model that serving uses: the better of hm_sage_model and hm_ranker_model
    on validation MAP@12, if it beats every heuristic there, promoted over the current champion
    unless worse in MAP@12 over the same test-week customers."""
    from stl_pipeline.champion.scoring import hm_scores
    from stl_pipeline.personalized.evaluate import HEURISTICS

    val = hm_report[hm_report["window"] == "val"].set_index("method")["MAP@12"]
    records = {"hm_sage": hm_sage_model, "hm_ranker": hm_ranker_model}
    method = max(records, key=lambda m: val.get(m, float("-inf")))  # hm_sage on a tie
    best = max(HEURISTICS, key=lambda m: val[m])
    margin = quality_gate.hm_map_margin
    passed = bool(val[method] > val[best] + margin)
    gate = {
        "passed": passed,
        "challenger": method,
        "val_MAP@12": float(val[method]),
        "best_heuristic": best,
        "best_heuristic_val_MAP@12": float(val[best]),
        "margin": margin,
        "reason": f"{method}'s validation MAP@12 {val[method]:.4f} {'>' if passed else '<='} the best "
        f"heuristic's ({best}) {val[best]:.4f} + {margin}",
    }
    record = records[method]
    challenger = {
        "method": method,
        "registered": record["registered"],
        "version": str(record["version"]),
        "mlflow_run_id": record["mlflow_run_id"],
    }
    data_dir = Path(hm_files.data_dir)
    found = champion_version(mlflow.tracker().client, REGISTERED_MODELS)
    ours, theirs, why = hm_scores(record, found and group_dir(data_dir, "personalized") / found[2], hm_graph)
    decision = decide("MAP@12", ours, theirs, config.margin, passed, gate["reason"], why)
    files = {
        "graph.safetensors": asset_path(data_dir, "hm_graph"),
        "customers.parquet": asset_path(data_dir, "hm_customers"),
        "articles.parquet": asset_path(data_dir, "hm_articles"),
    }
    return _conclude(
        context,
        "personalized",
        data_dir,
        mlflow,
        REGISTERED_MODELS,
        decision,
        challenger,
        record,
        files,
        dict,  # nothing to compute: hm_recommendations scores customers from the graph
        gate,
    )


def _gate_check(asset: dg.AssetsDefinition, description: str) -> dg.AssetChecksDefinition:
    """The quality gate as a blocking check: the champion asset already applied it (a failing
    challenger is not promoted); the check makes the failure stop everything served after it."""

    @dg.asset_check(asset=asset, name=GATE_CHECK, blocking=True, description=description)
    def gate(value: dict) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=bool(value["gate"]["passed"]),
            metadata={k: v for k, v in value["gate"].items() if k != "passed"},
            description=None if value["gate"]["passed"] else value["gate"]["reason"],
        )

    return gate


stl_champion_gate = _gate_check(
    stl_champion,
    "The challenger beats popularity and frozen kNN on validation by quality_gate.ctl_hr10_margin; "
    "when it does not, nothing downstream is served from this run.",
)
hm_champion_gate = _gate_check(
    hm_champion,
    "The challenger's validation MAP@12 beats every heuristic's by quality_gate.hm_map_margin; "
    "when it does not, hm_recommendations is not rebuilt from this run.",
)
