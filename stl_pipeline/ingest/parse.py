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
# A pair's line is about 150 characters; a longer one is quarantined unparsed, so that one
# line cannot take the memory of the whole ingestion.
MAX_LINE_CHARS = 64 * 1024
# What Python's json raises on input it cannot represent, besides JSONDecodeError: nesting
# past the recursion limit, integers past the digit limit.
UNPARSABLE = (RecursionError, ValueError)


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


def _unparsable(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"invalid JSON: {str(exc).split(';')[0]}"


def iter_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(line number, text, whole)`` of the non-blank lines of a JSON-lines file; a line
    over MAX_LINE_CHARS comes cut there, with ``whole`` False. A UTF-8 BOM is not part of it."""
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise IngestError(f"cannot read pairs file {path}: {exc.strerror}; check STL_PAIRS_PATH") from exc
    with handle:
        number = 0
        while line := handle.readline(MAX_LINE_CHARS):
            number += 1
            whole = line.endswith("\n") or len(line) < MAX_LINE_CHARS
            if not whole:
                while (rest := handle.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
                    pass
            text = line.strip()
            if text:
                yield number, text, whole


def read_categories(path: Path, quarantine: Quarantine) -> pd.DataFrame:
    """Products with their category path (root dropped) and leaf category."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise IngestError(
            f"cannot read categories file {path}: {exc.strerror}; check STL_CATEGORIES_PATH"
        ) from exc
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path} is not UTF-8 ({exc}); fashion-cat.json must be UTF-8 JSON") from exc
    rows = []
    members = list(_members(text, path))
    repeated = _repeated(members)
    for product, category, raw_value in members:
        if product in repeated:
            quarantine.add(path, None, product, repeated[product], f"{json.dumps(product)}: {raw_value}")
            continue
        if isinstance(category, Exception):
            quarantine.add(path, None, product, _unparsable(category), f"{json.dumps(product)}: {raw_value}")
            continue
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


def _repeated(members: list[tuple[str, object, str]]) -> dict[str, str]:
    """Keys that the object holds more than once, each with the reason to quarantine every
    entry: JSON readers keep one of them, but which one differs, and so would the category."""
    values: dict[str, list[str]] = {}
    for key, _, raw_value in members:
        values.setdefault(key, []).append(raw_value)
    return {
        key: f"product id appears {len(found)} times in the object (as {'; '.join(found)[:150]}); "
        "keep one entry with the right category"
        for key, found in values.items()
        if len(found) > 1
    }


def _members(text: str, path: Path) -> Iterator[tuple[str, object, str]]:
    """``(key, value, raw value)`` of the members of the one JSON object in ``text``, each value decoded
    on its own: a value JSON cannot represent comes as its exception, and the rest still parse."""
    decoder, at = json.JSONDecoder(), _skip_space(text, 0)
    shape = (
        f"{path} is not valid JSON ({{}}); fashion-cat.json must be one object "
        '{{"<product id>": "Apparel & Accessories|...|<leaf>"}}'
    )
    if not text.startswith("{", at):
        raise IngestError(shape.format(f"expected one object, found {text[at : at + 1]!r} at character {at}"))
    at = _skip_space(text, at + 1)
    while not text.startswith("}", at):
        try:
            key, at = decoder.raw_decode(text, at)
            at = _skip_space(text, at)
            if not isinstance(key, str) or not text.startswith(":", at):
                raise json.JSONDecodeError("expected a string key and ':'", text, at)
        except json.JSONDecodeError as exc:
            raise IngestError(shape.format(f"{exc.msg} at line {exc.lineno}, column {exc.colno}")) from exc
        start = _skip_space(text, at + 1)
        try:
            value, at = decoder.raw_decode(text, start)
        except UNPARSABLE as exc:
            value, at = exc, _value_end(text, start)
        yield key, value, text[start : min(at, start + RAW_PREVIEW_CHARS)]
        at = _skip_space(text, at)
        if text.startswith(",", at):
            at = _skip_space(text, at + 1)
        elif not text.startswith("}", at):
            raise IngestError(shape.format(f"expected ',' or '}}' at character {at}"))


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _value_end(text: str, at: int) -> int:
    """Where the JSON value starting at ``at`` ends, found by counting brackets outside strings."""
    depth, in_string, escaped = 0, False, False
    for i in range(at, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            if depth == 0:
                return i
            depth -= 1
        elif char == "," and depth == 0:
            return i
    return len(text)


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
    for number, text, whole in iter_lines(path):
        lines += 1
        if not whole:
            quarantine.add(path, number, None, f"line is over {MAX_LINE_CHARS:,} characters", text)
            continue
        try:
            record = json.loads(text)
        except UNPARSABLE as exc:
            quarantine.add(path, number, None, _unparsable(exc), text)
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
