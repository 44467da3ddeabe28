"""The deployment in docker/, built and started as a user does: `docker compose up --build
--wait`, runs launched through the webserver, each in a container of its own started by
the DockerRunLauncher; MLflow over HTTP; `stl-recommend` in a container; the retraining
schedule; a killed daemon, a killed run container, and the stack taken down and up again."""

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow import MlflowClient

from stl_pipeline.champion.store import CHAMPION
from stl_pipeline.checkpoints import load_checkpoint
from stl_pipeline.demo import HM_PERSONALIZED, STL_FULL_PIPELINE
from stl_pipeline.executor import GPU_POOL
from stl_pipeline.personalized.config import REGISTERED_MODELS as HM_REGISTERED
from stl_pipeline.registry import MODELS
from stl_pipeline_tests import compose
from stl_pipeline_tests.compose import CODE_IMAGE, DOCKER, Stack, deployment_home, docker, launch
from stl_pipeline_tests.services import free_port, wait_until

RETRAIN = "stl_retrain"
CONTAINER_ID_TAG = "docker/container_id"  # the DockerRunLauncher's tag on each run
TRAINING_STEPS = {spec.asset for spec in MODELS}


def finished(instance: dg.DagsterInstance, run_id: str, stack: Stack, timeout: float) -> dg.DagsterRun:
    def ended() -> dg.DagsterRun | None:
        run = instance.get_run_by_id(run_id)
        return run if run is not None and run.is_finished else None

    return wait_until(ended, timeout, f"run {run_id} ending", context=stack.logs)


def succeeded(instance: dg.DagsterInstance, run_id: str, stack: Stack, timeout: float) -> dg.DagsterRun:
    run = finished(instance, run_id, stack, timeout)
    if run.status != dg.DagsterRunStatus.SUCCESS:
        failed = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        errors = [f"{e.step_key}: {e.dagster_event.step_failure_data.error.to_string()}" for e in failed]
        container = run.tags.get(CONTAINER_ID_TAG)
        tail = compose.container_logs(container) if container else ""
        pytest.fail(f"{run.job_name} run {run_id} ended {run.status}:\n{chr(10).join(errors)}\n{tail}")
    return run


def run_container(run: dg.DagsterRun) -> dict:
    """The container the launcher started for ``run``: its id, image, labels and exit code."""
    container = run.tags[CONTAINER_ID_TAG]
    (found,) = json.loads(docker("inspect", container))
    assert found["Config"]["Labels"]["dagster/run_id"] == run.run_id
    assert found["Config"]["Image"] == CODE_IMAGE
    assert found["HostConfig"]["NetworkMode"] == "stl_pipeline"
    return found


def seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    return record.end_time - record.start_time


def checks_of(instance: dg.DagsterInstance, run_id: str) -> dict[str, bool]:
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [e.dagster_event.asset_check_evaluation_data for e in entries]
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed for e in evaluations}


def defined_checks(job: str) -> set[str]:
    from stl_pipeline.definitions import defs

    graph = defs.resolve_job_def(job).asset_layer.asset_graph
    return {f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys}


def training_step_started(instance: dg.DagsterInstance, run_id: str) -> bool:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START):
        if entry.step_key in TRAINING_STEPS:
            return True
    return False


def holders(instance: dg.DagsterInstance) -> set[str]:
    """The runs that hold a slot of the ``gpu`` pool."""
    return instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids


def in_container(stack: Stack, *command: str) -> str:
    """A one-off container of the code service (its image, volume, network and settings)."""
    return stack.compose("run", "--rm", "--no-deps", "-T", "code", *command, timeout=300).stdout


def host_instance(root: Path, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    """The deployment's Dagster instance read from the host: docker/dagster.yaml's storage,
    through the Postgres port the test publishes (nothing is launched from here)."""
    storage = {
        "DAGSTER_HOME": str(deployment_home(root)),
        "DAGSTER_POSTGRES_HOST": "127.0.0.1",
        "DAGSTER_POSTGRES_PORT": str(stack.ports["postgres"]),
        "DAGSTER_POSTGRES_USER": stack.environment["POSTGRES_USER"],
        "DAGSTER_POSTGRES_PASSWORD": stack.environment["POSTGRES_PASSWORD"],
        "DAGSTER_POSTGRES_DB": "dagster",
    }
    for name, value in storage.items():
        monkeypatch.setenv(name, value)
    return dg.DagsterInstance.get()


@pytest.mark.slow
def test_the_compose_stack_builds_runs_serves_and_survives_faults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = {"webserver": free_port(), "mlflow": free_port(), "postgres": free_port()}
    ui, mlflow_url = f"http://127.0.0.1:{ports['webserver']}", f"http://127.0.0.1:{ports['mlflow']}"
    timings: dict[str, float] = {}
    with ExitStack() as exits:
        stack = exits.enter_context(
            compose.stack(tmp_path, ports, {"STL_RETRAIN_CRON": "* * * * *"})  # fires within a minute
        )

        start = time.monotonic()
        stack.compose("up", "--build", "--wait", timeout=2400)
        timings["up --build --wait"] = time.monotonic() - start
        services = stack.compose("ps", "--format", "json").stdout
        states = [json.loads(line) for line in services.splitlines() if line.strip()]
        assert {s["Service"]: s["Health"] for s in states} == dict.fromkeys(
            ("postgres", "mlflow", "code", "webserver", "daemon"), "healthy"
        )
        instance = exits.enter_context(host_instance(tmp_path, stack, monkeypatch))

        # Both groups on the demo data, launched as the UI launches them, side by side. Their
        # training steps share the gpu pool, so they take turns: 1,532 s for both on two idle
        # cores; the limit leaves room for a busy CI machine.
        runs = {job: launch(ui, job) for job in (STL_FULL_PIPELINE, HM_PERSONALIZED)}
        for job, run_id in runs.items():
            run = succeeded(instance, run_id, stack, timeout=2700)
            container = run_container(run)
            assert container["State"]["ExitCode"] == 0
            timings[f"{job} run"] = seconds(instance, run_id)
            print(f"{job}: run {run_id}, container {container['Id'][:12]}, {timings[f'{job} run']:.0f} s")
            checks = checks_of(instance, run_id)
            assert set(checks) == defined_checks(job) and all(checks.values()), checks

        # MLflow: the training runs, their checkpoints fetched over HTTP, the champion aliases.
        client = MlflowClient(tracking_uri=mlflow_url)
        experiment = client.get_experiment_by_name("stl-pipeline")
        by_run = f"tags.dagster_run_id = '{runs[STL_FULL_PIPELINE]}'"
        trained = client.search_runs([experiment.experiment_id], by_run)
        assert {r.data.tags["asset"] for r in trained} >= TRAINING_STEPS
        for run in trained:
            if run.data.tags["asset"] not in TRAINING_STEPS:
                continue
            assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
            fetched = Path(client.download_artifacts(run.info.run_id, "checkpoint/record.pt", str(tmp_path)))
            assert isinstance(load_checkpoint(fetched), dict)
        champions = [
            name
            for name in [spec.registered for spec in MODELS] + HM_REGISTERED
            if CHAMPION in client.get_registered_model(name).aliases
        ]
        assert len(set(HM_REGISTERED) & set(champions)) == 1 and len(champions) == 2, champions

        # stl-recommend in a container of the code image, from the champion on the data volume.
        ids = in_container(
            stack,
            "python",
            "-c",
            "import pandas as p; from stl_pipeline.catalogue import asset_path as a; "
            "from stl_pipeline.settings import load_settings as s; d = s().data_dir; "
            "print(p.read_parquet(a(d, 'recommendations'))['query'].iloc[0], "
            "p.read_parquet(a(d, 'hm_recommendations'))['customer_id'].iloc[0])",
        ).split()
        product, customer = ids[-2:]
        answer = json.loads(in_container(stack, "stl-recommend", "product", product, "-k", "5", "--json"))
        assert answer["similar"] and answer["complementary"], answer
        answer = json.loads(in_container(stack, "stl-recommend", "customer", customer, "-k", "5", "--json"))
        assert answer["personalized"] and len(answer["articles"]) == 5

        # A run container killed while it holds the gpu pool (a host's OOM killer, a lost node):
        # the daemon, killed too and started again, ends the run and frees the slot.
        doomed = launch(ui, RETRAIN)
        wait_until(
            lambda: doomed in holders(instance), 600, "the run holding the gpu pool", context=stack.logs
        )
        container = instance.get_run_by_id(doomed).tags[CONTAINER_ID_TAG]
        others = {name: stack.container(name) for name in ("postgres", "mlflow", "code", "webserver")}
        docker("kill", stack.container("daemon"))
        docker("kill", container)
        killed = time.monotonic()
        stack.compose("up", "-d", "--wait", "daemon")
        ended = finished(instance, doomed, stack, timeout=300)
        assert ended.status == dg.DagsterRunStatus.FAILURE
        messages = [e.message or "" for e in instance.all_logs(doomed)]
        assert any("Container status is exited" in m for m in messages), messages[-5:]
        wait_until(
            lambda: doomed not in holders(instance),
            300,
            "the gpu slot freed",
            context=stack.logs,
        )
        timings["killed run ended and its slot freed"] = time.monotonic() - killed
        print(f"killed {RETRAIN}: run {doomed}, container {container[:12]}, ended {ended.status.value}")
        assert {name: stack.container(name) for name in others} == others, "`up daemon` recreated others"

        # The next run: the retraining schedule fires within a minute, and its run succeeds
        # although the daemon is killed during it and started again (the run lives in a
        # container of its own).
        in_daemon = ("exec", "-T", "daemon", "dagster", "schedule")
        stack.compose(*in_daemon, "start", "stl_retrain_schedule", "-w", "workspace.yaml")
        scheduled = wait_until(
            lambda: instance.get_runs(dg.RunsFilter(tags={"dagster/schedule_name": "stl_retrain_schedule"})),
            150,
            "the schedule's run",
            context=stack.logs,
        )[0]
        stack.compose(*in_daemon, "stop", "stl_retrain_schedule", "-w", "workspace.yaml")
        wait_until(
            lambda: training_step_started(instance, scheduled.run_id), 600, "training", context=stack.logs
        )
        docker("kill", stack.container("daemon"))
        running = instance.get_run_by_id(scheduled.run_id).tags[CONTAINER_ID_TAG]
        assert docker("inspect", running, "--format", "{{.State.Running}}").strip() == "true"
        stack.compose("up", "-d", "--wait", "daemon")
        run = succeeded(instance, scheduled.run_id, stack, timeout=1200)
        timings["scheduled stl_retrain run"] = seconds(instance, run.run_id)
        print(f"scheduled {RETRAIN}: run {run.run_id}, container {run.tags[CONTAINER_ID_TAG][:12]}")

        # Down (volumes kept) and up again: runs, materializations and MLflow runs are all there.
        before = {r.run_id: r.status for r in instance.get_runs()}
        stack.compose("down", "--timeout", "30")
        start = time.monotonic()
        stack.compose("up", "--wait", timeout=900)
        timings["down, then up --wait"] = time.monotonic() - start
        assert {r.run_id: r.status for r in instance.get_runs()} == before
        for asset in ("recommendations", "hm_recommendations", "stl_champion"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
        again = MlflowClient(tracking_uri=mlflow_url).search_runs([experiment.experiment_id])
        assert {r.info.run_id for r in trained} <= {r.info.run_id for r in again}

    sizes = {image: compose.image_size(image) for image in (CODE_IMAGE, "stl-pipeline-dagster:test")}
    print("\n".join(f"{name}: {value:.0f} s" for name, value in timings.items()))
    print("\n".join(f"{image}: {size / 1e9:.2f} GB" for image, size in sizes.items()))


def test_the_gpu_override_resolves_and_reaches_the_run_containers(tmp_path: Path) -> None:
    """`docker compose config` with the GPU file, and the container context the launcher
    builds from it for each run: the device request arrives."""
    from dagster_docker.container_context import DockerContainerContext

    compose.engine_or_skip(engine=False)
    env = tmp_path / "gpu.env"
    env.write_text("POSTGRES_USER=stl\nPOSTGRES_PASSWORD=x\n")
    files = ("-f", str(DOCKER / "docker-compose.yml"), "-f", str(DOCKER / "docker-compose.gpu.yml"))
    resolved = subprocess.run(
        ["docker", "compose", "--env-file", str(env), *files, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    code = json.loads(resolved.stdout)["services"]["code"]["environment"]
    assert code["STL_DEVICE"] == "cuda"
    launcher = yaml.safe_load((DOCKER / "dagster.yaml").read_text())["run_launcher"]["config"]
    own = DockerContainerContext(
        env_vars=launcher["env_vars"],
        networks=[launcher["network"]],
        container_kwargs=launcher["container_kwargs"],
    )
    context = own.merge(
        DockerContainerContext.create_from_config(json.loads(code["DAGSTER_CONTAINER_CONTEXT"]))
    )
    (request,) = context.container_kwargs["device_requests"]
    assert request == {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}
    assert context.container_kwargs["volumes"] == ["stl_data:/data"]  # the launcher's own, kept
    assert "STL_DEVICE=cuda" in context.env_vars and "STL_DATA_DIR" in context.env_vars
