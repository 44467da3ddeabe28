"""Embedding throughput: the asset's code path against a bare timm forward loop.

Both run on the same pre-decoded uint8 batches of generated scene crops, in one
run: the pipeline's ``Embedder`` (device transfer, normalization, channels-last,
autocast, L2 normalization, copy back) and a bare ``model(x)`` loop over batches
normalized beforehand, in both memory formats. The last rows time the whole asset
path, decoding and letterboxing included, in this process and in data-loader workers.

    .venv/bin/python benchmarks/embed.py [--model tf_efficientnet_lite0 --weights packaged]
        [--image-size 128] [--device auto] [--precision fp32|bf16|fp16] [--batches 8]
        [--workers 0,2]
"""

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from stl_pipeline.device import autocast, describe, effective_precision, resolve_device
from stl_pipeline.features.backbone import load_backbone
from stl_pipeline.features.embed import Embedder, batches, embed_items
from stl_pipeline.features.queries import ImageItem
from stl_pipeline.features.spec import BackboneSpec
from stl_pipeline.generate import GeneratorConfig, generate_dataset


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(paths: dict[str, tuple], device: torch.device, repeats: int) -> dict[str, float]:
    """Images per second of each ``name: (step, batches)``, best of ``repeats`` rounds after a
    warm-up; rounds alternate between the paths so that machine noise hits them alike."""
    for step, items in paths.values():
        for item in items[:2]:
            step(item)
    synchronize(device)
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(repeats):
        for name, (step, items) in paths.items():
            start = time.perf_counter()
            for item in items:
                step(item)
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: sum(len(i) for i in items) / best[name] for name, (_, items) in paths.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="packaged")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument(
        "--workers", default="0,2", help="decode workers of the asset path's rows, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = effective_precision(device, args.precision)
    backbone = load_backbone(BackboneSpec(args.model, args.weights, image_size=args.image_size))
    count = args.batch_size * args.batches
    with tempfile.TemporaryDirectory() as tmp:
        scenes = max(50, count // 3)
        generate_dataset(GeneratorConfig(products=200, scenes=scenes, seed=11), Path(tmp) / "data")
        paths = sorted((Path(tmp) / "data" / "images").glob("*.jpg"))[:count]
        items = [ImageItem(p.stem, p.stem, str(p), p.stem) for p in paths]
        decoded = list(batches(items, backbone.transform, args.batch_size, 0))

        embedder = Embedder(backbone, device, precision)
        offset, scale = backbone.transform.normalizer(device)
        paths = {"pipeline Embedder (channels-last)": (embedder, decoded)}
        for layout, name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels-last")):
            model = copy.deepcopy(backbone.model).to(device).eval().to(memory_format=layout)
            ready = [
                ((b.to(device).float() - offset) / scale).contiguous(memory_format=layout) for b in decoded
            ]

            @torch.inference_mode()
            def forward(x: torch.Tensor, model: torch.nn.Module = model) -> None:
                with autocast(device, precision):
                    model(x)

            paths[f"bare timm forward ({name})"] = (forward, ready)
        speeds = interleaved(paths, device, args.repeats)
        best = max(v for k, v in speeds.items() if k.startswith("bare"))
        rows = [[name, speed, speed / best] for name, speed in speeds.items()]

        for workers in map(int, args.workers.split(",")):
            start = time.perf_counter()
            _, stats = embed_items(
                items, backbone, device, precision, batch_size=args.batch_size, workers=workers
            )
            full = stats.computed / (time.perf_counter() - start)
            how = f"{workers} decode workers" if workers else "decoded in-process"
            rows.append([f"asset path from JPEG files ({how})", full, full / best])

    print(
        f"\n{count} images, {args.model} ({backbone.weights_id.split(':sha')[0]}), "
        f"{backbone.transform.size}px, batch {args.batch_size}, {describe(device)}, {precision}\n"
    )
    print(
        tabulate(
            [[name, f"{speed:,.1f}", f"{ratio:.2f}"] for name, speed, ratio in rows],
            headers=["path", "images/s", "ratio to best bare loop"],
        )
    )


if __name__ == "__main__":
    main()
