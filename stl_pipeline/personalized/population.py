"""The generated articles and customers: their tables in the release's formats, and the latent
styles and tastes behind them (generate.py draws the purchases)."""

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from stl_pipeline.personalized.vocabulary import (
    ADJECTIVES,
    APPEARANCES,
    CLUB,
    COLOURS,
    GARMENT_GROUPS,
    INDEX_GROUPS,
    NEWS,
    PRODUCT_TYPES,
)

if TYPE_CHECKING:
    from stl_pipeline.personalized.generate import HmConfig


def _hex_ids(rng: np.random.Generator, count: int) -> list[str]:
    raw = rng.bytes(32 * count)
    return [raw[i : i + 32].hex() for i in range(0, 32 * count, 32)]


def _pick(rng: np.random.Generator, preferred: np.ndarray, size: int, noise: float) -> np.ndarray:
    """The style's preferred value, or with probability ``noise`` any value."""
    return np.where(rng.random(len(preferred)) < noise, rng.integers(0, size, len(preferred)), preferred)


def _products(
    style: np.ndarray, type_idx: np.ndarray, steps: np.ndarray, first_variant: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Product codes shared by up to four articles of one style and type (its colour variants,
    as the release's ``product_code`` groups them), and each article's variant number. A side
    stream draws the groups, so the purchases drawn after it do not depend on them."""
    side = np.random.default_rng([seed, 1])
    order = np.lexsort((type_idx, style))
    sizes = side.choice(4, len(style), p=[0.4, 0.3, 0.2, 0.1]) + 1
    new_kind = np.r_[True, (np.diff(style[order]) != 0) | (np.diff(type_idx[order]) != 0)]
    starts = np.zeros(len(style), bool)
    position = 0
    for i in range(len(style)):  # a group ends at its size or where the (style, type) changes
        if new_kind[i] or position >= sizes[i]:
            starts[i], position = True, 0
        position += 1
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    code, variant = np.empty(len(style), np.int64), np.empty(len(style), np.int64)
    code[order] = 108_775 + np.cumsum(steps[: len(first)])[group]
    variant[order] = first_variant[group] + np.arange(len(style)) - first[group]
    return code, variant


def articles_table(config: "HmConfig", rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    n, k, noise = config.articles, config.styles, config.attribute_noise
    style = np.sort(np.concatenate([np.arange(k), rng.integers(0, k, n - k)]))
    types = list(PRODUCT_TYPES)
    prefs = {
        "index": rng.integers(0, len(INDEX_GROUPS), k),
        "colour": rng.integers(0, len(COLOURS), k),
        "appearance": rng.integers(0, len(APPEARANCES), k),
        "garment": rng.integers(0, len(GARMENT_GROUPS), k),
    }
    # A style dresses the whole body: each article draws its type from a few per style.
    style_types = np.stack([rng.choice(len(types), 5, replace=False) for _ in range(k)])
    type_idx = _pick(rng, style_types[style, rng.integers(0, 5, n)], len(types), noise)
    index = _pick(rng, prefs["index"][style], len(INDEX_GROUPS), noise)
    colour = _pick(rng, prefs["colour"][style], len(COLOURS), noise)
    appearance = _pick(rng, prefs["appearance"][style], len(APPEARANCES), noise)
    garment = _pick(rng, prefs["garment"][style], len(GARMENT_GROUPS), noise)
    product_code, variant = _products(
        style, type_idx, rng.integers(1, 9, n), rng.integers(1, 30, n), config.seed
    )
    type_names = np.array(types)[type_idx]
    colour_names = np.array([c[0] for c in COLOURS])[colour]
    adjectives = np.array(ADJECTIVES)[rng.integers(0, len(ADJECTIVES), n)]
    table = pd.DataFrame(
        {
            "article_id": [f"0{c:06d}{v:03d}" for c, v in zip(product_code, variant, strict=True)],
            "product_code": product_code,
            "prod_name": [f"{a} {t.lower()}" for a, t in zip(adjectives, type_names, strict=True)],
            "product_type_no": 250 + type_idx,
            "product_type_name": type_names,
            "product_group_name": [PRODUCT_TYPES[t] for t in type_names],
            "graphical_appearance_no": 1010001 + appearance,
            "graphical_appearance_name": np.array(APPEARANCES)[appearance],
            "colour_group_code": 9 + colour,
            "colour_group_name": colour_names,
            "perceived_colour_value_id": 1 + colour % 4,
            "perceived_colour_value_name": np.array([c[1] for c in COLOURS])[colour],
            "perceived_colour_master_id": 5 + colour,
            "perceived_colour_master_name": np.array([c[2] for c in COLOURS])[colour],
            "department_no": 1000 + 100 * index + garment,
            "department_name": [
                f"{GARMENT_GROUPS[g]} {INDEX_GROUPS[i]}" for g, i in zip(garment, index, strict=True)
            ],
            "index_code": np.array(list("ABCDE"))[index],
            "index_name": np.array(INDEX_GROUPS)[index],
            "index_group_no": 1 + index,
            "index_group_name": np.array(INDEX_GROUPS)[index],
            "section_no": 10 + 3 * index + garment % 3,
            "section_name": [
                f"{INDEX_GROUPS[i]} section {1 + g % 3}" for g, i in zip(garment, index, strict=True)
            ],
            "garment_group_no": 1001 + garment,
            "garment_group_name": np.array(GARMENT_GROUPS)[garment],
            "detail_desc": [
                f"{a} {t.lower()} in {c.lower()} {APPEARANCES[p].lower()} fabric."
                for a, t, c, p in zip(adjectives, type_names, colour_names, appearance, strict=True)
            ],
        }
    )
    order = rng.permutation(n)  # the file is not grouped by style
    return table.iloc[order].reset_index(drop=True), style[order]


def customers_table(
    config: "HmConfig", rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    n, k = config.customers, config.styles
    tastes = rng.dirichlet(np.full(k, config.style_focus), n).astype(np.float32)
    favourite = tastes.argmax(1)
    age = np.clip(rng.normal(22 + 3 * (favourite % 10), 6), 16, 90).round()
    repurchase = (
        np.clip(rng.beta(2, 2 / config.repurchase - 2, n), 0, 0.9).astype(np.float32)
        if config.repurchase
        else np.zeros(n, np.float32)
    )
    fn = rng.random(n) < 0.35
    table = pd.DataFrame(
        {
            "customer_id": _hex_ids(rng, n),
            "FN": np.where(fn, 1.0, np.nan),
            "Active": np.where(fn & (rng.random(n) < 0.95), 1.0, np.nan),
            "club_member_status": np.array(CLUB)[rng.choice(3, n, p=[0.93, 0.06, 0.01])],
            "fashion_news_frequency": np.array(NEWS)[rng.choice(3, n, p=[0.64, 0.35, 0.01])],
            "age": pd.array(np.where(rng.random(n) < 0.01, np.nan, age), dtype="Int64"),
            "postal_code": _hex_ids(rng, n),
        }
    )
    return table, tastes, repurchase
