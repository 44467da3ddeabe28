"""Champion and challenger: the decision rule, and the lifecycle run for real on the
personalized group's demo data (a fresh store, a better challenger, a worse one, one that
fails the gate), with serving checked byte for byte."""

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from stl_pipeline.champion.decide import decide
from stl_pipeline.personalized.config import REGISTERED_MODELS

if TYPE_CHECKING:
    from stl_pipeline_tests.lineage import Trained

RNG = np.random.default_rng(0)


def test_a_clearly_worse_challenger_is_kept_out() -> None:
    champion = RNG.binomial(1, 0.6, 400).astype(float)
    challenger = np.where(RNG.random(400) < 0.3, 0.0, champion)  # loses a third of its hits
    decision = decide("HR@10", challenger, champion, 0.0, True, "")
    assert not decision.promoted and "worse" in decision.reason
    assert decision.difference.high < 0 and decision.queries == 400


def test_noise_and_ties_do_not_keep_a_challenger_out() -> None:
    champion = RNG.binomial(1, 0.5, 300).astype(float)
    flipped = champion.copy()
    flipped[:3] = 1 - flipped[:3]  # three queries differ
    assert decide("HR@10", flipped, champion, 0.0, True, "").promoted
    assert decide("HR@10", champion, champion, 0.0, True, "").promoted
    # a margin lets a slightly worse challenger through
    worse = np.where(RNG.random(300) < 0.1, 0.0, champion)
    assert not decide("HR@10", worse, champion, 0.0, True, "").promoted
    assert decide("HR@10", worse, champion, 0.2, True, "").promoted


def test_the_gate_comes_first_and_a_fresh_store_promotes() -> None:
    values = np.ones(50)
    failed = decide("HR@10", values, None, 0.0, False, "below popularity")
    assert not failed.promoted and "quality gate: below popularity" in failed.reason
    first = decide("HR@10", values, None, 0.0, True, "", "no champion yet")
    assert first.promoted and first.champion is None and "no champion yet" in first.reason
    assert not decide("HR@10", np.ones(0), None, 0.0, True, "").promoted  # nothing to score on
    with pytest.raises(ValueError, match="differ in length"):
        decide("HR@10", values, np.ones(49), 0.0, True, "")


def _run(gate: dict, epochs: int | None = None) -> dg.ExecuteInProcessResult:
    """The hm_personalized job on the demo data, with the quality gate's knobs and the models'
    training as an operator would set them (``epochs``: a stunted retrain)."""
    from stl_pipeline.definitions import MODULES, build_definitions
    from stl_pipeline.orchestration import hm_personalized
    from stl_pipeline.resources import QualityGate
    from stl_pipeline.settings import load_settings

    base = build_definitions(load_settings())
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules(MODULES),
        asset_checks=dg.load_asset_checks_from_modules(MODULES),
        jobs=[hm_personalized],
        resources={**base.resources, "quality_gate": QualityGate(**gate)},
    )
    # A retrain that went wrong: one epoch of the GNN, one tree of the ranker.
    ops = {"hm_sage_model": {"config": {"epochs": epochs}}, "hm_ranker_model": {"config": {"rounds": 1}}}
    run_config = {"ops": ops} if epochs else {}
    return defs.resolve_job_def("hm_personalized").execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.get(), raise_on_error=False
    )


def _decision(result: dg.ExecuteInProcessResult) -> dict:
    return result.output_for_node("hm_champion")


def test_the_personalized_champion_is_promoted_kept_and_guarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mlflow import MlflowClient

    from stl_pipeline.catalogue import asset_path
    from stl_pipeline.serving.cli import main
    from stl_pipeline.settings import load_settings

    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    settings = load_settings()
    served = asset_path(settings.data_dir, "hm_recommendations")
    passes = {"hm_map_margin": -1.0}  # every challenger passes: the comparison decides

    def answer() -> str:
        import pandas as pd

        customer = pd.read_parquet(served)["customer_id"].iloc[0]
        assert main(["customer", customer, "--json"]) == 0
        return capsys.readouterr().out

    first = _run(passes, epochs=1)  # a fresh store: the first model that passes is promoted
    assert first.success and _decision(first)["decision"]["promoted"]
    assert "no champion yet" in _decision(first)["decision"]["reason"]
    weak = served.read_bytes()

    better = _run(passes)
    decision = _decision(better)["decision"]
    assert better.success and decision["promoted"], decision["reason"]
    assert decision["difference"]["mean"] > 0  # full training beats a stunted one, on the same customers
    strong, strong_answer = served.read_bytes(), answer()
    assert strong != weak
    champion = _decision(better)["challenger"]

    worse = _run(passes, epochs=1)  # a retrain that went wrong: kept out, serving unchanged
    decision = _decision(worse)["decision"]
    assert worse.success and not decision["promoted"] and "worse" in decision["reason"], decision
    assert decision["champion"]["mean"] == pytest.approx(
        _decision(better)["decision"]["challenger"]["mean"]
    )  # the champion scored again on the same customers, with the same result
    assert served.read_bytes() == strong and answer() == strong_answer
    assert _decision(worse)["serving"]["mlflow_run_id"] == champion["mlflow_run_id"]

    failed = _run({"hm_map_margin": 5.0})  # a gate no model passes stops what is served
    assert not failed.success
    checks = {e.check_name: e.passed for e in failed.get_asset_check_evaluations()}
    assert checks["challenger_passes_quality_gate"] is False
    materialized = {e.asset_key.path[-1] for e in failed.get_asset_materialization_events()}
    assert "hm_champion" in materialized and "hm_recommendations" not in materialized
    assert served.read_bytes() == strong and answer() == strong_answer

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    holder = client.get_model_version_by_alias(champion["registered"], "champion")
    assert str(holder.version) == champion["version"] and holder.run_id == champion["mlflow_run_id"]
    others = set(REGISTERED_MODELS) - {champion["registered"]}
    assert not [n for n in others if "champion" in client.get_registered_model(n).aliases]
    challenger = client.get_model_version_by_alias(
        _decision(failed)["challenger"]["registered"], "challenger"
    )
    assert challenger.run_id == _decision(failed)["challenger"]["mlflow_run_id"]  # the gate-failed retrain
    tags = client.get_run(challenger.run_id).data.tags
    assert tags["champion.decision"] == "kept" and "quality gate" in tags["champion.reason"]


def test_a_worse_stl_retrain_is_kept_out_and_serving_answers_as_before(
    trained: "Trained", tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The stl_retrain selection on a copy of the trained lineage, every model cut to one
    epoch and the gate opened so that the comparison decides: the champion stays, and the
    index, the lists and stl-recommend answer exactly as before."""
    import shutil

    from stl_pipeline.catalogue import asset_path
    from stl_pipeline.definitions import build_definitions
    from stl_pipeline.features.assets import ALL_PARTITIONS
    from stl_pipeline.registry import MODELS
    from stl_pipeline.resources import QualityGate
    from stl_pipeline.serving.cli import main
    from stl_pipeline.settings import load_settings
    from stl_pipeline_tests.lineage import stl_definitions

    data = tmp_path / "data"
    shutil.copytree(trained.settings.data_dir, data)
    settings = load_settings(trained.environ | {"STL_DATA_DIR": str(data)})
    served = [asset_path(data, name) for name in ("product_index", "recommendations")]
    before = [path.read_bytes() for path in served]
    product = pd.read_parquet(served[1])["query"].iloc[0]

    monkeypatch.setenv("STL_DATA_DIR", str(data))

    def answer() -> str:
        assert main(["product", product, "--json"]) == 0
        return capsys.readouterr().out

    first_answer = answer()
    result = dg.materialize(
        stl_definitions(),
        selection=dg.AssetSelection.assets("stl_graph").downstream(),
        resources={
            **build_definitions(settings).resources,
            "quality_gate": QualityGate(ctl_hr10_margin=-1.0),
        },
        run_config={"ops": {spec.asset: {"config": {"epochs": 1}} for spec in MODELS}},
        tags=ALL_PARTITIONS,
        raise_on_error=False,
    )
    assert result.success
    decision = result.output_for_node("stl_champion")
    assert not decision["decision"]["promoted"] and "worse" in decision["decision"]["reason"], decision
    assert decision["decision"]["difference"]["high"] < 0
    assert decision["serving"]["mlflow_run_id"] != decision["challenger"]["mlflow_run_id"]
    assert [path.read_bytes() for path in served] == before
    assert answer() == first_answer
