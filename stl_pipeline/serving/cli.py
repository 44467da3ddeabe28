"""``stl-recommend``: recommendations for a new scene photo or a catalogue product.

    stl-recommend scene IMAGE [--bbox l,t,r,b] [--category NAME] [-k 10] [--json]
    stl-recommend product ID [-k 10] [--json]
    stl-recommend customer ID [-k 12] [--json]

Answers from the champion (the model that passed its gate and was promoted, with
the graph it was trained on) under STL_DATA_DIR, or from a registered MLflow
model (--model-name stl-gat for its @champion alias, --model-version 3 for a
version); ``customer`` reads hm_recommendations, made from the personalized champion.
"""

import argparse
import json
import re
import sys
import warnings
from dataclasses import asdict

# torch_geometric's import calls torch.jit.script, which torch 2.14 marks deprecated: not the user's concern.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from stl_pipeline.serving.cold_start import (  # noqa: E402 (after the filter)
    ColdStartError,
    Item,
    ProductAnswer,
    SceneAnswer,
    parse_bbox,
)
from stl_pipeline.serving.loading import load  # noqa: E402
from stl_pipeline.settings import load_settings  # noqa: E402

MAX_K = 1000  # a list longer than this is not a recommendation; FAISS would allocate k per query


def _k(text: str) -> int:
    if not (text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_K):
        raise argparse.ArgumentTypeError(f"{text[:20]!r}: use a whole number from 1 to {MAX_K}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stl-recommend", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-name", help="A registered MLflow model (stl-gat, stl-sage, stl-two-tower, stl-triplet)."
    )
    parser.add_argument("--model-version", help="Its version (default: its @champion alias).")
    commands = parser.add_subparsers(dest="command", required=True)
    scene = commands.add_parser("scene", help="Exact-match and complete-the-look products for a scene photo.")
    scene.add_argument("image", help="A JPEG, PNG or WebP file.")
    scene.add_argument("--bbox", help="The product's box: left,top,right,bottom in [0, 1], origin top-left.")
    scene.add_argument(
        "--category", help="The boxed product's category (a leaf, e.g. Shoes); default: inferred."
    )
    product = commands.add_parser(
        "product", help="Similar and complementary products of a catalogue product."
    )
    product.add_argument("id", help="A product id (32 hex digits).")
    customer = commands.add_parser(
        "customer", help="A customer's stored top-k articles (hm_recommendations), or the best sellers."
    )
    customer.add_argument("id", help="An H&M customer id (64 hex digits).")
    customer.add_argument("-k", type=_k, default=12, help="Articles, at most the stored list's length.")
    for command in (scene, product):
        command.add_argument("-k", type=_k, default=10, help=f"Products per list, 1 to {MAX_K} (default 10).")
    for command in (scene, product, customer):
        command.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    return parser


def _customer(customer_id: str, k: int, as_json: bool) -> str:
    from stl_pipeline.catalogue import asset_path
    from stl_pipeline.personalized.recommend import POPULAR_FILE, lookup

    if not re.fullmatch(r"[0-9a-f]{64}", customer_id):
        raise ValueError(f"customer id {customer_id[:70]!r} is not 64 lowercase hex digits")
    data_dir = load_settings().data_dir
    answer = lookup(
        asset_path(data_dir, "hm_recommendations"), data_dir / "serving" / POPULAR_FILE, customer_id, k
    )
    if as_json:
        return json.dumps(asdict(answer), indent=2)
    title = (
        f"Customer {customer_id}: top {len(answer.articles)} (the personalized champion)"
        if answer.personalized
        else f"Customer {customer_id} has no recent purchase: last week's best sellers"
    )
    lines = [title] + [
        f"  {row['rank']:>3}  {row['article_id']}  "
        + (f"{row['score']:.4f}" if answer.personalized else f"{row['sales_last_week']} sold")
        for row in answer.articles
    ]
    return "\n".join(lines)


def _table(title: str, items: list[Item]) -> str:
    lines = [f"{title}:"] + [
        f"  {rank:>3}  {item.product}  {item.category:<26} {item.score:.4f}"
        for rank, item in enumerate(items, 1)
    ]
    return "\n".join(lines if items else [f"{title}: none"])


def _text(answer: SceneAnswer | ProductAnswer) -> str:
    model = ", ".join(f"{k} {v}" for k, v in answer.model.items())
    if isinstance(answer, ProductAnswer):
        return "\n\n".join(
            [
                f"Product {answer.product} ({answer.category}); {model}",
                _table("Similar products", answer.similar),
                _table("Complementary products", answer.complementary),
            ]
        )
    inferred = " (inferred from the best match)" if answer.category_inferred else ""
    bbox = ",".join(f"{v:g}" for v in answer.bbox) if answer.bbox else "none (the whole image)"
    return "\n\n".join(
        [
            f"Scene {answer.image}, bbox {bbox}, category {answer.category}{inferred}; {model}",
            _table("Shop the look (exact match)", answer.exact),
            _table("Complete the look", answer.complete_the_look),
            _table("Seen in similar scenes (summed scene similarity)", answer.seen_in_similar_scenes),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "customer":
            print(_customer(args.id, args.k, args.json))
            return 0
        if args.model_version and not args.model_name:
            raise ColdStartError("--model-version needs --model-name")
        cold = load(load_settings(), args.model_name, args.model_version)
        if args.command == "scene":
            bbox = parse_bbox(args.bbox) if args.bbox else None
            answer = cold.scene(args.image, bbox, args.category, args.k)
        else:
            answer = cold.product(args.id, args.k)
    except (ColdStartError, ValueError, FileNotFoundError) as error:
        print(f"stl-recommend: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(answer), indent=2) if args.json else _text(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
