"""Asset values on disk under the data root, written atomically: tables and embeddings as
parquet, the graph and the product index as safetensors, models via weights-only torch."""

from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import pandas as pd
from pydantic import Field

from stl_pipeline.artifacts import HeteroData, ProductIndex
from stl_pipeline.catalogue import STORES
from stl_pipeline.checkpoints import load_checkpoint, save_checkpoint
from stl_pipeline.guards import FailedCheckError, unresolved_failure
from stl_pipeline.storage import atomic_write_with, read_artifact
from stl_pipeline.vectors import Embeddings


class _FileIOManager(dg.ConfigurableIOManager):
    """One file per asset: ``<base_dir>/<asset key path><suffix>``, replaced atomically; the
    folder and suffix of each store are in catalogue.py. An input whose latest materialization
    failed a blocking check, in any run, is refused (guards.unresolved_failure)."""

    base_dir: str
    blocking_checks: dict[str, list[str]] = Field(
        default_factory=dict, description="asset -> its blocking checks (set in definitions.py)."
    )
    key: ClassVar[str]

    def _refuse_failed(self, context: dg.InputContext) -> None:
        asset = context.asset_key.to_user_string()
        checks = self.blocking_checks.get(asset)
        if not checks:
            return
        try:
            run_id: str | None = context.step_context.run_id
        except dg.DagsterInvariantViolationError:  # a load outside any run: defs.load_asset_value
            run_id = None
        try:
            instance = context.instance
        except dg.DagsterInvariantViolationError:
            raise FailedCheckError(
                f"{asset} has blocking checks, and without an instance there is no telling whether "
                "they passed: set DAGSTER_HOME to the instance that materialized it"
            ) from None
        if reason := unresolved_failure(instance, asset, checks, run_id):
            raise FailedCheckError(reason)

    @property
    def suffix(self) -> str:
        return STORES[self.key][1]

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return Path(self.base_dir).joinpath(*context.asset_key.path).with_suffix(self.suffix)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context)
        extra = self.write(obj, path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), **extra})

    def load_input(self, context: dg.InputContext) -> Any:
        self._refuse_failed(context)
        path = self._path(context)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; materialize {context.asset_key.to_user_string()} first"
            )
        asset = context.asset_key.to_user_string()
        return read_artifact(path, self.read, f"rematerialize {asset}")

    def write(self, obj: Any, path: Path) -> dict:
        raise NotImplementedError

    def read(self, path: Path) -> Any:
        raise NotImplementedError


class ParquetIOManager(_FileIOManager):
    """Tables as parquet."""

    key: ClassVar[str] = "io_manager"

    def write(self, obj: pd.DataFrame, path: Path) -> dict:
        atomic_write_with(path, lambda tmp: obj.to_parquet(tmp, index=False))
        return {"rows": len(obj)}

    def read(self, path: Path) -> pd.DataFrame:
        return pd.read_parquet(path)


class EmbeddingIOManager(_FileIOManager):
    """Embeddings as parquet: a key column and a fixed-size float32 list column. A partitioned
    asset is a folder with a file per partition; a run writes its partitions' files (the asset
    returns partition -> embeddings), and a reader gets the partitions it asks for as one set."""

    key: ClassVar[str] = "embedding_io_manager"

    def folder(self, asset: str) -> Path:
        return Path(self.base_dir) / asset

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if not context.has_asset_partitions:
            super().handle_output(context, obj)
            return
        from stl_pipeline.vectors import save_partitions

        folder = self.folder(context.asset_key.to_user_string())
        save_partitions(folder, {p: obj[p] for p in context.asset_partition_keys})
        context.add_output_metadata({"path": dg.MetadataValue.path(str(folder))})

    def load_input(self, context: dg.InputContext) -> Any:
        if context.has_asset_partitions:
            partitions = context.asset_partition_keys
        elif context.asset_partitions_def is not None:
            # A load that names no partition (``defs.load_asset_value`` in a notebook): all of them.
            partitions = context.asset_partitions_def.get_partition_keys()
        else:
            return super().load_input(context)
        self._refuse_failed(context)
        return self.load_partitions(context.asset_key.to_user_string(), list(partitions))

    def load_partitions(self, asset: str, partitions: list[str]) -> Embeddings:
        from stl_pipeline.vectors import load_partitions

        return load_partitions(self.folder(asset), partitions)

    def write(self, obj: Embeddings, path: Path) -> dict:
        obj.save(path)
        return {}

    def read(self, path: Path) -> Embeddings:
        return Embeddings.load(path)


class GraphIOManager(_FileIOManager):
    """The graph as safetensors: tensors, ids and build info; no pickle."""

    key: ClassVar[str] = "graph_io_manager"

    def write(self, obj: HeteroData, path: Path) -> dict:
        from stl_pipeline.graph.store import save_graph

        save_graph(obj, path, info=dict(getattr(obj, "info", None) or {}))
        return {}

    def read(self, path: Path) -> HeteroData:
        from stl_pipeline.graph.store import load_graph

        data, info = load_graph(path)
        data.info = info
        return data


class ModelIOManager(_FileIOManager):
    """A trained model record (weights, config, schema) via torch.save; loaded weights-only."""

    key: ClassVar[str] = "model_io_manager"

    def write(self, obj: dict, path: Path) -> dict:
        save_checkpoint(path, obj)
        return {}

    def read(self, path: Path) -> dict:
        return load_checkpoint(path)


class IndexIOManager(_FileIOManager):
    """A ``ProductIndex`` as safetensors: FAISS bytes, ids and provenance; no pickle."""

    key: ClassVar[str] = "index_io_manager"

    def write(self, obj: ProductIndex, path: Path) -> dict:
        from stl_pipeline.serving.index import save_index

        save_index(obj, path)
        return {}

    def read(self, path: Path) -> ProductIndex:
        from stl_pipeline.serving.index import load_index

        return load_index(path)
