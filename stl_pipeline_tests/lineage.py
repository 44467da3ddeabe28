"""The whole lineage materialized on a generated dataset of its own: shared by the quality
and cold-start tests through the session fixture ``trained`` (conftest.py)."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from stl_pipeline.definitions import MODULES, build_definitions
from stl_pipeline.features.assets import ALL_PARTITIONS
from stl_pipeline.generate import GeneratorConfig, generate_dataset
from stl_pipeline.settings import Settings, load_settings

# A seed the demo does not use, and enough test scenes to tell methods apart. Dense: every
# garment a scene shows is annotated, the shape the models' recipe was chosen on.
FRESH = GeneratorConfig(products=600, scenes=700, shape="dense", seed=11)


def generated_environ(tmp_path: Path, dataset: Path) -> dict[str, str]:
    """A generated dataset from files, with the packaged backbone on small inputs."""
    return {
        "STL_DATA_DIR": str(tmp_path / "data"),
        "STL_PAIRS_PATH": str(dataset / "fashion.json"),
        "STL_CATEGORIES_PATH": str(dataset / "fashion-cat.json"),
        "STL_IMAGE_URL_TEMPLATE": (dataset / "images").as_uri() + "/{signature}.jpg",
        "STL_BACKBONE": "tf_efficientnet_lite0",
        "STL_BACKBONE_WEIGHTS": "packaged",
        "STL_BACKBONE_IMAGE_SIZE": "64",
    }


def stl_definitions() -> list:
    """Every Shop-the-Look asset and check: all but the ``personalized`` group, which has
    its own tests."""
    assets = [
        a for a in dg.load_assets_from_modules(MODULES) if "personalized" not in a.group_names_by_key.values()
    ]
    keys = {key for a in assets for key in a.keys}
    checks = [
        c
        for c in dg.load_asset_checks_from_modules(MODULES)
        if all(check.asset_key in keys for check in c.check_keys)
    ]
    return [*assets, *checks]


@dataclass
class Trained:
    config: GeneratorConfig
    environ: dict[str, str]
    settings: Settings
    metadata: dict[str, dict]  # asset -> its materialization's metadata values


def train_everything(root: Path, config: GeneratorConfig = FRESH) -> Trained:
    raw = root / "raw"
    generate_dataset(config, raw)
    # The demo's backbone at the demo's size: at 64 px the style cues are too faint.
    environ = generated_environ(root, raw) | {"STL_BACKBONE_IMAGE_SIZE": "128"}
    settings = load_settings(environ)
    result = dg.materialize(
        stl_definitions(),
        resources=build_definitions(settings).resources,
        tags=ALL_PARTITIONS,
        raise_on_error=False,
    )
    assert result.success
    metadata = {
        event.asset_key.to_user_string(): {
            k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }
    return Trained(config, environ, settings, metadata)
