"""The recommendation gallery: one self-contained HTML page to look at what the models do.

Every image is an embedded JPEG thumbnail (a data URI), so the page opens
anywhere, offline, and can be attached to a ticket or an MLflow run as one
file. A script at its end counts images that failed to decode and says so
on the page, for people and for the browser test alike.
"""

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageOps
from torch_geometric.data import HeteroData

from stl_pipeline.evaluation.report import popularity_scorer, vector_methods
from stl_pipeline.features.regions import Box, ctl_box, stl_box
from stl_pipeline.images.decode import decode
from stl_pipeline.models.queries import Queries
from stl_pipeline.vectors import Embeddings

STL_COLOUR, CTL_COLOUR, HIT_COLOUR = (255, 122, 0), (30, 120, 255), (0, 170, 80)
TASK_TITLES = {
    "stl": "Shop the Look (query: the bbox crop)",
    "ctl": "Complete the Look (query: the region around it)",
}


@dataclass
class Ranked:
    """A method's top-K for one query, and where the true product ranked."""

    products: list[str]
    scores: list[float]
    truth_rank: int  # 1-based, within the same-category pool


@dataclass
class Sample:
    pair_id: str
    scene: str
    category: str
    truth: str
    scene_path: str
    stl_box: Box
    ctl_box: Box | None
    others: int  # the scene's other annotated garments: 0 leaves CTL only the image to go on
    lists: dict[str, dict[str, Ranked]] = field(default_factory=dict)  # task -> method -> list


@dataclass
class Strip:
    """A product and a list of products to show next to it."""

    title: str
    product: str
    products: list[str]
    scores: list[float]


def rank_same_category(
    scores: torch.Tensor, truth: torch.Tensor, category: torch.Tensor, ids: list[str], k: int
) -> list[Ranked]:
    """Each query's top-K among its true product's category, and the true product's rank there."""
    allowed = category[None, :] == category[truth][:, None]
    masked = scores.float().masked_fill(~allowed, float("-inf"))
    top = masked.topk(min(k, masked.shape[1]), dim=1)
    true_scores = masked.gather(1, truth[:, None])
    ranks = (masked > true_scores).sum(dim=1) + 1
    result = []
    for values, positions, rank in zip(top.values, top.indices, ranks, strict=True):
        keep = torch.isfinite(values)
        result.append(Ranked([ids[p] for p in positions[keep].tolist()], values[keep].tolist(), int(rank)))
    return result


def ranked_lists(
    graph: HeteroData,
    records: dict[str, dict],
    popularity: torch.Tensor,
    queries: dict[str, Queries],
    context: Embeddings,
    methods: dict[str, str],
    k: int,
) -> dict[str, dict[str, list[Ranked]]]:
    """task -> method label -> each query's same-category top-K, for popularity, frozen kNN
    and the trained models (``records``)."""
    ids, category = graph["product"].ids, graph["product"].category
    dim = next(iter(queries.values())).x.shape[1]
    vectors = vector_methods(graph, dim, records, context)
    lists = {}
    for task, q in queries.items():
        # The report's popularity scorer: ties broken at random, never by index in the truth's favour.
        scores = {"popularity": popularity_scorer(popularity)(task, q, pd.DataFrame())}
        scores |= {name: method.scores(task, q) for name, method in vectors.items()}
        lists[task] = {
            label: rank_same_category(scores[m], q.product, category, ids, k) for m, label in methods.items()
        }
    return lists


def build_samples(
    pairs: pd.DataFrame,
    scenes: pd.DataFrame,
    categories: list[str],
    lists: dict[str, dict[str, list[Ranked]]],
) -> list[Sample]:
    """One sample per row of ``pairs`` (with ``others``, the scene's other annotated
    garments); ``scenes`` is the scene manifest indexed by signature,
    ``lists[task][method][row]`` the row's ranked list."""
    samples = []
    for row, pair in enumerate(pairs.itertuples(index=False)):
        scene = scenes.loc[pair.scene]
        bbox = (pair.left, pair.top, pair.right, pair.bottom)
        width, height = int(scene["width"]), int(scene["height"])
        samples.append(
            Sample(
                pair_id=pair.pair_id,
                scene=pair.scene,
                category=categories[row],
                truth=pair.product,
                scene_path=scene["path"],
                stl_box=stl_box(bbox, width, height),
                ctl_box=ctl_box(bbox, width, height),
                others=int(pair.others),
                lists={task: {m: ranked[row] for m, ranked in by.items()} for task, by in lists.items()},
            )
        )
    return samples


def strips_of(recommendations: pd.DataFrame, product: str, k: int) -> list[Strip]:
    """The similar and complementary lists of ``product`` from the recommendations table."""
    strips = []
    for kind in ("similar", "complementary"):
        own = recommendations[(recommendations["kind"] == kind) & (recommendations["query"] == product)]
        own = own.sort_values("rank").head(k)
        strips.append(Strip(kind, product, list(own["product"]), own["score"].tolist()))
    return strips


# (task, context) of the report rows the page shows, and their column titles.
SHOWN_ROWS = {
    ("stl", "all"): "STL",
    ("ctl", "all"): "CTL",
    ("ctl", "image_only"): "CTL image only",
    ("ctl", "annotated"): "CTL annotated",
}


def _context(others: int) -> str:
    if not others:
        return "no other garment annotated: Complete the Look reads the image only"
    return f"{others} other garment{'s' if others > 1 else ''} annotated"


def metrics_table(test: pd.DataFrame, methods: dict[str, str]) -> pd.DataFrame:
    """HR@10 and MRR of each of ``methods`` (name -> label) on each task, and on Complete the
    Look's queries by context, from report rows, each with its 95% bootstrap interval over
    the test queries."""
    rows = test[test["method"].isin(methods)].set_index(["method", "task", "context"])
    present = [m for m in methods if m in rows.index.get_level_values(0)]
    kinds = {key: title for key, title in SHOWN_ROWS.items() if key in rows.droplevel(0).index}

    def cell(method: str, key: tuple[str, str], metric: str) -> str:
        row = rows.loc[(method, *key)]
        return f"{row[metric]:.3f} ({row[f'{metric}_low']:.3f}-{row[f'{metric}_high']:.3f})"

    columns = {
        f"{title} {metric} (95% CI)": [cell(m, key, metric) for m in present]
        for key, title in kinds.items()
        for metric in ("HR@10", "MRR")
    }
    return pd.DataFrame({"method": [methods[m] for m in present], **columns})


def shown_table(samples: list[Sample], k: int) -> pd.DataFrame:
    """What the page shows: per pair, task and method, the true product's rank and whether it hit."""
    return pd.DataFrame(
        [
            {
                "pair_id": s.pair_id,
                "scene": s.scene,
                "product": s.truth,
                "task": task,
                "method": method,
                "truth_rank": ranked.truth_rank,
                "hit": ranked.truth_rank <= k,
            }
            for s in samples
            for task, by in s.lists.items()
            for method, ranked in by.items()
        ],
        columns=["pair_id", "scene", "product", "task", "method", "truth_rank", "hit"],
    )


def jpeg(image: Image.Image, size: int, quality: int = 85) -> bytes:
    thumb = ImageOps.contain(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=quality)
    return out.getvalue()


def data_uri(jpeg_bytes: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes).decode()


def scene_image(path: str, stl_box: Box, ctl_box: Box | None, size: int) -> Image.Image:
    """The scene with its STL bbox (orange) and CTL region (blue) drawn, scaled to ``size``."""
    image = decode(path)
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / size * 2))
    if ctl_box is not None:
        draw.rectangle(ctl_box, outline=CTL_COLOUR, width=width)
    draw.rectangle(stl_box, outline=STL_COLOUR, width=width)
    return ImageOps.contain(image, (size, size), Image.Resampling.LANCZOS)


class Thumbnails:
    """Product thumbnails as data URIs, each encoded once."""

    def __init__(self, paths: dict[str, str], size: int) -> None:
        self.paths, self.size, self._cache = paths, size, {}

    def __call__(self, product: str) -> str:
        if product not in self._cache:
            self._cache[product] = data_uri(jpeg(decode(self.paths[product]), self.size))
        return self._cache[product]

    def image(self, product: str) -> Image.Image:
        return ImageOps.contain(decode(self.paths[product]), (self.size, self.size))


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { margin: 0 0 4px; } .sub { color: #666; margin: 0 0 16px; }
table.metrics { border-collapse: collapse; margin: 8px 0 24px; }
table.metrics th, table.metrics td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; }
section { background: #fff; border: 1px solid #e4e4e4; border-radius: 8px;
  padding: 12px 16px; margin: 0 0 20px; }
.query { display: flex; gap: 16px; align-items: flex-end; }
figure { margin: 0; text-align: center; font-size: 12px; color: #555; }
.truth img { outline: 3px solid #00aa50; }
table.lists td { vertical-align: middle; padding: 2px 6px; }
.method { width: 110px; font-weight: 600; } .rank { width: 90px; color: #555; font-size: 12px; }
.tile { display: inline-block; margin: 0 2px; text-align: center; font-size: 10px; color: #777; }
.tile img { display: block; border: 3px solid transparent; }
.tile.hit img { border-color: #00aa50; } .tile.hit { color: #00aa50; font-weight: 700; }
.legend span { display: inline-block; width: 12px; height: 12px; vertical-align: -2px; margin: 0 4px 0 12px; }
#image-status { color: #555; }
#image-status[data-broken]:not([data-broken="0"]) { color: #c00; font-weight: 700; }
"""

STATUS_SCRIPT = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((img) => !(img.complete && img.naturalWidth > 0));
  const status = document.getElementById("image-status");
  status.dataset.images = images.length;
  status.dataset.broken = broken.length;
  status.textContent = broken.length
    ? `${broken.length} of ${images.length} images failed to load`
    : `all ${images.length} images loaded`;
});
"""


def _tile(uri: str, caption: str, hit: bool = False, size: int = 72) -> str:
    return (
        f'<div class="tile{" hit" if hit else ""}"><img src="{uri}" width="{size}" alt="">'
        f"{html.escape(caption)}</div>"
    )


def _metrics_table(metrics: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in metrics.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>" for v in row
        )
        + "</tr>"
        for row in metrics.itertuples(index=False)
    )
    return f'<table class="metrics"><tr>{head}</tr>{body}</table>'


def render(
    title: str,
    subtitle: str,
    metrics: pd.DataFrame,
    samples: list[Sample],
    strips: list[Strip],
    thumbnails: Callable[[str], str],
    scene_size: int = 256,
    tile: int = 72,
) -> str:
    """The gallery page as one HTML string."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class=sub>{html.escape(subtitle)}</p>",
        "<h2>Held-out test scenes, same-category candidates</h2>",
        _metrics_table(metrics),
        '<p class="legend">Query regions:<span style="background:#ff7a00"></span>Shop the Look bbox'
        '<span style="background:#1e78ff"></span>Complete the Look region'
        '<span style="background:#00aa50"></span>the true product (a hit when it is in the list)</p>',
    ]
    for sample in samples:
        scene_uri = data_uri(
            jpeg(scene_image(sample.scene_path, sample.stl_box, sample.ctl_box, scene_size), scene_size)
        )
        parts += [
            "<section>",
            f"<h3>Scene {html.escape(sample.scene[:12])}… · {html.escape(sample.category)}"
            f" · pair {html.escape(sample.pair_id[:12])}… · {_context(sample.others)}</h3>",
            '<div class="query">',
            f'<figure><img src="{scene_uri}" alt="scene"><figcaption>scene</figcaption></figure>',
            f'<figure class="truth"><img src="{thumbnails(sample.truth)}" width="{tile * 2}"'
            f' alt="true product"><figcaption>true product {html.escape(sample.truth[:8])}…'
            "</figcaption></figure></div>",
        ]
        for task, by_method in sample.lists.items():
            parts.append(f"<h4>{html.escape(TASK_TITLES.get(task, task))}</h4><table class=lists>")
            for method, ranked in by_method.items():
                tiles = "".join(
                    _tile(thumbnails(p), f"{s:.2f}", p == sample.truth, tile)
                    for p, s in zip(ranked.products, ranked.scores, strict=True)
                )
                parts.append(
                    f'<tr><td class="method">{html.escape(method)}</td>'
                    f'<td class="rank">true product at rank {ranked.truth_rank}</td><td>{tiles}</td></tr>'
                )
            parts.append("</table>")
        parts.append("</section>")
    if strips:
        parts.append("<h2>Similar and complementary products</h2><section><table class=lists>")
        for strip in strips:
            tiles = "".join(
                _tile(thumbnails(p), f"{s:.2f}", size=tile)
                for p, s in zip(strip.products, strip.scores, strict=True)
            )
            parts.append(
                f'<tr><td class="method">{html.escape(strip.title)}</td>'
                f"<td>{_tile(thumbnails(strip.product), strip.product[:8], size=tile)}</td>"
                f"<td>{tiles}</td></tr>"
            )
        parts.append("</table></section>")
    parts.append(f'<p id="image-status">checking images…</p><script>{STATUS_SCRIPT}</script></body></html>')
    return "".join(parts)


def preview(sample: Sample, method: str, thumbnails: Thumbnails, scene_size: int = 160) -> bytes:
    """A small PNG for the Dagster UI: the scene, the true product and one method's lists."""
    tile, gap = thumbnails.size, 4
    tasks = [t for t in sample.lists if method in sample.lists[t]]
    k = max((len(sample.lists[t][method].products) for t in tasks), default=0)
    width = scene_size + gap + tile + gap + k * (tile + gap) + gap
    height = max(scene_size, len(tasks) * (tile + gap)) + 2 * gap
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(scene_image(sample.scene_path, sample.stl_box, sample.ctl_box, scene_size), (gap, gap))
    truth = ImageOps.expand(thumbnails.image(sample.truth), 3, HIT_COLOUR)
    canvas.paste(truth.resize((tile, tile)), (scene_size + gap, gap))
    draw = ImageDraw.Draw(canvas)
    for row, task in enumerate(tasks):
        top = gap + row * (tile + gap)
        colour = STL_COLOUR if task == "stl" else CTL_COLOUR
        for column, product in enumerate(sample.lists[task][method].products):
            left = scene_size + 2 * gap + tile + column * (tile + gap)
            canvas.paste(thumbnails.image(product).resize((tile, tile)), (left, top))
            edge = HIT_COLOUR if product == sample.truth else colour
            draw.rectangle(
                (left, top, left + tile - 1, top + tile - 1),
                outline=edge,
                width=3 if edge == HIT_COLOUR else 1,
            )
    out = io.BytesIO()
    canvas.save(out, "PNG", optimize=True)
    return out.getvalue()
