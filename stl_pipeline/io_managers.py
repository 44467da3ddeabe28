"""Asset values on disk under the data root, written atomically: tables and embeddings as
parquet, the graph as safetensors."""

from pathlib import Path

import dagster as dg
import pandas as pd
from torch_geometric.data import HeteroData

from stl_pipeline.graph.store import load_graph, save_graph
from stl_pipeline.storage import atomic_write_with
from stl_pipeline.vectors import Embeddings


def _missing(path: Path, context: dg.InputContext) -> FileNotFoundError:
    return FileNotFoundError(f"{path} does not exist; materialize {context.asset_key.to_user_string()} first")


class ParquetIOManager(dg.ConfigurableIOManager):
    """One parquet file per asset: ``<base_dir>/<asset key path>.parquet``."""

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return Path(self.base_dir).joinpath(*context.asset_key.path).with_suffix(".parquet")

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        path = self._path(context)
        atomic_write_with(path, lambda tmp: obj.to_parquet(tmp, index=False))
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "rows": len(obj)})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        path = self._path(context)
        if not path.is_file():
            raise _missing(path, context)
        return pd.read_parquet(path)


class EmbeddingIOManager(dg.ConfigurableIOManager):
    """``<base_dir>/<asset>.parquet``: a key column and a fixed-size float32 list column."""

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return Path(self.base_dir).joinpath(*context.asset_key.path).with_suffix(".parquet")

    def handle_output(self, context: dg.OutputContext, obj: Embeddings) -> None:
        path = self._path(context)
        obj.save(path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Embeddings:
        path = self._path(context)
        if not path.is_file():
            raise _missing(path, context)
        return Embeddings.load(path)


class GraphIOManager(dg.ConfigurableIOManager):
    """``<base_dir>/<asset>.safetensors``: tensors, ids and build info; no pickle."""

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return Path(self.base_dir).joinpath(*context.asset_key.path).with_suffix(".safetensors")

    def handle_output(self, context: dg.OutputContext, obj: HeteroData) -> None:
        path = self._path(context)
        save_graph(obj, path, info=dict(getattr(obj, "info", None) or {}))
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> HeteroData:
        path = self._path(context)
        if not path.is_file():
            raise _missing(path, context)
        data, info = load_graph(path)
        data.info = info
        return data
