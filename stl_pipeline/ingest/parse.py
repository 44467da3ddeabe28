"""Streaming parsers and validators for ``fashion.json`` and ``fashion-cat.json``.

Nothing is dropped silently: a malformed record becomes a quarantine row with
its file, line (or product id) and the reason, and callers decide from the
quarantined share whether the input is usable at all.
"""

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from stl_pipeline.categories import UnknownCategoryError, parse_category_path
from stl_pipeline.ids import is_signature

QUARANTINE_COLUMNS = ["file", "line", "key", "reason", "raw"]
RAW_PREVIEW_CHARS = 300


class IngestError(ValueError):
    """The input cannot be ingested as a whole (unreadable, or too much of it is malformed)."""


@dataclass
class Quarantine:
    """Rejected records, kept for the operator who has to fix the input."""

    rows: list[dict] = field(default_factory=list)

    def add(self, file: Path, line: int | None, key: str | None, reason: str, raw: str) -> None:
        self.rows.append(
            {"file": str(file), "line": line, "key": key, "reason": reason, "raw": raw[:RAW_PREVIEW_CHARS]}
        )

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=QUARANTINE_COLUMNS)
        return frame.astype(
            {"line": "Int64", "file": "string", "key": "string", "reason": "string", "raw": "string"}
        )


def reason_kinds(reasons: pd.Series) -> pd.Series:
    """Reasons with their quoted values, lists and ids blanked, so alike reasons count together."""
    return reasons.str.replace(r"'.*'|\[.*\]|[0-9a-f]{32}", "…", regex=True)


def _describe(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def bbox_problem(bbox: object) -> str | None:
    """Why ``bbox`` is not a normalized (left, top, right, bottom) box, or None."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        return f"bbox {_describe(bbox)} is not a list of four numbers [left, top, right, bottom]"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return f"bbox {_describe(bbox)} holds a value that is not a number"
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox {_describe(bbox)} holds a value that is not finite"
    if not all(0.0 <= v <= 1.0 for v in bbox):
        return f"bbox {_describe(bbox)} lies outside [0, 1]; boxes are normalized to the image size"
    left, top, right, bottom = bbox
    if not left < right:
        return f"bbox {_describe(bbox)} has left >= right (the format is [left, top, right, bottom])"
    if not top < bottom:
        return f"bbox {_describe(bbox)} has top >= bottom (the format is [left, top, right, bottom])"
    return None


def _pair_problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return f"line is a JSON {type(record).__name__}, not an object"
    for key in ("product", "scene", "bbox"):
        if key not in record:
            return f"missing key {key!r}"
    for key in ("product", "scene"):
        if not is_signature(record[key]):
            return f"{key} id {_describe(record[key])} is not 32 lowercase hex characters"
    return bbox_problem(record["bbox"])


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` of the non-blank lines of a JSON-lines file."""
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise IngestError(f"cannot read pairs file {path}: {exc.strerror}; check STL_PAIRS_PATH") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if text:
                yield number, text


def read_categories(path: Path, quarantine: Quarantine) -> pd.DataFrame:
    """Products with their category path (root dropped) and leaf category."""
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            mapping = json.load(handle)
    except OSError as exc:
        raise IngestError(
            f"cannot read categories file {path}: {exc.strerror}; check STL_CATEGORIES_PATH"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IngestError(
            f"{path} is not valid JSON ({exc}); fashion-cat.json must be one object "
            '{"<product id>": "Apparel & Accessories|...|<leaf>"}'
        ) from exc
    if not isinstance(mapping, dict):
        raise IngestError(f"{path} holds a JSON {type(mapping).__name__}; expected one object of id -> path")
    rows = []
    for product, category in mapping.items():
        raw = json.dumps({product: category})
        if not is_signature(product):
            quarantine.add(
                path,
                None,
                product,
                f"product id {_describe(product)} is not 32 lowercase hex characters",
                raw,
            )
            continue
        try:
            category_path, leaf = parse_category_path(category)
        except UnknownCategoryError as exc:
            quarantine.add(path, None, product, str(exc), raw)
            continue
        rows.append((product, category_path, leaf))
    return pd.DataFrame(rows, columns=["product", "category_path", "category"])


@dataclass
class PairsResult:
    pairs: pd.DataFrame
    lines: int  # non-blank lines read
    duplicates: int


def read_pairs(path: Path, categories: pd.DataFrame, quarantine: Quarantine) -> PairsResult:
    """Valid, de-duplicated pairs whose product has a category; the first of duplicates wins."""
    known = dict(zip(categories["product"], categories["category"], strict=True))
    rows = []
    seen: set[tuple[str, str]] = set()
    lines = duplicates = 0
    for number, text in iter_lines(path):
        lines += 1
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            quarantine.add(path, number, None, f"invalid JSON: {exc.msg} at column {exc.colno}", text)
            continue
        problem = _pair_problem(record)
        if problem is None and record["product"] not in known:
            problem = f"product {record['product']} has no valid category in fashion-cat.json"
        if problem:
            key = record.get("product") if isinstance(record, dict) else None
            quarantine.add(path, number, key if isinstance(key, str) else None, problem, text)
            continue
        scene, product = record["scene"], record["product"]
        if (scene, product) in seen:
            duplicates += 1
            continue
        seen.add((scene, product))
        left, top, right, bottom = (float(v) for v in record["bbox"])
        rows.append((f"{scene}_{product}", scene, product, known[product], left, top, right, bottom, number))
    pairs = pd.DataFrame(
        rows, columns=["pair_id", "scene", "product", "category", "left", "top", "right", "bottom", "line"]
    )
    return PairsResult(pairs=pairs, lines=lines, duplicates=duplicates)
