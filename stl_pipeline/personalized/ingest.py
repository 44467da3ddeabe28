"""Read and validate the H&M-format CSVs into compact tables, and split time into windows.

``transactions_train.csv`` is read in blocks with pyarrow's streaming CSV reader and
validated with vectorized kernels, so the release's 31.8M lines never exist as Python
objects. A purchase becomes a row of codes: its customer and article are categoricals
whose categories are the customer and article tables' ids, so the ids are stored once.
Rejected lines go to the quarantine table with their line number and reason.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stl_pipeline.ingest.parse import QUARANTINE_COLUMNS, IngestError
from stl_pipeline.personalized.split import Windows, windows_for

TRANSACTION_COLUMNS = ("t_dat", "customer_id", "article_id", "price", "sales_channel_id")
# The article attributes the graph's features use; all are in the release's articles.csv.
ARTICLE_FEATURES = (
    "product_type_name",
    "product_group_name",
    "graphical_appearance_name",
    "colour_group_name",
    "perceived_colour_value_name",
    "perceived_colour_master_name",
    "index_group_name",
    "garment_group_name",
    "section_name",
)
CUSTOMER_ID, ARTICLE_ID, DAY = r"^[0-9a-f]{64}$", r"^[0-9]{10}$", r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
PRICE = r"^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$"
# What a spreadsheet does to these columns: drops the leading zero, rewrites the date.
ARTICLE_SHAPE = "10 digits with the leading zero (as 0108775015; a spreadsheet may have dropped it)"
DAY_SHAPE = "a date in the format YYYY-MM-DD (as 2020-09-22), without a time"
MAX_PRICE = 100.0  # the release's prices are scaled to below 1; past this a value is corrupt
BLOCK_BYTES = 64 << 20
UNKNOWN = "unknown"


@dataclass
class HmTables:
    transactions: pd.DataFrame
    articles: pd.DataFrame
    customers: pd.DataFrame
    quarantine: pd.DataFrame
    records: dict[str, int]  # file -> data lines read
    windows: Windows | None = None  # set by split_windows

    def quarantined_shares(self) -> dict[str, float]:
        rejected = self.quarantine["file"].value_counts()
        return {file: int(rejected.get(file, 0)) / max(1, n) for file, n in self.records.items()}


@dataclass
class _Rejected:
    parts: list[pd.DataFrame] = field(default_factory=list)

    def add(self, path: Path, lines: np.ndarray, keys: pd.Series, reasons: pd.Series, raw: pd.Series) -> None:
        if len(lines):
            self.parts.append(
                pd.DataFrame(
                    {
                        "file": str(path),
                        "line": lines,
                        "key": keys.to_numpy(),
                        "reason": reasons.to_numpy(),
                        "raw": raw.str.slice(0, 200).to_numpy(),
                    }
                )
            )

    def frame(self) -> pd.DataFrame:
        frame = (
            pd.concat(self.parts, ignore_index=True)
            if self.parts
            else pd.DataFrame(columns=QUARANTINE_COLUMNS)
        )
        return frame[list(QUARANTINE_COLUMNS)].astype(
            {"line": "Int64", "file": "string", "key": "string", "reason": "string", "raw": "string"}
        )


def _header(path: Path, required: tuple[str, ...]) -> list[str]:
    if not path.is_file():
        raise IngestError(f"{path} does not exist")
    with open(path, "rb") as handle:
        # A spreadsheet's UTF-8 export starts with a byte-order mark; pyarrow skips it too.
        first = handle.readline(1 << 16).decode("utf-8-sig", errors="replace").strip()
    names = [name.strip().strip('"') for name in first.split(",")]
    missing = [c for c in required if c not in names]
    if missing:
        raise IngestError(
            f"{path}:1: missing column(s) {', '.join(missing)}; the header is {first[:200]!r}. "
            "Use the H&M release's CSV (docs/design.md §8 lists the columns)."
        )
    return names


def _read_strings(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A small CSV with every column as text ("" for empty), and its line numbers."""
    names = _header(path, required)
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as error:
        raise IngestError(
            f"{path}: not a readable CSV ({str(error)[:200]}); fix or replace the file"
        ) from None
    frame = table.to_pandas()
    frame.insert(0, "line", np.arange(2, len(frame) + 2))
    return frame


def _raw(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    return frame[columns].astype(str).agg(",".join, axis=1)


def _unique_valid(
    frame: pd.DataFrame, column: str, pattern: str, path: Path, rejected: _Rejected, shape: str
) -> pd.DataFrame:
    """Rows whose id matches ``pattern`` and appears once; the rest quarantined. Every line of
    a repeated id is: which one holds the right attributes cannot be told."""
    ids = frame[column].str.strip()
    valid = ids.str.fullmatch(pattern.strip("^$"))
    bad = frame[~valid]
    rejected.add(
        path,
        bad["line"].to_numpy(),
        bad[column],
        f"invalid {column} " + bad[column].str.slice(0, 70).map(repr) + f": not {shape}",
        _raw(bad, list(frame.columns[1:])),
    )
    frame = frame[valid].assign(**{column: ids[valid]})
    repeated = frame.duplicated(column, keep=False)
    dup = frame[repeated]
    lines = dup.groupby(column)["line"].agg(lambda found: ", ".join(map(str, found[:5])))
    rejected.add(
        path,
        dup["line"].to_numpy(),
        dup[column],
        f"{column} "
        + dup[column].map(repr)
        + " is on lines "
        + dup[column].map(lines)
        + f" of {path.name}; keep one line per {column}",
        _raw(dup, list(frame.columns[1:])),
    )
    return frame[~repeated]


def read_articles(path: Path, rejected: _Rejected) -> tuple[pd.DataFrame, int]:
    """The valid articles with their attributes as categories, and the lines read."""
    frame = _read_strings(path, ("article_id", "product_type_name"))
    lines = len(frame)
    frame = _unique_valid(frame, "article_id", ARTICLE_ID, path, rejected, ARTICLE_SHAPE)
    for column in ARTICLE_FEATURES:
        values = frame[column].str.strip() if column in frame else pd.Series(UNKNOWN, index=frame.index)
        frame[column] = values.mask(values == "", UNKNOWN).astype("category")
    return frame.drop(columns="line").reset_index(drop=True), lines


def read_customers(path: Path, rejected: _Rejected) -> tuple[pd.DataFrame, int]:
    """The valid customers, their flags and age, and the lines read."""
    frame = _read_strings(path, ("customer_id",))
    lines = len(frame)
    frame = _unique_valid(frame, "customer_id", CUSTOMER_ID, path, rejected, "64 lowercase hex characters")
    age_text = frame["age"].str.strip() if "age" in frame else pd.Series("", index=frame.index)
    age = pd.to_numeric(age_text, errors="coerce")
    bad_age = (age_text != "") & ~age.between(10, 120)
    bad = frame[bad_age]
    rejected.add(
        path,
        bad["line"].to_numpy(),
        bad["customer_id"],
        "age " + bad["age"].str.slice(0, 20).map(repr) + " is not a number of years from 10 to 120",
        _raw(bad, list(frame.columns[1:])),
    )
    frame = frame[~bad_age]
    out = pd.DataFrame({"customer_id": frame["customer_id"].to_numpy()})
    for flag in ("FN", "Active"):
        values = frame[flag] if flag in frame else pd.Series("", index=frame.index)
        out[flag] = (pd.to_numeric(values, errors="coerce").fillna(0) > 0).to_numpy()
    for column in ("club_member_status", "fashion_news_frequency"):
        values = (
            frame[column].str.strip().str.upper() if column in frame else pd.Series("", index=frame.index)
        )
        out[column] = values.mask(values == "", UNKNOWN).astype("category").to_numpy()
    out["age"] = age[~bad_age].astype("Float32").to_numpy()
    return out, lines


def read_transactions(
    path: Path, articles: pd.Series, customers: pd.Series, rejected: _Rejected, block_bytes: int = BLOCK_BYTES
) -> tuple[pd.DataFrame, int]:
    """The valid purchases as codes into ``customers`` and ``articles``, and the lines read."""
    _header(path, TRANSACTION_COLUMNS)
    customer_set, article_set = (
        pa.array(customers.to_numpy(), pa.string()),
        pa.array(articles.to_numpy(), pa.string()),
    )
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=block_bytes),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(TRANSACTION_COLUMNS, pa.string()),
            include_columns=list(TRANSACTION_COLUMNS),
            strings_can_be_null=False,
        ),
    )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("day", "customer", "article", "price", "channel")}
    seen = 0
    try:
        for batch in reader:
            columns = {name: batch.column(name) for name in TRANSACTION_COLUMNS}
            day = pc.strptime(columns["t_dat"], format="%Y-%m-%d", unit="s", error_is_null=True)
            day_ok = pc.and_kleene(pc.match_substring_regex(columns["t_dat"], DAY), pc.is_valid(day))
            customer = pc.index_in(columns["customer_id"], value_set=customer_set)
            article = pc.index_in(columns["article_id"], value_set=article_set)
            price_ok = pc.match_substring_regex(columns["price"], PRICE)
            price = pc.cast(pc.if_else(price_ok, columns["price"], "0"), pa.float64())
            price_ok = pc.and_(price_ok, pc.and_(pc.greater(price, 0.0), pc.less(price, MAX_PRICE)))
            channel_ok = pc.is_in(columns["sales_channel_id"], value_set=pa.array(["1", "2"]))
            ok = pc.and_(
                pc.and_(pc.and_(day_ok, pc.is_valid(customer)), pc.and_(pc.is_valid(article), price_ok)),
                channel_ok,
            )
            ok_np = ok.to_numpy(zero_copy_only=False)
            if not ok_np.all():
                _reject_purchases(
                    path, batch, ok_np, day_ok, customer, article, price_ok, channel_ok, seen, rejected
                )
            keep = pa.array(ok_np)
            parts["day"].append(pc.filter(day, keep).cast(pa.int64()).to_numpy() // 86_400)
            parts["customer"].append(pc.filter(customer, keep).to_numpy().astype(np.int32))
            parts["article"].append(pc.filter(article, keep).to_numpy().astype(np.int32))
            parts["price"].append(pc.filter(price, keep).to_numpy().astype(np.float32))
            parts["channel"].append(pc.filter(columns["sales_channel_id"], keep).cast(pa.int8()).to_numpy())
            seen += batch.num_rows
    except pa.ArrowInvalid as error:
        raise IngestError(
            f"{path}: unreadable after data line {seen} ({str(error)[:200]}); fix or replace the file"
        ) from None
    joined = {k: np.concatenate(v) if v else np.empty(0, np.int64) for k, v in parts.items()}
    frame = pd.DataFrame(
        {
            "t_dat": pd.to_datetime(joined["day"], unit="D"),
            "customer_id": pd.Categorical.from_codes(joined["customer"], categories=pd.Index(customers)),
            "article_id": pd.Categorical.from_codes(joined["article"], categories=pd.Index(articles)),
            "price": joined["price"].astype(np.float32),
            "sales_channel_id": joined["channel"].astype(np.int8),
        }
    )
    return frame, seen


def _reject_purchases(
    path: Path,
    batch: pa.RecordBatch,
    ok: np.ndarray,
    day_ok: pa.Array,
    customer: pa.Array,
    article: pa.Array,
    price_ok: pa.Array,
    channel_ok: pa.Array,
    seen: int,
    rejected: _Rejected,
) -> None:
    """Quarantine the batch's invalid lines, each with its first failed rule."""
    bad = np.flatnonzero(~ok)
    rows = batch.take(pa.array(bad)).to_pandas()
    reasons = np.select(
        [
            ~day_ok.take(pa.array(bad)).to_numpy(zero_copy_only=False),
            ~customer.is_valid().take(pa.array(bad)).to_numpy(zero_copy_only=False),
            ~article.is_valid().take(pa.array(bad)).to_numpy(zero_copy_only=False),
            ~price_ok.take(pa.array(bad)).to_numpy(zero_copy_only=False),
            ~channel_ok.take(pa.array(bad)).to_numpy(zero_copy_only=False),
        ],
        [
            "t_dat " + rows["t_dat"].str.slice(0, 20).map(repr) + f" is not {DAY_SHAPE}",
            "customer_id "
            + rows["customer_id"].str.slice(0, 70).map(repr)
            + " is not in customers.csv, or its line there is quarantined",
            "article_id "
            + rows["article_id"].str.slice(0, 20).map(repr)
            + np.where(
                rows["article_id"].str.fullmatch(ARTICLE_ID.strip("^$")),
                " is not in articles.csv, or its line there is quarantined",
                f" is not {ARTICLE_SHAPE}",
            ),
            "price " + rows["price"].str.slice(0, 20).map(repr) + f" is not a number in (0, {MAX_PRICE:g})",
            "sales_channel_id " + rows["sales_channel_id"].str.slice(0, 10).map(repr) + " is not 1 or 2",
        ],
    )
    raw = _raw(rows, list(TRANSACTION_COLUMNS))
    rejected.add(path, seen + bad + 2, rows["customer_id"].str.slice(0, 64), pd.Series(reasons), raw)


def read_hm(transactions_path: Path, articles_path: Path, customers_path: Path) -> HmTables:
    """The three files validated, every rejected line in the quarantine; no windows yet, so
    that the quarantine can be written before a file with no usable purchase is refused."""
    rejected = _Rejected()
    articles, article_lines = read_articles(articles_path, rejected)
    customers, customer_lines = read_customers(customers_path, rejected)
    transactions, lines = read_transactions(
        transactions_path, articles["article_id"], customers["customer_id"], rejected
    )
    return HmTables(
        transactions=transactions,
        articles=articles,
        customers=customers,
        quarantine=rejected.frame(),
        records={
            str(articles_path): article_lines,
            str(customers_path): customer_lines,
            str(transactions_path): lines,
        },
    )


def split_windows(tables: HmTables, transactions_path: Path, window_days: int = 7) -> HmTables:
    """Label each purchase train, val or test; refuse purchases too few or too short to split."""
    transactions = tables.transactions
    if transactions.empty:
        raise IngestError(
            f"{transactions_path}: no valid purchase in {tables.records[str(transactions_path)]} lines. "
            f"First rejected: {first_rejected(tables.quarantine, transactions_path) or 'none'}"
        )
    last = transactions["t_dat"].max().date()
    windows = windows_for(last, window_days)
    if transactions["t_dat"].min().date() >= windows.val_start:
        raise IngestError(
            f"{transactions_path}: purchases span {transactions['t_dat'].min().date()} to {last}, less than "
            f"{2 * window_days} days before the validation window; training needs an earlier history"
        )
    transactions["window"] = windows.label(transactions["t_dat"])
    tables.windows = windows
    return tables


def ingest_hm(
    transactions_path: Path, articles_path: Path, customers_path: Path, window_days: int = 7
) -> HmTables:
    tables = read_hm(transactions_path, articles_path, customers_path)
    return split_windows(tables, transactions_path, window_days)


def first_rejected(quarantine: pd.DataFrame, file: Path | str, count: int = 1) -> str:
    """The first ``count`` rejected lines of ``file`` as ``file:line: reason``, in file order."""
    rows = quarantine[quarantine["file"] == str(file)].sort_values("line").head(count)
    return "; ".join(f"{file}:{row.line}: {row.reason}" for row in rows.itertuples())


def check_quarantine(tables: HmTables, max_share: float, quarantine_path: Path) -> None:
    """Fail, naming the first reasons, when more than ``max_share`` of a file was rejected."""
    for file, share in tables.quarantined_shares().items():
        if share <= max_share:
            continue
        rejected = int((tables.quarantine["file"] == file).sum())
        raise IngestError(
            f"{rejected} of {tables.records[file]} lines of {file} ({share:.2%}) failed validation, over "
            f"the limit of {max_share:.2%}. First: {first_rejected(tables.quarantine, file, 3)}. "
            "Every rejected line is listed in "
            f"{quarantine_path}. Fix the input file, or raise max_quarantine_share in the run config."
        )
