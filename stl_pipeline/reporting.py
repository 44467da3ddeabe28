"""Small formatting helpers for metadata the Dagster UI shows."""

import pandas as pd


def markdown(frame: pd.DataFrame, max_rows: int = 20, max_chars: int = 40) -> str:
    """A markdown table of at most ``max_rows`` rows, long cells shortened."""
    shown = frame.head(max_rows).astype("string").fillna("")
    shown = shown.apply(lambda col: col.str.slice(0, max_chars))
    text = shown.to_markdown(index=False)
    if len(frame) > max_rows:
        text += f"\n\n({len(frame) - max_rows:,} more rows)"
    return text


def counts(series: pd.Series, name: str) -> str:
    table = series.value_counts(dropna=False).rename_axis(name).reset_index(name="count")
    return markdown(table, max_rows=50)
