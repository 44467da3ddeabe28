"""Whether a challenger replaces the champion.

Both are scored on the same held-out queries (or customers), and the decision reads the
paired difference: a challenger is promoted unless it is worse beyond noise, that is unless
the whole 95% bootstrap interval of (challenger - champion) lies below ``-margin``. A
challenger that fails the quality gate is never promoted, and the first one that passes it
on a fresh store is.
"""

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Score:
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    metric: str
    queries: int  # the queries (customers) both were scored on
    challenger: Score
    champion: Score | None  # None: no champion yet, or none that can be scored here
    difference: Score | None  # challenger - champion, paired

    def as_dict(self) -> dict:
        return asdict(self)


def interval(values: np.ndarray) -> Score:
    """The mean and its 95% bootstrap interval (metrics.bootstrap)."""
    from stl_pipeline.metrics import bootstrap  # here: metrics imports torch, the code location must not

    if not len(values):
        return Score(float("nan"), float("nan"), float("nan"))
    return Score(float(values.mean()), *bootstrap(values))


def decide(
    metric: str,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    margin: float,
    gate_passed: bool,
    gate_reason: str,
    no_champion_reason: str = "no champion yet",
) -> Decision:
    """``challenger`` and ``champion`` hold each query's value of ``metric``, paired by row."""
    if champion is not None and champion.shape != challenger.shape:
        raise ValueError(f"paired scores differ in length: {challenger.shape} and {champion.shape}")
    mine = interval(challenger)
    theirs = interval(champion) if champion is not None else None
    difference = interval(challenger - champion) if champion is not None else None
    if not len(challenger):
        promoted, reason = False, "no held-out query to score the challenger on"
    elif not gate_passed:
        promoted, reason = False, f"the challenger fails the quality gate: {gate_reason}"
    elif difference is None:
        promoted, reason = True, f"{no_champion_reason}; the challenger passes the quality gate"
    elif difference.high < -margin:
        promoted, reason = (
            False,
            (
                f"the challenger is worse: {metric} {difference.mean:+.4f} against the champion "
                f"(95% CI {difference.low:+.4f} to {difference.high:+.4f}, below -{margin})"
            ),
        )
    else:
        promoted, reason = (
            True,
            (
                f"the challenger is not worse beyond noise: {metric} {difference.mean:+.4f} against the "
                f"champion (95% CI {difference.low:+.4f} to {difference.high:+.4f}, margin {margin})"
            ),
        )
    return Decision(promoted, reason, metric, len(challenger), mine, theirs, difference)
