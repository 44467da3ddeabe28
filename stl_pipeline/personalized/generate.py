"""A deterministic generator of purchase data in the H&M release's formats.

It writes ``transactions_train.csv``, ``articles.csv`` and ``customers.csv`` with the
release's columns and types, and ``truth/``: the latent parameters only the oracle reads.

What makes it learnable, and popularity strong but beatable:

* every article belongs to one latent style, and its attributes (index group, product
  type, colour, appearance, garment group) follow the style's preferences with noise;
* a customer's purchases draw styles from a few favourites (a sparse Dirichlet), so
  history and co-purchases predict the style of the next purchase;
* an article sells in proportion to a heavy-tailed base popularity times a life cycle
  (launch, then decay) times its style's season, so last week's best sellers are good
  guesses for next week;
* a share of purchases repeats one of the customer's earlier ones, and trade is busier
  at weekends.

Customers are generated in chunks and each chunk's purchases appended to the CSV, so the
release's size (``--full-scale``) runs in bounded memory.
"""

import argparse
import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from stl_pipeline.personalized.files import ARTICLES_FILE, CUSTOMERS_FILE, TRANSACTIONS_FILE, TRUTH_DIR
from stl_pipeline.personalized.population import articles_table, customers_table
from stl_pipeline.storage import atomic_write_with

# The release: two years of purchases.
FULL_SCALE = {"customers": 1_371_980, "articles": 105_542, "purchases": 31_788_324, "days": 734}
RELEASE_START = date(2018, 9, 20)
WEEKDAY_TRADE = np.array([0.85, 0.8, 0.85, 0.95, 1.1, 1.35, 1.1])  # Monday first
CHUNK_CUSTOMERS = 100_000


@dataclass(frozen=True)
class HmConfig:
    customers: int = 3_000
    articles: int = 600
    purchases: int = 60_000
    days: int = 182  # the history's length; the last 14 are the validation and test windows
    styles: int = 12
    style_focus: float = 0.3  # Dirichlet concentration of a customer's styles: lower, more focused
    attribute_noise: float = 0.15  # share of an article's attributes drawn regardless of its style
    repurchase: float = 0.12  # mean share of purchases that repeat an earlier one
    seed: int = 0

    def validate(self) -> None:
        if min(self.customers, self.articles, self.purchases, self.styles) < 1:
            raise ValueError("customers, articles, purchases and styles must be positive")
        if self.articles < self.styles:
            raise ValueError(f"{self.articles} articles cannot fill {self.styles} styles")
        if self.days < 21:
            raise ValueError(f"days={self.days}: need at least 21 (a training week, validation and test)")
        for name in ("style_focus",):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("attribute_noise", "repurchase"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")


@dataclass(frozen=True)
class Truth:
    """The latent parameters: what an oracle knows and a model must infer."""

    article_style: np.ndarray  # (articles,) int
    popularity: np.ndarray  # (weeks, articles) float32: relative sales rate, by style season and life cycle
    customer_styles: np.ndarray  # (customers, styles) float32: each row sums to 1
    customer_repurchase: np.ndarray  # (customers,) float32
    start: date
    article_index: pd.Index  # the article ids, in the rows' order
    customer_index: pd.Index


def _popularity(config: HmConfig, style: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(weeks, articles): base popularity x life cycle x the style's season, at mid-week."""
    n, weeks = len(style), -(-config.days // 7)
    base = rng.lognormal(0.0, 1.2, n)
    launch = rng.uniform(-90, config.days, n)
    lifetime = rng.uniform(20, 150, n)
    phase = rng.uniform(0, 2 * np.pi, config.styles)
    amplitude = rng.uniform(0.0, 0.6, config.styles)
    day = 7 * np.arange(weeks)[:, None] + 3.5
    age = day - launch[None, :]
    cycle = np.where(age >= 0, np.exp(-np.clip(age, 0, None) / lifetime[None, :]), 0.0) + 0.01
    season = 1 + amplitude[style][None, :] * np.sin(2 * np.pi * day / 365 + phase[style][None, :])
    return (base[None, :] * cycle * season).astype(np.float32)


def _flat_cdf(popularity: np.ndarray, style: np.ndarray, styles: int) -> tuple[np.ndarray, np.ndarray]:
    """One sorted array for every (style, week) distribution: block ``b = style * weeks + week``
    holds ``b + F`` for the style's articles' cumulative shares ``F``, so a single
    ``searchsorted(b + u)`` draws from any block."""
    weeks = popularity.shape[0]
    order = np.argsort(style, kind="stable")
    bounds = np.searchsorted(style[order], np.arange(styles + 1))
    values, articles = [], []
    for k in range(styles):
        members = order[bounds[k] : bounds[k + 1]]
        share = popularity[:, members].astype(np.float64)
        cum = np.cumsum(share, axis=1)
        cum /= cum[:, -1:]
        cum[:, -1] = 1.0
        values.append((k * weeks + np.arange(weeks))[:, None] + cum - 1e-12)
        articles.append(np.broadcast_to(members, share.shape))
    return np.concatenate([v.ravel() for v in values]), np.concatenate([a.ravel() for a in articles])


def _repeat(customer: np.ndarray, rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For purchases sorted by customer then day: the index each one copies its article from,
    itself or (with the customer's repurchase rate) one of the customer's earlier purchases,
    followed to the purchase that drew it (pointer jumping: sources only point backwards)."""
    index = np.arange(len(customer))
    first = np.searchsorted(customer, customer)  # the customer's first purchase
    position = index - first
    repeats = (position > 0) & (rng.random(len(index)) < rate[customer])
    source = np.where(repeats, first + (rng.random(len(index)) * position).astype(np.int64), index)
    while True:
        jumped = source[source]
        if np.array_equal(jumped, source):
            return source
        source = jumped


def _transactions(
    config: HmConfig,
    rng: np.random.Generator,
    counts: np.ndarray,
    tastes: np.ndarray,
    repurchase: np.ndarray,
    cdf: tuple[np.ndarray, np.ndarray],
    prices: np.ndarray,
    day_weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of customers' purchases: (customer, day, article, price, channel) arrays,
    sorted by customer then day."""
    weeks = -(-config.days // 7)
    customer = np.repeat(np.arange(len(counts)), counts)
    # Baskets: about three items each, on the customer's own days.
    baskets = np.maximum(1, np.round(counts / 3 * rng.uniform(0.6, 1.4, len(counts)))).astype(np.int64)
    basket_start = np.concatenate([[0], np.cumsum(baskets)[:-1]])
    basket_day = rng.choice(config.days, int(baskets.sum()), p=day_weights)
    basket = basket_start[customer] + (rng.random(len(customer)) * baskets[customer]).astype(np.int64)
    day = basket_day[basket]
    order = np.lexsort((day, customer))
    customer, day = customer[order], day[order]
    # A style per purchase from the customer's tastes, then an article from that style's week.
    cum = np.cumsum(tastes, axis=1)
    style = np.minimum((cum[customer] < rng.random(len(customer))[:, None]).sum(1), config.styles - 1)
    block = style * weeks + day // 7
    values, articles = cdf
    slot = np.minimum(np.searchsorted(values, block + rng.random(len(block))), len(values) - 1)
    article = articles[slot]
    article = article[_repeat(customer, repurchase, rng)]
    discount = np.where(rng.random(len(article)) < 0.2, rng.uniform(0.5, 0.8, len(article)), 1.0)
    price = np.maximum(1, np.round(prices[article] * discount * 590)) / 590  # whole units, never 0
    return customer, day, article, price


def generate_hm(config: HmConfig, out: Path, chunk_customers: int = CHUNK_CUSTOMERS) -> dict:
    """Write the three CSVs and ``truth/`` into ``out`` (which must not exist); return a summary."""
    config.validate()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; generate into a new directory")
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")  # a concurrent writer has its own
    shutil.rmtree(staging, ignore_errors=True)
    (staging / TRUTH_DIR).mkdir(parents=True)
    rng = np.random.default_rng(config.seed)
    articles, style = articles_table(config, rng)
    popularity = _popularity(config, style, rng)
    customers, tastes, repurchase = customers_table(config, rng)
    start = (
        RELEASE_START
        if config.days == FULL_SCALE["days"]
        else RELEASE_START + timedelta(days=734 - config.days)
    )
    weekday = np.array([(start + timedelta(days=d)).weekday() for d in range(7)])
    day_weights = np.resize(WEEKDAY_TRADE[weekday], config.days) * np.linspace(0.9, 1.1, config.days)
    day_weights /= day_weights.sum()
    activity = rng.gamma(0.8, 1.0, config.customers)
    counts = rng.multinomial(config.purchases, activity / activity.sum())
    prices = rng.lognormal(np.log(15), 0.6, config.articles) / 590
    cdf = _flat_cdf(popularity, style, config.styles)
    customer_ids = pa.array(customers["customer_id"])
    article_ids = pa.array(articles["article_id"])
    schema = pa.schema(
        [
            ("t_dat", pa.date32()),
            ("customer_id", pa.string()),
            ("article_id", pa.string()),
            ("price", pa.float64()),
            ("sales_channel_id", pa.int8()),
        ]
    )
    epoch = (start - date(1970, 1, 1)).days
    online = rng.beta(2, 1.2, config.customers)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with (
        open(staging / TRANSACTIONS_FILE, "wb") as sink,
        pacsv.CSVWriter(sink, schema, write_options=options) as writer,
    ):
        sink.write((",".join(schema.names) + "\n").encode())
        for first in range(0, config.customers, chunk_customers):
            last = min(first + chunk_customers, config.customers)
            customer, day, article, price = _transactions(
                config,
                rng,
                counts[first:last],
                tastes[first:last],
                repurchase[first:last],
                cdf,
                prices,
                day_weights,
            )
            customer += first
            channel = np.where(rng.random(len(customer)) < online[customer], 2, 1).astype(np.int8)
            writer.write_table(
                pa.table(
                    [
                        pa.array((day + epoch).astype(np.int32), pa.date32()),
                        customer_ids.take(pa.array(customer)),
                        article_ids.take(pa.array(article)),
                        pa.array(price),
                        pa.array(channel),
                    ],
                    schema=schema,
                )
            )
    articles.to_csv(staging / ARTICLES_FILE, index=False)
    customers.to_csv(staging / CUSTOMERS_FILE, index=False)
    truth = staging / TRUTH_DIR
    pd.DataFrame({"article_id": articles["article_id"], "style": style}).to_parquet(
        truth / "articles.parquet"
    )
    pd.DataFrame(
        {"customer_id": customers["customer_id"], "repurchase": repurchase, "styles": list(tastes)}
    ).to_parquet(truth / "customers.parquet")
    np.save(truth / "popularity.npy", popularity)
    summary = {
        **asdict(config),
        "start": start.isoformat(),
        "end": (start + timedelta(days=config.days - 1)).isoformat(),
    }
    atomic_write_with(truth / "config.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    try:
        staging.rename(out)
    except OSError:  # another process finished the same dataset first
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(f"{out} was generated meanwhile by another process") from None
    return summary


def load_truth(folder: Path) -> Truth:
    """The ground truth written beside a generated dataset, in the CSVs' row order."""
    truth = Path(folder) / TRUTH_DIR
    articles = pd.read_parquet(truth / "articles.parquet")
    customers = pd.read_parquet(truth / "customers.parquet")
    config = json.loads((truth / "config.json").read_text())
    return Truth(
        article_style=articles["style"].to_numpy(),
        popularity=np.load(truth / "popularity.npy"),
        customer_styles=np.stack(customers["styles"].to_numpy()).astype(np.float32),
        customer_repurchase=customers["repurchase"].to_numpy(np.float32),
        start=date.fromisoformat(config["start"]),
        article_index=pd.Index(articles["article_id"]),
        customer_index=pd.Index(customers["customer_id"]),
    )


def main(argv: list[str] | None = None) -> int:
    from stl_pipeline.generate.cli import write

    defaults = HmConfig()
    parser = argparse.ArgumentParser(
        prog="stl-generate-hm",
        description="Write transactions_train.csv, articles.csv, customers.csv and truth/ "
        "in the formats of the H&M release.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to create")
    for name in ("customers", "articles", "purchases", "days", "styles", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    parser.add_argument(
        "--full-scale",
        action="store_true",
        help=f"the release's size: {FULL_SCALE['customers']:,} customers, {FULL_SCALE['articles']:,} "
        f"articles, {FULL_SCALE['purchases']:,} purchases over {FULL_SCALE['days']} days",
    )
    parser.add_argument("--scale", type=float, default=None, help="a fraction of the release's size")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    sizes = {name: getattr(args, name) for name in ("customers", "articles", "purchases", "days")}
    if args.full_scale or args.scale:
        scale = 1.0 if args.full_scale else args.scale
        sizes = {name: max(1, round(value * scale)) for name, value in FULL_SCALE.items() if name != "days"}
        sizes["days"] = FULL_SCALE["days"]
    config = HmConfig(**sizes, styles=args.styles, seed=args.seed)
    return write(parser, config, args.out, args.force, lambda: generate_hm(config, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
