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

from stl_pipeline.storage import atomic_write_with, read_artifact

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

    def where(self, mask: np.ndarray) -> "Embeddings":
        """The rows where ``mask`` is true, in order, with the same info."""
        return Embeddings(
            [k for k, m in zip(self.keys, mask, strict=True) if m], self.vectors[mask], self.info
        )

    @classmethod
    def concat(cls, parts: dict[str, "Embeddings"]) -> "Embeddings":
        """One set from the partitions ``parts`` (name -> part), which must have been made alike
        (same model, weights, transform, source): partitions computed with other settings
        would mix vectors of different spaces."""
        infos = {name: part.info for name, part in parts.items()}
        first = next(iter(infos.values()), {})
        odd = [name for name, info in infos.items() if info != first]
        if odd:
            raise ValueError(
                f"partitions {', '.join(odd)} were made with other settings than the rest "
                f"({infos[odd[0]]} against {first}): rematerialize every partition"
            )
        dims = {part.dim for part in parts.values() if len(part)}
        if len(dims) > 1:
            raise ValueError(
                f"partitions hold vectors of dimensions {sorted(dims)}: rematerialize every partition"
            )
        dim = dims.pop() if dims else max((part.dim for part in parts.values()), default=0)
        keys = [key for part in parts.values() for key in part.keys]
        vectors = [part.vectors for part in parts.values() if len(part)]
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
        return cls(keys, stacked, dict(first))


def partition_file(folder: Path, partition: str) -> Path:
    return folder / f"{partition}.parquet"


def save_partitions(folder: Path, parts: dict[str, Embeddings]) -> None:
    """Each partition to its own file, atomically: a run of some partitions leaves the others."""
    for partition, part in parts.items():
        part.save(partition_file(folder, partition))


def load_partitions(folder: Path, partitions: list[str] | tuple[str, ...]) -> Embeddings:
    """The partitions' files of an asset's folder as one set; a missing partition is named,
    with what to run."""
    asset = folder.name
    missing = [p for p in partitions if not partition_file(folder, p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{asset} has no partition {', '.join(missing)} under {folder}: materialize them "
            "(the stl_embed job, one run per partition, or stl_ingest for all)"
        )
    parts = {
        p: read_artifact(
            partition_file(folder, p), Embeddings.load, f"rematerialize partition {p} of {asset}"
        )
        for p in partitions
    }
    try:
        return Embeddings.concat(parts)
    except ValueError as error:
        raise ValueError(f"{asset}: {error}") from None
