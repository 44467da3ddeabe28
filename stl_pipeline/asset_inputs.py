"""Inputs that several asset modules declare alike, so that no asset module imports another."""

import dagster as dg

from stl_pipeline.registry import MODELS

# Every trained model's record, as the inputs of an asset that takes them as **models.
MODEL_INS = {spec.asset: dg.AssetIn(spec.asset) for spec in MODELS}
