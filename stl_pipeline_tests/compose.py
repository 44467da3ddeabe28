"""docker/ run for real: the compose stack built and started on a Docker engine (`make test`
starts one with docker/engine.sh), runs launched through the webserver's GraphQL API as the
UI launches them, and everything it started removed at the end."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
PROJECT = "stl-pipeline-test"
TAG = "test"
POSTGRES_IMAGE = f"stl-pipeline-postgres:{TAG}"
CODE_IMAGE = f"stl-pipeline-code:{TAG}"
# The names docker/dagster.yaml gives run containers: shared by every stack on an engine.
FIXED = {"volume": "stl_data", "network": "stl_pipeline"}
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _missing(engine: bool) -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode != 0:
        return "no `docker compose` (v2)"
    if engine and subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker engine answers"
    return None


def deployment_home(root: Path) -> Path:
    """A DAGSTER_HOME with docker/dagster.yaml less its run launcher: the deployment's
    storage, read (or, without containers, run) from the host."""
    config = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    del config["run_launcher"]
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def engine_or_skip(engine: bool = True) -> None:
    """A Docker client with Compose v2 and (``engine``) an engine that answers; else a skip,
    or, where `make test` requires Docker, a failure that says how to get it."""
    missing = _missing(engine)
    if missing is None:
        return
    if os.environ.get("STL_TEST_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{missing}: run `docker/engine.sh start` (as root), as `make test` does")
    pytest.skip(f"{missing} (`docker/engine.sh start` starts one)")


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        pytest.fail(f"docker {' '.join(args)} exited {done.returncode}:\n{output}")
    return done.stdout


def refuse_foreign_resources() -> None:
    """The run containers' volume and network have fixed names: if another deployment on this
    engine owns them, the test would use (and then delete) its data."""
    for kind, name in FIXED.items():
        found = subprocess.run(
            ["docker", kind, "inspect", name, "--format", '{{index .Labels "com.docker.compose.project"}}'],
            capture_output=True,
            text=True,
        )
        owner = found.stdout.strip()
        if found.returncode == 0 and owner != PROJECT:
            pytest.fail(
                f"the {kind} {name} belongs to {owner or 'no compose project'} on this engine: the test "
                f"would share it. Run the test on an engine without another stl-pipeline deployment."
            )


class Stack:
    """The compose project: docker/docker-compose.yml, the test's environment file and an
    override that builds the Postgres image from docker/postgres and publishes its port."""

    def __init__(self, root: Path, ports: dict[str, int], environment: dict[str, str]) -> None:
        self.ports, self.environment = ports, environment
        self.env_file = root / "test.env"
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in environment.items()))
        override = {
            "services": {
                "postgres": {
                    "build": {"context": str(DOCKER / "postgres")},
                    "ports": [f"127.0.0.1:{ports['postgres']}:5432"],
                }
            }
        }
        self.override = root / "override.yml"
        self.override.write_text(yaml.safe_dump(override))

    def _command(self, *args: str) -> list[str]:
        return [
            *("docker", "compose", "-p", PROJECT, "--env-file", str(self.env_file)),
            *("-f", str(DOCKER / "docker-compose.yml"), "-f", str(self.override), *args),
        ]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(self._command(*args), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(
                f"docker compose {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}\n{self.logs()}"
            )
        return done

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def logs(self, tail: int = 40) -> str:
        command = self._command("logs", "--no-color", "--tail", str(tail))
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout[-8000:]

    def remove(self) -> None:
        """Everything the test started: the run containers (not part of the compose project),
        then the project's containers, volumes and network. The images stay, as a build cache."""
        runs = docker("ps", "-aq", "--filter", f"ancestor={CODE_IMAGE}", "--filter", "label=dagster/run_id")
        if runs.split():
            docker("rm", "-f", *runs.split())
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


@contextmanager
def stack(root: Path, ports: dict[str, int], environment: dict[str, str]) -> Iterator[Stack]:
    engine_or_skip()
    refuse_foreign_resources()
    base = {
        "POSTGRES_USER": "stl",
        "POSTGRES_PASSWORD": os.urandom(12).hex(),
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "STL_IMAGE_TAG": TAG,
        "DAGSTER_PORT": str(ports["webserver"]),
        "MLFLOW_PORT": str(ports["mlflow"]),
        # pip in the build trusts the machine's CA bundle (a TLS-inspecting proxy, if any).
        "BUILD_CA_CERTIFICATES": str(CA_BUNDLE) if CA_BUNDLE.is_file() else "",
    }
    running = Stack(root, ports, base | environment)
    running.remove()  # what an interrupted earlier run left
    try:
        yield running
    finally:
        running.remove()


GRAPHQL_RUN_TAGS = """
query RunTags($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { runTags { key value } }
    ... on PythonError { message }
  }
}
"""

GRAPHQL_LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


def graphql(ui: str, query: str, variables: dict) -> dict:
    answer = requests.post(f"{ui}/graphql", json={"query": query, "variables": variables}, timeout=120)
    answer.raise_for_status()
    body = answer.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def launch(ui: str, job: str) -> str:
    """What the UI's Launchpad does: the job's run tags, then launchRun; returns the run id."""
    selector = {"repositoryLocationName": "stl_pipeline", "repositoryName": "__repository__"}
    found = graphql(ui, GRAPHQL_RUN_TAGS, {"selector": selector | {"pipelineName": job}})["pipelineOrError"]
    assert found["__typename"] == "Pipeline", found
    params = {
        "selector": selector | {"jobName": job},
        "runConfigData": {},
        "executionMetadata": {"tags": found["runTags"]},
    }
    launched = graphql(ui, GRAPHQL_LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def container_logs(container: str, tail: int = 60) -> str:
    """A container's last lines, stdout and stderr together (Dagster logs to stderr)."""
    done = subprocess.run(
        ["docker", "logs", "--tail", str(tail), container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    return done.stdout[-5000:]


def image_size(image: str) -> int:
    return int(docker("image", "inspect", image, "--format", "{{.Size}}").strip())
