"""The blocking check every stage's output shares: not empty, and not shrunk past
``QualityGate.max_shrink`` against the asset's previous materialization.

A run on the wrong raw files, on a mirror that lost its images or on stale inputs can produce
a smaller, still well-formed output; its own checks would pass, and the models downstream
would train on what is left. Counts from the materialization's metadata tell.
"""

import dagster as dg

from stl_pipeline.resources import QualityGate


def _counts(record: dg.EventLogRecord, names: tuple[str, ...]) -> dict[str, int]:
    metadata = record.asset_materialization.metadata if record.asset_materialization else {}
    return {name: int(metadata[name].value) for name in names if name in metadata}


def not_shrunk(asset: str, names: tuple[str, ...]) -> dg.AssetChecksDefinition:
    """A blocking check that the metadata counts ``names`` of ``asset`` are not zero and kept
    at least ``1 - max_shrink`` of their previous values."""

    @dg.asset_check(
        asset=asset,
        name=f"{asset}_not_shrunk",
        blocking=True,
        description=f"{', '.join(names)}: not zero, and not shrunk past quality_gate.max_shrink against "
        "the previous materialization.",
    )
    def check(context: dg.AssetCheckExecutionContext, quality_gate: QualityGate) -> dg.AssetCheckResult:
        records = context.instance.fetch_materializations(dg.AssetKey(asset), limit=2).records
        now = _counts(records[0], names) if records else {}
        before = _counts(records[1], names) if len(records) > 1 else {}
        floor = 1.0 - quality_gate.max_shrink
        problems = [f"{name} is {now.get(name, 0)}" for name in names if not now.get(name)]
        problems += [
            f"{name} fell from {before[name]} to {now[name]}"
            for name in names
            if now.get(name) and before.get(name) and now[name] < floor * before[name]
        ]
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
