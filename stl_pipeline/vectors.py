"""Embeddings keyed by id, stored as parquet with a fixed-size list column.

Parquet keeps them readable by pandas, DuckDB or Spark, and the schema
metadata records which model, weights and transform made them.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stl_pipeline.storage import atomic_write_with

KEY, VECTOR, INFO = "key", "embedding", b"stl_pipeline.embeddings"


@dataclass
class Embeddings:
    keys: list[str]
    vectors: np.ndarray  # (n, d) float32, L2-normalized
    info: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.keys) != len(self.vectors):
            raise ValueError(f"{len(self.keys)} keys for vectors of shape {self.vectors.shape}")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def positions(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}

    def take(self, keys: list[str]) -> np.ndarray:
        """Vectors of ``keys``, in that order; a missing key raises KeyError naming it."""
        where = self.positions()
        return self.vectors[[where[key] for key in keys]]

    def to_table(self) -> pa.Table:
        flat = pa.array(np.ascontiguousarray(self.vectors, dtype=np.float32).reshape(-1))
        table = pa.table(
            {KEY: pa.array(self.keys, pa.string()), VECTOR: pa.FixedSizeListArray.from_arrays(flat, self.dim)}
        )
        return table.replace_schema_metadata({INFO: json.dumps(self.info)})

    def save(self, path: Path) -> None:
        atomic_write_with(path, lambda tmp: pq.write_table(self.to_table(), tmp))

    @classmethod
    def from_table(cls, table: pa.Table) -> "Embeddings":
        column = table.column(VECTOR).combine_chunks()
        dim = column.type.list_size
        vectors = column.flatten().to_numpy().astype(np.float32, copy=False).reshape(-1, dim)
        info = json.loads((table.schema.metadata or {}).get(INFO, b"{}"))
        return cls(table.column(KEY).to_pylist(), vectors, info)

    @classmethod
    def load(cls, path: Path) -> "Embeddings":
        return cls.from_table(pq.read_table(path))
