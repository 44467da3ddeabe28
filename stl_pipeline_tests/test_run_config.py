"""Settings are declared once: run config and resources are made from the library's dataclasses."""

import dataclasses

import dagster as dg
import pydantic
import pytest

from stl_pipeline.graph.assets import GraphBuildConfig
from stl_pipeline.graph.config import GraphConfig, KnnConfig
from stl_pipeline.images.policy import DownloadPolicy
from stl_pipeline.models.config import TrainConfig
from stl_pipeline.registry import MODELS
from stl_pipeline.resources import ImageSource
from stl_pipeline.run_config import config_class, to_dataclass
from stl_pipeline.training.assets import CONFIGS


def test_the_graph_config_flattens_knn_and_round_trips() -> None:
    fields = GraphBuildConfig.model_fields
    assert fields["knn_method"].default == "auto" and fields["knn_exact_limit"].default == 10_000
    assert fields["product_k"].description == "Visual neighbours per product."
    config = GraphBuildConfig(edges=["contains"], knn_method="exact", knn_cells=7)
    built = to_dataclass(GraphConfig, config.model_dump())
    assert built == GraphConfig(edges=("contains",), knn=KnnConfig(method="exact", cells=7))
    assert to_dataclass(GraphConfig, GraphBuildConfig().model_dump()) == GraphConfig()


def test_each_model_s_knobs_are_train_config_with_its_registry_defaults() -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"kind"}
    for spec in MODELS:
        config = CONFIGS[spec.method]()
        assert set(config.model_dump()) == names
        built = to_dataclass(TrainConfig, config.model_dump(), kind=spec.kind)
        assert built == TrainConfig(kind=spec.kind, **spec.defaults)
    assert CONFIGS["gat"]().lr == 1.5e-3 and CONFIGS["sage"]().lr == TrainConfig().lr


def test_the_image_source_is_the_download_policy_and_a_success_rate() -> None:
    names = {f.name for f in dataclasses.fields(DownloadPolicy)}
    assert set(ImageSource.model_fields) == names | {"min_success_rate"}
    with pytest.raises(pydantic.ValidationError, match="url_template"):
        ImageSource(allowed_hosts=[])  # no default: it must be given
    source = ImageSource(url_template="http://Example.org/{signature}.jpg", allowed_hosts=["Example.ORG"])
    policy = to_dataclass(DownloadPolicy, source.model_dump())
    assert policy.allowed_hosts == frozenset({"example.org"}) and policy.max_redirects == 3


def test_an_override_of_no_field_is_refused() -> None:
    with pytest.raises(TypeError, match=r"\['learning_rate'\] are not fields of TrainConfig"):
        config_class("Bad", TrainConfig, dg.Config, __name__, "", learning_rate=1.0)
