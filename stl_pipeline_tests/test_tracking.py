import multiprocessing
from pathlib import Path

import pytest
from mlflow import MlflowClient

from stl_pipeline.tracking import Tracker
from stl_pipeline_tests.services import postgres_server


def test_runs_metrics_artifacts_and_model_versions_land_in_a_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "stl-pipeline", artifact_root=str(tmp_path / "artifacts"))
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"state")
    run_ids = []
    for lr in (0.01, 0.001):
        with tracker.run(f"gat lr={lr}", tags={"dagster_run_id": "r1", "asset": "gat_model"}) as run:
            run.log_params({"lr": lr, "hidden": 128})
            for epoch in range(3):
                run.log_metrics({"loss": 1.0 / (epoch + 1) + lr}, step=epoch)
            run.log_artifact(checkpoint, "checkpoint")
            version = run.register("stl-gat", "checkpoint", tags={"asset": "gat_model"})
            run_ids.append(run.run_id)
    assert version == "2"

    client = MlflowClient(tracking_uri=uri)
    runs = {r.info.run_id: r for r in client.search_runs([tracker.experiment_id()])}
    assert set(runs) == set(run_ids)
    for run_id in run_ids:
        run = runs[run_id]
        assert run.info.status == "FINISHED" and run.data.tags["asset"] == "gat_model"
        history = [m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
        assert len(history) == 3 and history[0] > history[-1] == run.data.metrics["loss"]
        assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/best.pt"]
    assert {runs[i].data.params["lr"] for i in run_ids} == {"0.01", "0.001"}
    source = client.get_model_version("stl-gat", "2").source
    assert source.endswith("checkpoint") and str(tmp_path / "artifacts") in source


def test_a_failing_block_marks_the_run_failed(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "stl-pipeline", str(tmp_path / "artifacts"))
    with pytest.raises(RuntimeError), tracker.run("broken") as run:
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=tracker.tracking_uri).get_run(run.run_id).info.status == "FAILED"


def _start_run(uri: str, barrier: object, name: str) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    with Tracker(uri, "stl-pipeline").run(name) as run:
        run.log_metrics({"loss": 1.0})


def _three_at_once(uri: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    processes = [context.Process(target=_start_run, args=(uri, barrier, f"r{i}")) for i in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("stl-pipeline")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["r0", "r1", "r2"]


def test_processes_starting_together_on_a_fresh_store_all_track(tmp_path: Path) -> None:
    """Parallel training steps each open the store first thing; MLflow migrates an empty
    database on first use, and doing that three times at once broke the run."""
    _three_at_once(f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}")


@pytest.mark.slow
def test_processes_starting_together_on_a_fresh_postgres_store_all_track() -> None:
    """The same on PostgreSQL, where an advisory lock serializes the first use."""
    with postgres_server() as server:
        server.create_database("mlflow")
        _three_at_once(server.url("mlflow"))
