"""Fault injection: killed processes, corrupted state on disk, concurrent runs and hostile
input, each reproduced as an operator or an attacker would meet it. README, Reliability,
summarizes the cases; every one must end in a clear error or an exact resume, never in a
silent wrong result, a stuck run or an unbounded read."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _instance_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "instance" / "dagster.yaml", home / "dagster.yaml")
    return home


def test_a_killed_run_gives_its_gpu_slot_back_to_the_next_run(tmp_path: Path) -> None:
    """kill -9 of a run holding the ``gpu`` slot: the next run ends it and frees the slot,
    instead of waiting for it for ever."""
    home, holding = _instance_home(tmp_path), tmp_path / "holding"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT), "STL_TEST_HOLDING": str(holding)}
    materialize = [DAGSTER, "asset", "materialize", "-m", "stl_pipeline_tests.holder", "--select", "hold"]
    killed = subprocess.Popen(
        materialize,
        env={**env, "STL_TEST_HOLD_SECONDS": "600"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not holding.exists():
        assert killed.poll() is None and time.monotonic() < deadline, "the step never started"
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (dead,) = instance.get_runs()
        assert dead.status == dg.DagsterRunStatus.STARTED  # what the kill leaves behind
        assert instance.event_log_storage.get_concurrency_run_ids() == {dead.run_id}

    again = subprocess.run(materialize, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"freed the pool slots of ended run {dead.run_id}" in again.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_run_ids()
