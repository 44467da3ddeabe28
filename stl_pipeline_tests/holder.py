"""A code location whose one asset, in the pool ``gpu``, holds its slot for a while: kills
of a run that holds a slot, without an embedding or a training step's minutes of set-up."""

import os
import time
from pathlib import Path

import dagster as dg

from stl_pipeline.executor import STEP_EXECUTOR


@dg.asset(pool="gpu")
def hold() -> None:
    Path(os.environ["STL_TEST_HOLDING"]).touch()
    time.sleep(float(os.environ.get("STL_TEST_HOLD_SECONDS", "0")))


defs = dg.Definitions(assets=[hold], executor=STEP_EXECUTOR)
