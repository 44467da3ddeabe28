"""The blocking checks stages share: an output not empty, and not shrunk past
``QualityGate.max_shrink`` against the asset's previous materialization; a trained model's
weights all finite. And what makes a blocking failure last: Dagster stops the steps after a
failed blocking check in its own run only, so the IO managers refuse, in any later run, an
input whose latest materialization failed one, until it is materialized again or the failure
is acknowledged (``stl-acknowledge``).

A run on the wrong raw files, on a mirror that lost its images or on stale inputs can produce
a smaller, still well-formed output; its own checks would pass, and the models downstream
would train on what is left. Counts from the materialization's metadata tell.
"""

import getpass
import math
from collections.abc import Iterable, Sequence

import dagster as dg

from stl_pipeline.resources import QualityGate


def _counts(record: dg.EventLogRecord, names: tuple[str, ...]) -> dict[str, int]:
    metadata = record.asset_materialization.metadata if record.asset_materialization else {}
    return {name: int(metadata[name].value) for name in names if name in metadata}


def _latest(instance: dg.DagsterInstance, asset: str, partition: str | None) -> list[dg.EventLogRecord]:
    """The asset's (or one partition's) last two materializations, newest first."""
    partitions = None if partition is None else [partition]
    found = instance.fetch_materializations(dg.AssetRecordsFilter(dg.AssetKey(asset), partitions), limit=2)
    return list(found.records)


def not_shrunk(
    asset: str, names: tuple[str, ...], partitions: tuple[str, ...] | None = None
) -> dg.AssetChecksDefinition:
    """A blocking check that the metadata counts ``names`` of ``asset`` are not zero and kept
    at least ``1 - max_shrink`` of their previous values. An asset of ``partitions`` compares
    what its run wrote as a whole (the sum over the run's partitions, against their previous
    sum), and its total over every partition must not be zero. A run of some partitions only
    also allows three standard deviations of sampling noise: partitions split the ids by hash,
    so a new dataset of the same size moves a few items between them."""

    @dg.asset_check(
        asset=asset,
        name=f"{asset}_not_shrunk",
        blocking=True,
        description=f"{', '.join(names)}: not zero, and not shrunk past quality_gate.max_shrink against "
        "the previous materialization.",
    )
    def check(context: dg.AssetCheckExecutionContext, quality_gate: QualityGate) -> dg.AssetCheckResult:
        floor = 1.0 - quality_gate.max_shrink
        mine = list(context.partition_keys) if partitions else [None]
        everywhere = list(partitions) if partitions else [None]
        pairs = {p: _latest(context.instance, asset, p) for p in everywhere}
        latest = {p: _counts(r[0], names) if r else {} for p, r in pairs.items()}
        now = {name: sum(latest[p].get(name, 0) for p in latest) for name in names}
        problems = [f"{name} is {now[name]}" for name in names if not now[name]]
        # Like with like: the run's partitions that had a previous materialization.
        compared = [p for p in mine if len(pairs[p]) > 1]
        before = {n: sum(_counts(pairs[p][1], names).get(n, 0) for p in compared) for n in names}
        after = {n: sum(latest[p].get(n, 0) for p in compared) for n in names}
        partial = partitions is not None and set(mine) != set(partitions)
        where = f" in partition{'s' if len(compared) > 1 else ''} {', '.join(compared)}" if partial else ""
        for name in names:
            noise = 3 * math.sqrt(2 * before[name]) if partial else 0.0
            if before[name] and after[name] < floor * before[name] - noise:
                problems.append(f"{name} fell from {before[name]} to {after[name]}{where}")
        advice = (
            f"; the limit is quality_gate.max_shrink = {quality_gate.max_shrink:.0%}. Check the raw "
            "files and the image source, or raise max_shrink if the catalogue really shrank."
        )
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={
                **now,
                **{f"previous_{k}": v for k, v in before.items() if compared},
                "max_shrink": quality_gate.max_shrink,
            },
            description="; ".join(problems) + advice if problems else None,
        )

    return check


class FailedCheckError(RuntimeError):
    """An input whose latest materialization failed a blocking check in an earlier run."""


def blocking_checks(definitions: Iterable[dg.AssetsDefinition]) -> dict[str, list[str]]:
    """asset -> the names of its blocking checks, from asset and check definitions."""
    found: dict[str, list[str]] = {}
    for definition in definitions:
        for spec in definition.check_specs:
            if spec.blocking:
                found.setdefault(spec.asset_key.to_user_string(), []).append(spec.name)
    return found


def _failed_evaluation(instance: dg.DagsterInstance, key: dg.AssetCheckKey) -> tuple | None:
    """(record, evaluation) of the check's latest evaluation if it failed with ERROR severity."""
    record = instance.get_latest_asset_check_evaluation_record(key)
    event = record.event if record is not None else None
    evaluation = event.dagster_event.event_specific_data if event and event.dagster_event else None
    if not isinstance(evaluation, dg.AssetCheckEvaluation) or evaluation.passed:
        return None
    return (record, evaluation) if evaluation.severity == dg.AssetCheckSeverity.ERROR else None


def _materialized_since(instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str, since: float) -> bool:
    """Whether every partition the failed run wrote (or the asset) was materialized again since."""
    written = [
        entry.dagster_event.partition
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if entry.dagster_event is not None and entry.dagster_event.asset_key == key
    ] or [None]
    for partition in written:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(key, None if partition is None else [partition]), limit=1
        ).records
        if not found or found[0].timestamp <= since:
            return False
    return True


def unresolved_failure(
    instance: dg.DagsterInstance, asset: str, checks: Sequence[str], run_id: str | None
) -> str | None:
    """Why run ``run_id`` (None: a read outside any run) must not read ``asset``: the latest
    evaluation of one of its blocking ``checks`` failed in an earlier run, and the asset was
    neither materialized again since nor the failure acknowledged. In the failing run itself
    Dagster already skips what is downstream, and the asset's other checks still read it."""
    key = dg.AssetKey(asset)
    for name in checks:
        failed = _failed_evaluation(instance, dg.AssetCheckKey(key, name))
        if failed is None:
            continue
        record, evaluation = failed
        if record.run_id == run_id or _materialized_since(
            instance, key, record.run_id, record.event.timestamp
        ):
            continue
        why = (evaluation.description or "see the check in the Dagster UI").rstrip(".")
        return (
            f"{asset} failed its blocking check {name} in run {record.run_id}: {why}. Nothing reads it "
            "until it is materialized again with the cause fixed, or, if the output is right after all, "
            f"the failure is acknowledged: stl-acknowledge {name} --reason '<why>'"
        )
    return None


def acknowledge(instance: dg.DagsterInstance, asset: str, check: str, reason: str) -> str:
    """Record a passing evaluation of ``check`` that names who accepted its failure and why;
    returns the failure it acknowledges. Raises ValueError when the check has not failed."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    failed = _failed_evaluation(instance, key)
    if failed is None:
        raise ValueError(f"the latest evaluation of {check} did not fail: there is nothing to acknowledge")
    record, evaluation = failed
    failure = evaluation.description or "no description"
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=key.asset_key,
            check_name=check,
            passed=True,
            description=f"Acknowledged by {getpass.getuser()}: {reason}",
            metadata={"acknowledged_failure": failure, "failed_run": record.run_id, "reason": reason},
        )
    )
    return failure


def weights_finite(asset: str, weights: str) -> dg.AssetChecksDefinition:
    """A blocking check that every tensor of a model record's ``weights`` entry is finite."""

    @dg.asset_check(
        asset=asset, name=f"{asset}_weights_finite", blocking=True, description="Every weight is finite."
    )
    def finite(record: dict) -> dg.AssetCheckResult:
        import torch

        bad = [name for name, tensor in record[weights].items() if not torch.isfinite(tensor.float()).all()]
        return dg.AssetCheckResult(
            passed=not bad, metadata={"non_finite_tensors": len(bad), "sample": ", ".join(bad[:5]) or "none"}
        )

    return finite
