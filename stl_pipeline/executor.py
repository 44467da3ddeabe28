"""The code location's executor: Dagster's default one, whose steps fork from a loaded code
location, and which first gives back the pool slots of runs that died on this machine.

A step of a GPU-bound asset holds a slot of the pool ``gpu`` while it runs. A run killed
with SIGKILL (an out-of-memory kill, a closed terminal) never frees its slots, and the
instance goes on listing it as ``STARTED``: every later GPU-bound step waits for ever. On a
deployment, run monitoring in the daemon frees the slots of ended runs (docs/reference.md, Reliability);
on a local instance there may be no daemon, so every run starts by ending the runs whose
orchestrating process is gone and freeing the slots of every ended run.
"""

import dagster as dg
import psutil

# GPU-bound assets (embeddings, training) hold a slot of this pool while they run: one slot
# per card keeps two of them off one card, across all runs.
GPU_POOL = "gpu"
# Under the Kubernetes executor each step is a pod of its own: a GPU-bound one asks for a card.
GPU_STEP_TAGS = {
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
}

# Dagster's executors announce the orchestrating process of a run in an engine event
# "Executing steps in process (pid: N)" / "Executing steps using multiprocess executor: ...".
ORCHESTRATOR_EVENT = "Executing steps"
UNFINISHED = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def _orchestrator_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        if event is not None and (event.message or "").startswith(ORCHESTRATOR_EVENT):
            pid = event.engine_event_data.metadata.get("pid")
            return None if pid is None else int(str(pid.value))
    return None


def _alive(pid: int, since: float) -> bool:
    """Whether ``pid`` is a process that started before the run did (else the id was reused)."""
    try:
        return psutil.Process(pid).create_time() <= since + 1.0
    except psutil.Error:
        return False


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Ends the runs on this machine whose orchestrating process is gone, and frees the pool
    slots of every ended run; returns the runs ended or freed. Only on a local (SQLite)
    instance: a process id means nothing on a shared one, where the daemon's run monitoring
    does this."""
    # Dagster's SQLite run storage (in memory too), told by class name: its class is not public API.
    if not any(cls.__name__ == "SqliteRunStorage" for cls in type(instance.run_storage).__mro__):
        return []
    released = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=list(UNFINISHED))):
        pid = _orchestrator_pid(instance, record.dagster_run.run_id)
        since = record.start_time or record.create_timestamp.timestamp()
        if pid is None or _alive(pid, since):
            continue
        instance.report_run_failed(
            record.dagster_run,
            f"Its orchestrating process {pid} is gone (killed?): ended by the next run on this "
            "instance, which freed its pool slots.",
        )
        released.append(record.dagster_run.run_id)
    for run_id in instance.event_log_storage.get_concurrency_run_ids():
        record = instance.get_run_record_by_id(run_id)
        if record is None or record.dagster_run.status not in UNFINISHED:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            released.append(run_id)
    return list(dict.fromkeys(released))


def _forkserver_steps(config: dict) -> dict:
    """Dagster's default executor, whose multiprocess steps fork from a server that has
    already loaded this code location (unless a run names another start method): a step
    starts in milliseconds instead of importing everything again."""
    if "multiprocess" in config:
        return {"multiprocess": {"start_method": {"forkserver": {}}, **(config["multiprocess"] or {})}}
    return config


_DEFAULT = dg.multi_or_in_process_executor


@dg.executor(
    name="stl_steps",
    config_schema=_DEFAULT.config_schema.as_field(),
    requirements=_DEFAULT.get_requirements,
)
def _steps(context: dg.InitExecutorContext) -> dg.Executor:
    for run_id in release_dead_runs(context.instance):
        dg.get_dagster_logger().warning(f"ended run {run_id} and freed its pool slots")
    return _DEFAULT.executor_creation_fn(context)


STEP_EXECUTOR = _steps.configured(_forkserver_steps, config_schema=_DEFAULT.config_schema.as_field())


def step_executor(kind: str) -> dg.ExecutorDefinition:
    """``multiprocess``: the steps above, on the run's machine. ``k8s``: a Kubernetes job per
    step (dagster-k8s, in the deploy extra), so GPU-bound steps get pods with a card each."""
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return STEP_EXECUTOR
