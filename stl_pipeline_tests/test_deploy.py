"""The deployment in docker/, run from its files without containers: PostgreSQL for Dagster,
the code server started with the image's command, the daemon with the deployment's own
dagster.yaml (the default run launcher in place of the Docker one) and the webserver; then
the sensor and a backfill of every embedding partition through the queue and the gpu pool.
test_containers.py runs the same files in containers (schedule, MLflow, faults). The compose
file is checked against dagster.yaml and the workspace statically."""

import itertools
import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import requests
import yaml

from stl_pipeline.catalogue import PARTITIONED, read_embeddings
from stl_pipeline.features.partitions import PARTITIONS
from stl_pipeline.settings import HM_VARIABLES
from stl_pipeline.storage import files_digest
from stl_pipeline_tests.compose import DOCKER, deployment_home
from stl_pipeline_tests.conftest import SMALL
from stl_pipeline_tests.lineage import generated_environ
from stl_pipeline_tests.services import Processes, free_port, postgres_server, wait_until

BIN = Path(sys.executable).parent
SETTINGS = Path(__file__).resolve().parents[1] / "stl_pipeline" / "settings.py"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def code_server_command(host: str, port: int) -> list[str]:
    """The compose file's (and the image's) code server command, on another address."""
    command = compose()["services"]["code"]["command"]
    swapped = {"0.0.0.0": host, "4000": str(port)}
    return [str(BIN / command[0]), *(swapped.get(arg, arg) for arg in command[1:])]


def webserver_command(host: str, port: int, workspace: Path) -> list[str]:
    """The compose file's webserver command, on another address and workspace file."""
    entrypoint = compose()["services"]["webserver"]["entrypoint"]
    swapped = {"0.0.0.0": host, "3000": str(port), "workspace.yaml": str(workspace)}
    return [str(BIN / entrypoint[0]), *(swapped.get(arg, arg) for arg in entrypoint[1:])]


BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


def launch_backfill(ui: str, asset: str, partitions: tuple[str, ...]) -> str:
    """What the UI's "Materialize all partitions" does: an asset backfill, run by the daemon."""
    params = {"partitionNames": list(partitions), "assetSelection": [{"path": [asset]}]}
    answer = requests.post(
        f"{ui}/graphql", json={"query": BACKFILL, "variables": {"params": params}}, timeout=60
    )
    result = answer.json()["data"]["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def deployment_workspace(root: Path, port: int) -> Path:
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    location["grpc_server"].update(host="127.0.0.1", port=port)
    path = root / "workspace.yaml"
    path.write_text(yaml.safe_dump(workspace))
    return path


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def next_run(
    instance: dg.DagsterInstance,
    job: str | dict[str, str],
    seen: set[str],
    processes: Processes,
    timeout: float,
    finished: bool = True,
) -> dg.DagsterRun:
    """The next run of ``job`` (a name, or tags its runs carry) not in ``seen`` once it exists,
    or (``finished``) has ended successfully; a run that failed fails the test with its errors."""
    runs = dg.RunsFilter(job_name=job) if isinstance(job, str) else dg.RunsFilter(tags=job)

    def found() -> dg.DagsterRun | None:
        processes.check_alive()
        for run in instance.get_runs(filters=runs):
            if run.run_id not in seen and (run.is_finished or not finished):
                return run
        return None

    logs = [processes.log_dir / f"{name}.log" for name in ("daemon", "code-server")]
    run = wait_until(found, timeout, f"a {'finished ' if finished else ''}{job} run", logs)
    if not finished:
        return run
    if run.status != dg.DagsterRunStatus.SUCCESS:
        errors = [e.message for e in instance.all_logs(run.run_id) if e.level >= 40]
        pytest.fail(f"{job} run {run.run_id} ended {run.status}: {errors[-5:]}")
    seen.add(run.run_id)
    return run


def one_partition(run: dg.DagsterRun) -> str:
    """The partition a run of one partition materialized (a key, or a range of one)."""
    if "dagster/partition" in run.tags:
        return run.tags["dagster/partition"]
    start, end = (run.tags[f"dagster/asset_partition_range_{side}"] for side in ("start", "end"))
    assert start == end, run.tags
    return start


def gpu_steps(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float]]:
    """(start, end) of every step of these runs that held the ``gpu`` pool, in start order."""
    spans = []
    for run_id in run_ids:
        started: dict[str, float] = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or entry.step_key not in PARTITIONED:
                continue
            if event.is_step_start:
                started[entry.step_key] = entry.timestamp
            elif event.is_step_success:
                spans.append((started[entry.step_key], entry.timestamp))
    return sorted(spans)


def dagster(args: list[str], env: dict[str, str], workspace: Path) -> None:
    subprocess.run([str(BIN / "dagster"), *args, "-w", str(workspace)], env=env, check=True, timeout=120)


@pytest.mark.slow
def test_sensor_and_backfill_on_postgres(
    tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("fashion.json", "fashion-cat.json"):
        shutil.copy(small_dataset / name, raw / name)
    stl = generated_environ(tmp_path, raw) | {
        "STL_IMAGE_URL_TEMPLATE": (small_dataset / "images").as_uri() + "/{signature}.jpg",
    }
    with ExitStack() as stack:
        postgres = stack.enter_context(postgres_server())
        postgres.create_database("dagster")
        code_port = free_port()
        storage = {
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(postgres.port),
            "DAGSTER_POSTGRES_USER": postgres.user,
            "DAGSTER_POSTGRES_PASSWORD": "",
            "DAGSTER_POSTGRES_DB": "dagster",
        }
        home = deployment_home(tmp_path)
        for name, value in (storage | {"DAGSTER_HOME": str(home)}).items():
            monkeypatch.setenv(name, value)
        env = {**os.environ, **stl, "PATH": f"{BIN}:{os.environ['PATH']}"}
        workspace = deployment_workspace(tmp_path, code_port)

        processes = Processes(tmp_path)
        stack.callback(processes.stop_all)
        code_log = processes.start("code-server", code_server_command("127.0.0.1", code_port), env, tmp_path)
        health = [
            str(BIN / "dagster"),
            "api",
            "grpc-health-check",
            "--host",
            "127.0.0.1",
            "--port",
            str(code_port),
        ]
        wait_until(
            lambda: subprocess.run(health, capture_output=True, env=env).returncode == 0,
            180,
            "the code server answering",
            [code_log],
        )
        processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, tmp_path)
        ui_port = free_port()
        ui = f"http://127.0.0.1:{ui_port}"
        ui_log = processes.start(
            "webserver", webserver_command("127.0.0.1", ui_port, workspace), env, tmp_path
        )
        wait_until(lambda: answers(f"{ui}/server_info"), 180, "the webserver answering", [ui_log])

        instance = stack.enter_context(dg.DagsterInstance.get())
        seen: set[str] = set()
        # The sensor's first tick finds raw files nothing has ingested yet.
        dagster(["sensor", "start", "stl_raw_files_sensor"], env, workspace)
        first = next_run(instance, "stl_ingest", seen, processes, timeout=420)
        assert first.tags["dagster/sensor_name"] == "stl_raw_files_sensor"

        # Scaling out: the UI's backfill of every partition of product_embeddings, one run
        # each, through the queue and the gpu pool; the vectors must equal the one-step run's.
        data = Path(stl["STL_DATA_DIR"])
        whole = read_embeddings(data, "product_embeddings")
        shutil.rmtree(data / "cache")  # so that the backfill computes every vector again
        backfill_id = launch_backfill(ui, "product_embeddings", PARTITIONS)
        tag = {"dagster/backfill": backfill_id}
        backfill = [next_run(instance, tag, seen, processes, timeout=300) for _ in PARTITIONS]
        assert sorted(one_partition(run) for run in backfill) == list(PARTITIONS)
        again = read_embeddings(data, "product_embeddings")
        assert sorted(again.keys) == sorted(whole.keys) and len(again) == SMALL.products
        assert np.allclose(again.take(whole.keys), whole.vectors, atol=1e-5)
        steps = gpu_steps(instance, [run.run_id for run in backfill])
        assert len(steps) == len(PARTITIONS)
        shared = [(a, b) for a, b in itertools.pairwise(steps) if b[0] < a[1]]
        assert not shared, f"steps held the gpu pool at once: {shared}"

        pairs = raw / "fashion.json"
        pairs.write_text("".join(pairs.read_text().splitlines(keepends=True)[:-1]))  # one pair fewer
        second = next_run(instance, "stl_ingest", seen, processes, timeout=420)
        assert second.tags["stl/raw_sha256"] == files_digest([pairs, raw / "fashion-cat.json"])
        assert second.tags["stl/raw_sha256"] != first.tags["stl/raw_sha256"]

        import psycopg2

        address = {"host": "127.0.0.1", "port": postgres.port, "user": postgres.user, "dbname": "dagster"}
        with psycopg2.connect(**address) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT run_id, status FROM runs")
            stored = dict(cursor.fetchall())
        assert {r.run_id: "SUCCESS" for r in (first, *backfill, second)}.items() <= stored.items()


def test_compose_agrees_with_dagster_yaml_and_the_workspace() -> None:
    services = compose()["services"]
    assert {"postgres", "mlflow", "code", "webserver", "daemon"} <= set(services)
    dagster_yaml = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    (location,) = yaml.safe_load((DOCKER / "workspace.yaml").read_text())["load_from"]

    # The workspace points at the code service, on the port its command serves.
    code = services["code"]["command"]
    assert location["grpc_server"]["host"] == "code"
    assert code[code.index("--port") + 1] == str(location["grpc_server"]["port"])
    assert code[code.index("--module-name") + 1] == "stl_pipeline.definitions"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert all(f'"{arg}"' in dockerfile for arg in code), "the image's CMD and the compose command differ"
    for name in ("webserver", "daemon"):
        assert "workspace.yaml" in services[name]["entrypoint"]

    # Storage, run launcher and the environment every run container gets.
    assert set(dagster_yaml["storage"]["postgres"]["postgres_db"]) == {
        "scheme",
        "hostname",
        "port",
        "username",
        "password",
        "db_name",
    }
    assert dagster_yaml["run_coordinator"]["class"] == "QueuedRunCoordinator"
    launcher = dagster_yaml["run_launcher"]["config"]
    assert launcher["network"] in {n.get("name") for n in compose()["networks"].values()}
    volume, mount = launcher["container_kwargs"]["volumes"][0].split(":")
    assert volume in {v.get("name") for v in compose()["volumes"].values() if v}
    assert f"stl_data:{mount}" in services["code"]["volumes"]
    for name in ("daemon", "code"):
        environment = services[name]["environment"]
        assert set(launcher["env_vars"]) <= set(environment), name
    settings_vars = {
        line.split('"')[1] for line in SETTINGS.read_text().splitlines() if 'environ.get("' in line
    }
    settings_vars |= set(HM_VARIABLES)
    assert settings_vars <= set(launcher["env_vars"]), "a setting does not reach the run containers"
    database = dagster_yaml["storage"]["postgres"]["postgres_db"]
    postgres_env = {v["env"] for v in database.values() if isinstance(v, dict)}
    assert postgres_env <= set(services["webserver"]["environment"])

    # One service builds each image (two builds under one tag make `up` recreate the services
    # that run the other); the others run it and never try to pull it.
    built = [service["image"] for service in services.values() if "build" in service]
    assert len(built) == len(set(built)), built
    for name, service in services.items():
        if "build" not in service and service["image"].startswith("stl-pipeline"):
            assert service["image"] in built and service["pull_policy"] == "never", name

    # Every service that others wait on has a health check; every variable has an example.
    for service in services.values():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
    example = (DOCKER / ".env.example").read_text()
    text = (DOCKER / "docker-compose.yml").read_text()

    for variable in set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", text)):
        assert f"\n{variable}=" in f"\n{example}", f"{variable} is missing from .env.example"
    gpu = yaml.safe_load((DOCKER / "docker-compose.gpu.yml").read_text())
    context = yaml.safe_load(gpu["services"]["code"]["environment"]["DAGSTER_CONTAINER_CONTEXT"])
    (request,) = context["docker"]["container_kwargs"]["device_requests"]
    assert request["capabilities"] == [["gpu"]]


def test_helm_values_run_the_same_code_location_on_kubernetes() -> None:
    values = yaml.safe_load((DOCKER / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    code = compose()["services"]["code"]["command"]
    arguments = deployment["codeServerArgs"]
    for flag in ("--module-name", "--location-name"):
        assert arguments[arguments.index(flag) + 1] == code[code.index(flag) + 1]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["STL_EXECUTOR"] == "k8s" and deployment["includeConfigInLaunchedRuns"]["enabled"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert not values["postgresql"]["enabled"] and values["postgresql"]["postgresqlDatabase"] == "dagster"
