"""Tables are stored as parquet files under the data root, written atomically."""

from pathlib import Path

import dagster as dg
import pandas as pd

from stl_pipeline.storage import atomic_write_with


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
            raise FileNotFoundError(
                f"{path} does not exist; materialize {context.asset_key.to_user_string()} first"
            )
        return pd.read_parquet(path)
