"""The temporal split of purchases: test is the last ``days`` days, validation the ``days``
before, train everything earlier; what ingestion labels and what later stages check."""

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

WINDOWS = ("train", "val", "test")


@dataclass(frozen=True)
class Windows:
    """The temporal split: test is the last ``days`` days, validation the ``days`` before."""

    val_start: date
    test_start: date
    end: date  # the last day with purchases

    def label(self, days: pd.Series) -> pd.Categorical:
        labels = np.where(
            days >= pd.Timestamp(self.test_start),
            "test",
            np.where(days >= pd.Timestamp(self.val_start), "val", "train"),
        )
        return pd.Categorical(labels, categories=WINDOWS)

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k).isoformat() for k in ("val_start", "test_start", "end")}


def windows_for(last: date, days: int = 7) -> Windows:
    return Windows(
        val_start=last - timedelta(days=2 * days - 1), test_start=last - timedelta(days=days - 1), end=last
    )


def check_windows(transactions: pd.DataFrame, days: int) -> Windows:
    """The windows of ``days`` days ending on the last purchase, after checking that the table's
    labels agree: a table split with other settings is refused, not silently re-split."""
    from stl_pipeline.lineage import MismatchedInputError

    windows = windows_for(transactions["t_dat"].max().date(), days)
    relabelled = windows.label(transactions["t_dat"])
    differ = int((np.asarray(relabelled) != transactions["window"].to_numpy()).sum())
    if differ:
        raise MismatchedInputError(
            f"{differ} purchases of hm_transactions are in other windows than {days}-day windows ending "
            f"{windows.end} give; set the same window_days for hm_tables and hm_graph, and rematerialize"
        )
    return windows
