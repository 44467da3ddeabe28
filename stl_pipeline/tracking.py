"""MLflow tracking through an explicit client: no process-global active run, so concurrent
materializations in one process never log into each other's runs.

Model versions are registered with the run's checkpoint directory as their
source: a state dict and its config, loadable with ``weights_only=True``,
rather than a pickled model.
"""

import fcntl
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

from stl_pipeline.checkpoints import RECORD, load_checkpoint, save_checkpoint
from stl_pipeline.metrics import mlflow_name
from stl_pipeline.storage import atomic_write_bytes, disk_full

MAX_PARAM_LENGTH = 6000
# MLflow retries a request for about four minutes; a server that does not answer this fast
# before training starts is down, and training should not run only to fail at the end.
PREFLIGHT_TIMEOUT_S = 5.0


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer."""


class TrackedRun:
    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict) -> None:
        items = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Metrics under MLflow's names (``val_HR@10`` -> ``val_hr_at_10``)."""
        now = int(time.time() * 1000)
        items = [Metric(mlflow_name(k), float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    @contextmanager
    def _storing(self, name: str) -> Iterator[None]:
        """An artifact write that a full disk fails with the artifact's path, not a bare errno."""
        try:
            yield
        except Exception as exc:
            uri = self.client.get_run(self.run_id).info.artifact_uri
            local = urlsplit(uri).path if urlsplit(uri).scheme in ("", "file") else None
            full = disk_full(Path(local) / name, exc) if local else None
            if full is not None:
                raise full from exc
            raise

    def log_artifact(self, path: Path, directory: str | None = None) -> None:
        with self._storing(f"{directory}/{Path(path).name}" if directory else Path(path).name):
            self.client.log_artifact(self.run_id, str(path), directory)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value)[:5000])

    def log_text(self, text: str, name: str) -> None:
        with self._storing(name):
            self.client.log_text(self.run_id, text, name)

    def log_image(self, png: bytes, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(png)
            self.log_artifact(path)

    def register(self, name: str, directory: str, tags: dict[str, str] | None = None) -> str:
        """Register ``directory`` of this run's artifacts as a new version of model ``name``."""
        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
                raise
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{directory}"
        version = self.client.create_model_version(name, source, run_id=self.run_id, tags=tags or {})
        return str(version.version)


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold a lock that every process creating this database store takes: a file lock beside
    a SQLite file, an advisory lock inside PostgreSQL."""
    scheme = urlsplit(tracking_uri).scheme.split("+")[0]
    if scheme == "sqlite":
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        with open(database.with_name(database.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        return
    if scheme == "postgresql":
        from sqlalchemy import create_engine, text

        key = int.from_bytes(hashlib.sha256(b"stl-pipeline:mlflow-store").digest()[:8], "big", signed=True)
        engine = create_engine(tracking_uri)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()
        return
    yield  # another database: MLflow's own creation, unguarded


def create_store(tracking_uri: str) -> MlflowClient:
    """A client whose store exists. MLflow creates and migrates an empty database on a process's
    first use of it; two processes doing that at once (parallel training steps on a fresh
    store) break the migration's bookkeeping, so the first use happens under a lock."""
    if urlsplit(tracking_uri).scheme in ("http", "https", "file", ""):
        return MlflowClient(tracking_uri=tracking_uri)
    with _store_lock(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # the tracking store, created or checked
        client.search_registered_models(max_results=1)  # the model registry's tables
    return client


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | None = None) -> None:
        self.client = create_store(tracking_uri)
        self.tracking_uri, self.experiment, self.artifact_root = tracking_uri, experiment, artifact_root

    def check_reachable(self) -> None:
        """Fail in seconds, not minutes, when an http(s) tracking server does not answer."""
        if urlsplit(self.tracking_uri).scheme not in ("http", "https"):
            return
        try:  # any answer, even a 404 from a server without /health, means it is up
            requests.get(f"{self.tracking_uri.rstrip('/')}/health", timeout=PREFLIGHT_TIMEOUT_S)
        except requests.RequestException as error:
            raise TrackingUnavailable(
                f"the MLflow tracking server {self.tracking_uri} does not answer ({type(error).__name__}): "
                "start it (`make mlflow`) or point MLFLOW_TRACKING_URI at a running one"
            ) from error

    def end_abandoned(self, ended: Callable[[str], bool], tag: str = "dagster_run_id") -> list[str]:
        """Mark KILLED the RUNNING runs whose orchestrator run (its id in ``tag``) has ended:
        a killed process never ends its MLflow run."""
        found = self.client.search_runs(
            [self.experiment_id()], filter_string="attributes.status = 'RUNNING'", max_results=1000
        )
        abandoned = [r.info.run_id for r in found if tag in r.data.tags and ended(r.data.tags[tag])]
        for run_id in abandoned:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        return abandoned

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=self.artifact_root)
        except MlflowException:  # created concurrently
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def existing(self, run_id: str) -> TrackedRun:
        """A finished run to add to: the evaluation logs its test metrics and tables there."""
        return TrackedRun(self.client, run_id)

    @contextmanager
    def run(self, name: str, tags: dict[str, str] | None = None) -> Iterator[TrackedRun]:
        """An MLflow run that ends FINISHED, or FAILED if the block raises."""
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=tags or {})
        tracked = TrackedRun(self.client, run.info.run_id)
        try:
            yield tracked
        except BaseException as exc:
            try:
                self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            except Exception as error:  # the store may be on the disk that just filled
                reason = (str(error).strip().splitlines() or [""])[0][:200]
                exc.add_note(
                    f"MLflow run {run.info.run_id} could not be marked FAILED ({reason}); the next "
                    "training run marks it KILLED"
                )
            raise
        self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


@contextmanager
def training_run(
    tracker: Tracker,
    name: str,
    tags: dict[str, str],
    params: dict,
    ended: Callable[[str], bool],
    warn: Callable[[str], None],
) -> Iterator[TrackedRun]:
    """The MLflow run a training asset trains in, after checking the server answers (before
    training, not after) and marking KILLED the runs whose orchestrator run ended without them."""
    tracker.check_reachable()
    for abandoned in tracker.end_abandoned(ended):
        warn(f"MLflow run {abandoned} outlived its orchestrator run: marked KILLED")
    with tracker.run(name, tags=tags) as run:
        run.log_params(params)
        yield run


def publish(
    run: TrackedRun,
    folder: Path,
    record: dict,
    config: dict,
    curves: bytes,
    metrics: dict[str, float],
    registered: str,
    tags: dict[str, str],
) -> str:
    """Log a trained model's record (weights-only loadable, with what it was trained on) and
    config as the run's ``checkpoint`` artifacts, its final metrics and training curves, and
    register them as a new version of ``registered``; returns the version."""
    save_checkpoint(folder / RECORD, record)
    atomic_write_bytes(folder / "config.json", json.dumps(config, indent=2).encode())
    run.log_artifact(folder / RECORD, "checkpoint")
    run.log_artifact(folder / "config.json", "checkpoint")
    run.log_metrics(metrics)
    run.log_image(curves, "training_curves.png")
    return run.register(registered, "checkpoint", tags=tags)


def download_record(client: MlflowClient, name: str, version: str) -> dict:
    """The model record a registered version holds, read weights-only."""
    from mlflow.artifacts import download_artifacts

    from stl_pipeline.storage import read_artifact

    found = client.get_model_version(name, str(version))
    with tempfile.TemporaryDirectory() as folder:
        local = Path(download_artifacts(artifact_uri=found.source, dst_path=folder))
        return read_artifact(local / RECORD, load_checkpoint, f"register {name} again")
