"""``stl-acknowledge``: accept a failed blocking check whose output is right after all (the
catalogue really shrank, a mirror really lost images for good), so that later runs read the
asset again. The acknowledgement is a passing evaluation in the check's history, naming who
accepted which failure and why; materializing the asset again is the other way out."""

import argparse
import os
import sys

import dagster as dg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stl-acknowledge",
        description="Accept the latest failure of a blocking asset check, so later runs read its asset.",
    )
    parser.add_argument(
        "check", help="the failed check, as the Dagster UI names it: product_embeddings_not_shrunk"
    )
    parser.add_argument(
        "--reason", required=True, help="why the output is right; kept in the check's history"
    )
    args = parser.parse_args(argv)

    from stl_pipeline.definitions import MODULES
    from stl_pipeline.guards import acknowledge, blocking_checks

    checks = blocking_checks(
        [*dg.load_assets_from_modules(MODULES), *dg.load_asset_checks_from_modules(MODULES)]
    )
    owner = {check: asset for asset, names in checks.items() for check in names}
    if args.check not in owner:
        parser.error(f"{args.check} is not a blocking check; these are: {', '.join(sorted(owner))}")
    if not args.reason.strip():
        parser.error("--reason must say why the output is right")
    if not os.environ.get("DAGSTER_HOME"):
        parser.error(
            "set DAGSTER_HOME to the instance the pipeline runs on (make ui: $STL_DATA_DIR/dagster_home)"
        )
    with dg.DagsterInstance.get() as instance:
        try:
            failure = acknowledge(instance, owner[args.check], args.check, args.reason.strip())
        except ValueError as error:
            print(f"stl-acknowledge: {error}", file=sys.stderr)
            return 2
    print(f"acknowledged {args.check} ({failure}); later runs read {owner[args.check]} again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
