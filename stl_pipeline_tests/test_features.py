import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stl_pipeline.device import effective_precision, native_cpu_bf16, resolve_device
from stl_pipeline.features.backbone import load_backbone
from stl_pipeline.features.embed import COMPACT_AFTER, Embedder, EmbeddingCache, batches, embed_items
from stl_pipeline.features.queries import ImageItem, token_keys
from stl_pipeline.features.regions import MIN_REGION_SIDE, context_views, ctl_box, stl_box
from stl_pipeline.features.spec import BackboneSpec
from stl_pipeline.features.transform import Letterbox, decode_batch

W, H = 200, 100


def test_stl_crop_rounds_outwards_and_stays_inside() -> None:
    assert stl_box((0.101, 0.199, 0.499, 0.801), W, H) == (20, 19, 100, 81)
    assert stl_box((0.0, 0.0, 1.0, 1.0), W, H) == (0, 0, W, H)
    assert stl_box((1.0, 1.0, 1.0, 1.0), W, H) == (W - 1, H - 1, W, H)  # degenerate: one pixel
    assert stl_box((0.5, 0.5, 0.5, 0.5), W, H) == (100, 50, 101, 51)


def test_ctl_region_is_the_largest_side_and_never_shows_the_product() -> None:
    # Product on the right third: the region left of it is the largest.
    assert ctl_box((0.7, 0.1, 0.9, 0.9), W, H) == (0, 0, 140, H)
    # Touching the left border: nothing left of it; the right region wins.
    assert ctl_box((0.0, 0.0, 0.3, 1.0), W, H) == (60, 0, W, H)
    # Touching left, right and top: only the region below remains.
    assert ctl_box((0.0, 0.0, 1.0, 0.6), W, H) == (0, 60, W, H)
    # Covering the scene, or leaving only slivers: no context to complete.
    assert ctl_box((0.0, 0.0, 1.0, 1.0), W, H) is None
    sliver = (MIN_REGION_SIDE - 1) / W
    assert ctl_box((sliver, 0.0, 1.0 - sliver, 1.0), W, H) is None
    for bbox in [(0.2, 0.3, 0.4, 0.5), (0.0, 0.1, 0.5, 0.9), (0.45, 0.0, 0.55, 1.0)]:
        region, product = ctl_box(bbox, W, H), stl_box(bbox, W, H)
        overlap_x = min(region[2], product[2]) - max(region[0], product[0])
        overlap_y = min(region[3], product[3]) - max(region[1], product[1])
        assert overlap_x <= 0 or overlap_y <= 0, (bbox, region, product)


def test_letterbox_keeps_the_whole_crop_and_pads_with_the_mean() -> None:
    transform = Letterbox(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")
    image = Image.new("RGB", (W, H), (255, 0, 0))
    out = transform(image)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert out[:, 16, :].tolist()[0] == [255] * 32  # the middle row is all image
    assert out[:, 0, 0].tolist() == [128, 128, 128]  # the top band is padding
    cropped = transform(image, (0, 0, 10, 100))  # a tall narrow strip
    assert cropped[0, :, 16].tolist() == [255] * 32 and cropped[:, 16, 0].tolist() == [128, 128, 128]


def test_context_views_never_show_the_product() -> None:
    bbox = (0.4, 0.3, 0.6, 0.7)
    product = stl_box(bbox, W, H)
    assert context_views(bbox, W, H, "largest") == [(ctl_box(bbox, W, H), None)]
    four = context_views(bbox, W, H, "four")
    assert len(four) == 4 and all(mask is None for _, mask in four)
    for region, _ in four:
        overlap_x = min(region[2], product[2]) - max(region[0], product[0])
        overlap_y = min(region[3], product[3]) - max(region[1], product[1])
        assert overlap_x <= 0 or overlap_y <= 0
    assert context_views(bbox, W, H, "masked") == [((0, 0, W, H), product)]
    assert context_views((0.0, 0.0, 1.0, 1.0), W, H, "masked") == []  # no context to complete
    with pytest.raises(ValueError, match="use one of largest, four, masked, items"):
        context_views(bbox, W, H, "everything")


def test_item_views_are_the_other_garments_with_the_product_masked() -> None:
    bbox = (0.3, 0.3, 0.7, 0.6)  # a coat
    shirt, shoes, button = (0.35, 0.25, 0.65, 0.5), (0.3, 0.85, 0.7, 0.95), (0.45, 0.4, 0.5, 0.45)
    product = stl_box(bbox, W, H)
    views = context_views(bbox, W, H, "items", (bbox, shirt, shoes, shoes, button))
    # The product's own box and a box it hides are no view; a box listed twice is one; the
    # product is masked where it overlaps a view.
    assert views == [(stl_box(shirt, W, H), product), (stl_box(shoes, W, H), None)]
    assert context_views(bbox, W, H, "items") == []  # alone in its scene: no context
    both = context_views(bbox, W, H, "masked+items", (bbox, shirt, shoes))
    assert both == context_views(bbox, W, H, "masked") + views  # the scene always first
    assert context_views(bbox, W, H, "masked+items") == context_views(bbox, W, H, "masked")
    assert context_views((0.0, 0.0, 1.0, 1.0), W, H, "masked+items", (shirt,)) == []  # never items alone


def test_a_masked_box_becomes_the_mean_colour() -> None:
    transform = Letterbox(W, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "nearest")
    image = Image.new("RGB", (W, W), (255, 0, 0))
    out = transform(image, None, (0, 0, W // 2, W))  # the left half
    assert out[:, 10, 10].tolist() == [128, 128, 128] and out[:, 10, W - 10].tolist() == [255, 0, 0]


def test_tokens_are_numbered_across_a_pairs_views() -> None:
    items = [ImageItem(f"{p}/{v}", "0" * 32, "x", "s") for p, v in [("a", 0), ("a", 1), ("b", 0)]]
    assert token_keys(items, 2) == ["a/0", "a/1", "a/2", "a/3", "b/0", "b/1"]


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone(BackboneSpec("resnet18", "none", image_size=32))


def write_images(folder: Path, count: int, start: int = 0) -> list[ImageItem]:
    folder.mkdir(exist_ok=True)
    items = []
    for i in range(start, start + count):
        path = folder / f"{i}.png"
        Image.new("RGB", (40, 30), (i * 20 % 256, 80, 160)).save(path)
        items.append(ImageItem(key=f"k{i}", signature=f"{i:032x}", path=str(path), sha256=f"{i:064x}"))
    return items


def test_cache_computes_only_new_images(tmp_path: Path, tiny_backbone) -> None:
    cache_root, cpu = tmp_path / "cache", torch.device("cpu")
    items = write_images(tmp_path / "img", 5)
    first, stats = embed_items(
        items, tiny_backbone, cpu, workers=0, cache=EmbeddingCache(cache_root, tiny_backbone)
    )
    assert (stats.computed, stats.cached) == (5, 0)
    assert np.allclose(np.linalg.norm(first.vectors, axis=1), 1, atol=1e-5)

    more = items + write_images(tmp_path / "img", 3, start=5)
    second, stats = embed_items(
        more, tiny_backbone, cpu, batch_size=2, workers=0, cache=EmbeddingCache(cache_root, tiny_backbone)
    )
    assert (stats.computed, stats.cached) == (3, 5)
    assert second.keys == [f"k{i}" for i in range(8)]
    assert np.array_equal(second.vectors[:5], first.vectors)

    # A crop of the same image is another cache entry; a new transform another namespace.
    cropped = [ImageItem("c0", items[0].signature, items[0].path, items[0].sha256, box=(0, 0, 20, 30))]
    _, stats = embed_items(
        cropped, tiny_backbone, cpu, workers=0, cache=EmbeddingCache(cache_root, tiny_backbone)
    )
    assert stats.computed == 1
    other = load_backbone(BackboneSpec("resnet18", "none", image_size=48))
    _, stats = embed_items(items, other, cpu, workers=0, cache=EmbeddingCache(cache_root, other))
    assert stats.computed == 5


def test_grid_tokens_are_unit_cells_of_the_feature_map(tmp_path: Path) -> None:
    """A 1x1 grid is the pooled vector itself, so it shares the pooled cache; a 2x2 grid's
    cells see their own quarter."""
    backbone, cpu = load_backbone(BackboneSpec("resnet18", "none", image_size=64)), torch.device("cpu")
    items = []
    for i in range(3):
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        image[:, :32] = (200, 40 * i, 0)  # left half and right half differ
        image[:, 32:] = (0, 90, 250)
        Image.fromarray(image).save(path := tmp_path / f"{i}.png")
        items.append(ImageItem(f"k{i}", f"{i:032x}", str(path), f"{i:064x}"))
    pooled, _ = embed_items(items, backbone, cpu, workers=0)
    batch = torch.from_numpy(
        decode_batch([(i.key, i.path, i.box, i.mask) for i in items], backbone.transform)
    )
    head, cell = Embedder(backbone, cpu, grid=1).with_tokens(batch)
    np.testing.assert_allclose(cell, head, atol=1e-5)
    np.testing.assert_allclose(head, pooled.vectors, atol=1e-5)
    pooled_cache = EmbeddingCache(tmp_path / "pooled", backbone)
    embed_items(items, backbone, cpu, workers=0, cache=pooled_cache)
    one, stats = embed_items(items, backbone, cpu, workers=0, grid=1, pooled_cache=pooled_cache)
    assert stats.computed == 0  # the pooled vectors are the 1x1 tokens
    np.testing.assert_allclose(one.vectors, pooled.vectors, atol=1e-5)
    pooled_cache = EmbeddingCache(tmp_path / "pooled-2", backbone)
    four, _ = embed_items(items, backbone, cpu, workers=0, grid=2, pooled_cache=pooled_cache)
    again, stats = embed_items(items, backbone, cpu, workers=0, cache=pooled_cache)
    assert stats.computed == 0  # the token pass left the pooled vectors for the global asset
    np.testing.assert_allclose(again.vectors, pooled.vectors, atol=1e-5)
    cells = four.vectors.reshape(3, 4, backbone.dim)
    np.testing.assert_allclose(np.linalg.norm(cells, axis=2), 1.0, atol=1e-5)
    assert not np.allclose(cells[:, 0], cells[:, 1], atol=1e-3)  # top left and top right


def test_worker_processes_give_the_same_vectors(tmp_path: Path, tiny_backbone) -> None:
    items = write_images(tmp_path / "img", 6)
    serial, _ = embed_items(items, tiny_backbone, torch.device("cpu"), batch_size=4, workers=0)
    parallel, _ = embed_items(items, tiny_backbone, torch.device("cpu"), batch_size=4, workers=2)
    assert np.allclose(serial.vectors, parallel.vectors, atol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_missing_image_is_named(tmp_path: Path, tiny_backbone, workers: int) -> None:
    items = [
        *write_images(tmp_path / "img", 5),
        ImageItem("lost", "f" * 32, str(tmp_path / "gone.jpg"), "f" * 64),
    ]
    with pytest.raises(RuntimeError, match=r"image of lost at .*gone\.jpg"):
        embed_items(items, tiny_backbone, torch.device("cpu"), batch_size=2, workers=workers)


def test_decoding_processes_keep_the_order_and_load_no_torch(tmp_path: Path) -> None:
    items = write_images(tmp_path / "img", 7)
    transform = Letterbox(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    serial = torch.cat(list(batches(items, transform, 3, workers=0)))
    parallel = torch.cat(list(batches(items, transform, 3, workers=2)))
    assert torch.equal(serial, parallel) and serial.shape == (7, 3, 16, 16)
    probe = [(f"k{i}", __file__, None, None) for i in range(1)]
    with pytest.raises(RuntimeError, match="cannot read the image of k0"):
        decode_batch(probe, transform)  # not an image
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {decode_batch.__module__}; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"  # what the decoding processes import


def test_views_of_one_image_decoded_once_are_each_as_if_alone(tmp_path: Path) -> None:
    """A scene's views follow each other and share one decode: a mask drawn for one view must
    not show in the next, nor a crop shift it."""
    (item,) = write_images(tmp_path / "img", 1)
    transform = Letterbox(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    views = [(None, (0, 0, 8, 8)), ((2, 2, 12, 12), None), (None, None), ((0, 0, 10, 20), (0, 0, 5, 5))]
    jobs = [(f"v{i}", item.path, box, mask) for i, (box, mask) in enumerate(views)]
    together = decode_batch(jobs, transform)
    alone = np.concatenate([decode_batch([job], transform) for job in jobs])
    assert np.array_equal(together, alone)
    assert not np.array_equal(together[0], together[2])  # the mask did change the first view


def test_the_cache_merges_its_parts_and_keeps_every_vector(tmp_path: Path, tiny_backbone) -> None:
    cache = EmbeddingCache(tmp_path / "cache", tiny_backbone)
    keys = [f"{i:064x}/full" for i in range(COMPACT_AFTER + 3)]
    vectors = np.random.default_rng(0).random((len(keys), 4), dtype=np.float32)
    for key, vector in zip(keys, vectors, strict=True):
        cache.add([key], vector[None])
    cache.add([keys[0]], vectors[:1])  # a key written twice is kept once
    cache.compact()
    assert len(list(cache.dir.glob("part-*.parquet"))) == 1
    out = np.zeros_like(vectors)
    found = cache.fill({key: [row] for row, key in enumerate(keys)} | {"absent/full": []}, out)
    assert found == set(keys) and np.array_equal(out, vectors)


def test_device_resolution_and_precision() -> None:
    cpu = resolve_device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 where the CPU multiplies it natively (AVX-512 BF16, AMX), else fp32; fp16 never
    assert effective_precision(cpu, "bf16") == ("bf16" if native_cpu_bf16() else "fp32")
    assert effective_precision(cpu, "fp16") == "fp32"
    assert effective_precision(cpu, "auto") == ("bf16" if native_cpu_bf16() else "fp32")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="unknown precision"):
        effective_precision(cpu, "int8")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_images_decode_in_process_on_the_cpu_and_in_workers_for_a_gpu() -> None:
    from stl_pipeline.resources import MAX_LOADER_WORKERS, TorchDevice

    cores = len(os.sched_getaffinity(0))
    assert TorchDevice().loader_workers(torch.device("cpu")) == 0
    assert TorchDevice().loader_workers(torch.device("cuda")) == min(MAX_LOADER_WORKERS, cores)
    assert TorchDevice(num_workers=3).loader_workers(torch.device("cpu")) == 3  # set: kept


@pytest.mark.skipif(not native_cpu_bf16(), reason="this CPU has no native bf16: it embeds in fp32")
def test_cpu_bf16_embeddings_match_fp32_and_are_cached_apart(tmp_path: Path) -> None:
    backbone = load_backbone(BackboneSpec("tf_efficientnet_lite0", "packaged", image_size=128))
    items = write_images(tmp_path / "img", 8)
    cpu = torch.device("cpu")
    caches = {p: EmbeddingCache(tmp_path / "cache", backbone, p) for p in ("fp32", "bf16")}
    full, _ = embed_items(items, backbone, cpu, workers=0, cache=caches["fp32"])
    reduced, stats = embed_items(items, backbone, cpu, "bf16", workers=0, cache=caches["bf16"])
    assert stats.computed == 8 and reduced.info["precision"] == "bf16"  # not fp32's cached vectors
    assert caches["fp32"].dir != caches["bf16"].dir
    cosine = np.sum(full.vectors * reduced.vectors, axis=1)
    # Measured on these images (lite0, 128 px, oneDNN on AVX-512 BF16): 0.985 to 0.993.
    assert cosine.min() > 0.97 and cosine.mean() > 0.98, cosine


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_embeddings_match_cpu(tmp_path: Path, precision: str) -> None:
    backbone = load_backbone(BackboneSpec("tf_efficientnet_lite0", "packaged", image_size=128))
    items = write_images(tmp_path / "img", 8)
    on_cpu, _ = embed_items(items, backbone, torch.device("cpu"), workers=0)
    on_gpu, stats = embed_items(items, backbone, torch.device("cuda"), precision, workers=2)
    assert stats.computed == 8 and on_gpu.info["device"].startswith("cuda")
    cosine = np.sum(on_cpu.vectors * on_gpu.vectors, axis=1)
    # Measured on an H100 (lite0, 128 px): fp16 keeps every cosine above 0.999, while bf16's
    # 8-bit mantissa drifts (mean 0.98, min 0.94): prefer fp16 for this backbone.
    floor, mean = {"fp16": (0.999, 0.999), "bf16": (0.9, 0.97)}[precision]
    assert cosine.min() > floor and cosine.mean() > mean
