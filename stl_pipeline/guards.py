"""The blocking checks stages share: an output not empty, and not shrunk past
``QualityGate.max_shrink`` against the asset's previous materialization; a trained model's
weights all finite.

A run on the wrong raw files, on a mirror that lost its images or on stale inputs can produce
a smaller, still well-formed output; its own checks would pass, and the models downstream
would train on what is left. Counts from the materialization's metadata tell.
"""

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
    each partition its run wrote with that partition's previous materialization, and its total
    over every partition materialized so far must not be zero (one partition may be empty)."""

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
        before: dict[str, int] = {}
        problems = [f"{name} is {now[name]}" for name in names if not now[name]]
        for partition in mine:
            records = pairs[partition]
            current = latest[partition]
            previous = _counts(records[1], names) if len(records) > 1 else {}
            where = "" if partition is None else f" in partition {partition}"
            problems += [
                f"{name} fell from {previous[name]} to {current.get(name, 0)}{where}"
                for name in names
                if previous.get(name) and current.get(name, 0) < floor * previous[name]
            ]
            for name, value in previous.items():
                before[name] = before.get(name, 0) + value
        advice = (
            f"; the limit is quality_gate.max_shrink = {quality_gate.max_shrink:.0%}. Check the raw "
            "files and the image source, or raise max_shrink if the catalogue really shrank."
        )
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={
                **now,
                **{f"previous_{k}": v for k, v in before.items()},
                "max_shrink": quality_gate.max_shrink,
            },
            description="; ".join(problems) + advice if problems else None,
        )

    return check


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
