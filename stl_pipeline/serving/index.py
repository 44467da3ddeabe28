"""A FAISS inner-product index over L2-normalized product vectors (scores are cosines).

Exact (``IndexFlatIP``) up to ``exact_limit`` products; beyond, an inverted file
(``IndexIVFFlat``) probing ``nprobe`` of its cells. Stored as one safetensors
file: FAISS's own serialization as bytes, ids and provenance in the header, so
loading runs no pickle.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stl_pipeline.storage import atomic_write_with


@dataclass
class ProductIndex:
    index: faiss.Index
    ids: list[str]
    info: dict[str, str] = field(default_factory=dict)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) cosine scores and product positions, best first; -1 where fewer exist."""
        unit = np.ascontiguousarray(queries, dtype=np.float32)
        faiss.normalize_L2(unit)
        return self.index.search(unit, min(k, self.index.ntotal))

    def vectors(self) -> np.ndarray:
        """(P, d) the indexed unit vectors, in id order."""
        return self.index.reconstruct_n(0, self.index.ntotal)

    def positions(self) -> dict[str, int]:
        return {product: i for i, product in enumerate(self.ids)}


def build_index(
    vectors: np.ndarray, ids: list[str], exact_limit: int = 50_000, nprobe: int = 8, seed: int = 0
) -> ProductIndex:
    if len(vectors) != len(ids):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
    unit = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(unit)
    dim = unit.shape[1]
    if len(unit) <= exact_limit:
        index, kind = faiss.IndexFlatIP(dim), "flat"
    else:
        cells = max(2, int(4 * math.sqrt(len(unit))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(unit)
        index.nprobe = min(nprobe, cells)
        kind = f"ivf{cells},nprobe={index.nprobe}"
    index.add(unit)
    if kind != "flat":
        index.make_direct_map()  # so that vectors() can read them back
    return ProductIndex(index, list(ids), {"kind": kind, "dim": str(dim), "products": str(len(ids))})


def save_index(product_index: ProductIndex, path: Path) -> None:
    """One metadata entry: safetensors writes several in hash order, which changes from process
    to process, and the same index must be the same file."""
    data = faiss.serialize_index(product_index.index)
    metadata = {"index": json.dumps({"ids": product_index.ids, "info": product_index.info}, sort_keys=True)}
    tensors = {"faiss": torch.from_numpy(np.asarray(data, dtype=np.uint8))}
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_index(path: Path) -> ProductIndex:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    data = load_file(str(path))["faiss"].numpy()
    index = faiss.deserialize_index(data)
    if "index" in metadata:
        stored = json.loads(metadata["index"])
    else:  # written before the entries were one
        stored = {"ids": json.loads(metadata["ids"]), "info": json.loads(metadata["info"])}
    return ProductIndex(index, stored["ids"], stored["info"])
