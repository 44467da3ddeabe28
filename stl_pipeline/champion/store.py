"""Champion snapshots on disk and the MLflow aliases that name them.

A snapshot is what serving needs, frozen together at promotion: the model record and the
graph it was trained on (and, for Shop the Look, the pairs), in
``STL_DATA_DIR/champion/<group>/<mlflow run id>/``. Files are hard links to the asset files
(written by rename, so later materializations never change them), or copies across devices.
``current.json`` names the serving snapshot and is replaced atomically after the snapshot is
complete: readers see the old champion or the new one, never a mix.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stl_pipeline.checkpoints import RECORD, load_checkpoint, save_checkpoint
from stl_pipeline.storage import atomic_write_bytes, read_artifact

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData

CURRENT = "current.json"
PRODUCTS = "products.npy"  # the STL champion's product vectors, in its graph's order
CHAMPION, CHALLENGER = "champion", "challenger"  # MLflow aliases


class NoChampion(FileNotFoundError):
    """No model has been promoted in this data directory yet."""


def group_dir(data_dir: Path, group: str) -> Path:
    return Path(data_dir) / "champion" / group


def write_snapshot(
    data_dir: Path,
    group: str,
    run_id: str,
    record: dict,
    files: dict[str, Path],
    arrays: dict[str, np.ndarray],
) -> Path:
    """The snapshot of ``run_id``: its record, ``files`` (name in the snapshot -> source) and
    ``arrays`` computed once for it (the served product vectors), saved as ``.npy``."""
    if not run_id.isalnum():
        raise ValueError(f"MLflow run id {run_id!r} is not alphanumeric: refusing it as a folder name")
    folder = group_dir(data_dir, group) / run_id
    if (folder / "complete.json").is_file():
        return folder  # one run's snapshot never changes
    staging = folder.with_name(f".{run_id}.{os.getpid()}.part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_checkpoint(staging / RECORD, record)
    for name, source in files.items():
        try:
            os.link(source, staging / name)
        except OSError:  # another file system, or links unsupported
            shutil.copy2(source, staging / name)
    for name, array in arrays.items():
        np.save(staging / name, array, allow_pickle=False)
    (staging / "complete.json").write_text(json.dumps(sorted([*files, *arrays])))
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete one from a killed promotion
    os.replace(staging, folder)
    return folder


def set_current(data_dir: Path, group: str, info: dict) -> None:
    atomic_write_bytes(group_dir(data_dir, group) / CURRENT, json.dumps(info, indent=2).encode())


def current(data_dir: Path, group: str) -> dict:
    """What ``group`` serves: the champion's description, with ``folder`` its snapshot."""
    path = group_dir(data_dir, group) / CURRENT
    if not path.is_file():
        raise NoChampion(
            f"no {group} champion under {path.parent}: materialize the pipeline first (`make demo`, or "
            f"the {group} champion asset in the UI); a model is served only after it passes its gate"
        )
    info = json.loads(path.read_text())
    return info | {"folder": str(group_dir(data_dir, group) / info["mlflow_run_id"])}


def snapshot_record(folder: Path) -> dict:
    return read_artifact(Path(folder) / RECORD, load_checkpoint, "promote a model again")


def load_snapshot(folder: Path) -> tuple[dict, "HeteroData"]:
    """A snapshot's model record and the graph it was trained on (``info`` attached)."""
    from stl_pipeline.graph.store import load_graph

    graph, info = read_artifact(Path(folder) / "graph.safetensors", load_graph, "promote a model again")
    graph.info = info
    return snapshot_record(folder), graph


def snapshot_products(folder: Path) -> np.ndarray:
    """The champion's product vectors, computed once at promotion: everything that serves it
    reads these, so a kept champion serves the same vectors bit for bit."""
    return read_artifact(
        Path(folder) / PRODUCTS, lambda path: np.load(path, allow_pickle=False), "promote a model again"
    )


def served(champion: dict, group: str) -> tuple[dict, dict, "HeteroData"]:
    """What a champion asset's value says is served: its description, record and graph."""
    serving = champion["serving"]
    if not serving:
        raise NoChampion(f"no {group} model has passed its gate yet: nothing to serve")
    return serving, *load_snapshot(Path(serving["folder"]))


def champion_version(client, names: list[str]) -> tuple[str, str, str] | None:
    """(registered model, version, run id) that holds the ``champion`` alias among ``names``."""
    from mlflow.exceptions import MlflowException

    for name in names:
        try:
            found = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:  # no such model, or no such alias
            continue
        return name, str(found.version), found.run_id
    return None


def move_aliases(client, names: list[str], name: str, version: str, promoted: bool) -> None:
    """``challenger`` on the new version; ``champion`` too when promoted, and then on no other
    registered model of the group."""
    from mlflow.exceptions import MlflowException

    client.set_registered_model_alias(name, CHALLENGER, version)
    if not promoted:
        return
    for other in names:
        if other != name:
            with contextlib.suppress(MlflowException):  # it held none
                client.delete_registered_model_alias(other, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
