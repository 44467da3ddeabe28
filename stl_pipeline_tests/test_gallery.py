import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stl_pipeline.features.regions import ctl_box, stl_box
from stl_pipeline.serving.gallery import (
    Ranked,
    Sample,
    Strip,
    Thumbnails,
    preview,
    rank_same_category,
    render,
)
from stl_pipeline_tests import browser

STATUS = re.compile(r'<p id="image-status" data-images="(\d+)" data-broken="(\d+)">([^<]*)<')


@pytest.fixture
def parts(small_dataset: Path) -> tuple[list[Sample], list[Strip], Thumbnails, pd.DataFrame]:
    pairs = [json.loads(line) for line in (small_dataset / "fashion.json").read_text().splitlines()][:3]
    images = small_dataset / "images"
    products = sorted(p.stem for p in images.glob("*.jpg"))
    thumbnails = Thumbnails({p: str(images / f"{p}.jpg") for p in products}, 64)
    samples = []
    for pair in pairs:
        with Image.open(images / f"{pair['scene']}.jpg") as scene:
            width, height = scene.size
        others = [p for p in products if p != pair["product"]][:4]
        lists = {
            task: {
                "GAT": Ranked([pair["product"], *others], [0.9, 0.8, 0.7, 0.6, 0.5], 1),
                "popularity": Ranked(others, [4.0, 3.0, 2.0, 1.0], 7),
            }
            for task in ("stl", "ctl")
        }
        bbox = tuple(pair["bbox"])
        samples.append(
            Sample(
                pair_id=f"{pair['scene']}-{pair['product']}",
                scene=pair["scene"],
                category="Shoes",
                truth=pair["product"],
                scene_path=str(images / f"{pair['scene']}.jpg"),
                stl_box=stl_box(bbox, width, height),
                ctl_box=ctl_box(bbox, width, height),
                others=0,
                lists=lists,
            )
        )
    strips = [Strip("similar", products[0], products[1:6], [0.9, 0.8, 0.7, 0.6, 0.5])]
    metrics = pd.DataFrame(
        {"method": ["GAT", "popularity"], "STL HR@10": [0.8, 0.3], "CTL HR@10": [0.4, 0.3]}
    )
    return samples, strips, thumbnails, metrics


def test_gallery_renders_in_headless_chromium_with_every_image_loaded(parts, tmp_path: Path) -> None:
    samples, strips, thumbnails, metrics = parts
    page = tmp_path / "gallery.html"
    page.write_text(render("gallery", "three scenes", metrics, samples, strips, thumbnails, tile=64))
    # 3 scenes x (scene + truth + 2 tasks x 9 tiles) + the strip's 6
    images, broken, text = STATUS.search(browser.dump_dom(page, tmp_path / "profile")).groups()
    assert (int(images), int(broken), text) == (66, 0, "all 66 images loaded")

    shot = browser.screenshot(page, tmp_path / "gallery.png", tmp_path / "profile")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (1800, 1400, 3)
    assert pixels.std() > 20  # thumbnails and text, not a blank page
    hits = np.all(np.abs(pixels - np.array([0, 170, 80])) < 30, axis=2).sum()
    assert hits > 100  # the green frames of hits are drawn


def test_a_broken_image_is_reported_on_the_page(parts, tmp_path: Path) -> None:
    samples, _, thumbnails, metrics = parts
    page = tmp_path / "broken.html"
    html = render("gallery", "", metrics, samples[:1], [], thumbnails, tile=64)
    first = re.search(r'src="(data:image/jpeg;base64,[^"]+)"', html).group(1)
    page.write_text(html.replace(first, "data:image/jpeg;base64,bm90IGEganBlZw==", 1))
    images, broken, text = STATUS.search(browser.dump_dom(page, tmp_path / "profile")).groups()
    assert int(broken) == 1 and text == f"1 of {images} images failed to load"


def test_same_category_ranking_and_preview(parts) -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.3, 0.4, 0.1]])
    category = torch.tensor([0, 1, 0, 0])
    ranked = rank_same_category(scores, torch.tensor([2, 1]), category, ["a", "b", "c", "d"], 2)
    assert ranked[0] == Ranked(["a", "d"], pytest.approx([0.9, 0.7]), 3)
    assert ranked[1].products == ["b"] and ranked[1].truth_rank == 1

    samples, _, thumbnails, _ = parts
    png = preview(samples[0], "GAT", thumbnails)
    image = Image.open(io.BytesIO(png))
    assert image.width > image.height > 64
