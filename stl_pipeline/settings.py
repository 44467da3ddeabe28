"""The environment contract: every ``STL_*`` variable and its embedded default.

This is the only module that reads the environment, so "which data, where"
is decided in exactly one place, and the Dagster launchpad shows the result.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from stl_pipeline.device import Precision, check_device_spec, check_precision
from stl_pipeline.generate import CATEGORIES_FILE, IMAGES_DIR, PAIRS_FILE
from stl_pipeline.ids import check_url_template
from stl_pipeline.personalized.files import HM_FILES

PINTEREST_TEMPLATE = "http://i.pinimg.com/400x/{shard}/{signature}.jpg"
DEMO_DIR = "demo"
HM_DEMO_DIR = "demo_hm"  # the generated H&M-format purchases
HM_VARIABLES = ("HM_TRANSACTIONS_PATH", "HM_ARTICLES_PATH", "HM_CUSTOMERS_PATH")
# The real release uses the seed projects' backbone; the demo uses weights that ship in a
# package (the hub may be out of reach) at the size of its 128-pixel product images.
REAL_BACKBONE = ("resnet50", "hub", None)
DEMO_BACKBONE = ("tf_efficientnet_lite0", "packaged", 128)
WEIGHTS_KEYWORDS = ("hub", "packaged", "none")
WEEKLY = "0 3 * * 1"  # Mondays 03:00 UTC: the retraining schedule's default
# How a run executes its steps: processes on the run's machine, or a Kubernetes job per step.
EXECUTORS = ("multiprocess", "k8s")
# Past 1,024 pixels a side, a batch of scene crops would take gigabytes for no gain in recall.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    pairs_path: Path
    categories_path: Path
    image_url_template: str
    allowed_hosts: tuple[str, ...]
    demo: bool  # the raw files are the generated demo, created on first use
    backbone: str = REAL_BACKBONE[0]
    backbone_weights: str = REAL_BACKBONE[1]  # hub, packaged, none, or checkpoint
    backbone_checkpoint: str | None = None
    image_size: int | None = None
    device: str = "auto"
    precision: Precision = "auto"
    mlflow_tracking_uri: str = ""
    retrain_cron: str = WEEKLY
    hm_retrain_cron: str = WEEKLY
    executor: str = EXECUTORS[0]
    # The personalized group's three CSVs: transactions, articles, customers.
    hm_paths: tuple[Path, ...] = ()
    hm_demo: bool = True  # they are the generated demo under STL_DATA_DIR/demo_hm

    @property
    def demo_dir(self) -> Path:
        return self.data_dir / DEMO_DIR

    @property
    def mlflow_artifact_root(self) -> str | None:
        """Artifacts of a local store go under STL_DATA_DIR; a tracking server keeps its own
        (``mlflow server --serve-artifacts``), so runs logged over HTTP upload to it."""
        if urlsplit(self.mlflow_tracking_uri).scheme in ("http", "https"):
            return None
        return str(self.data_dir / "mlflow" / "artifacts")


def default_allowed_hosts(template: str) -> tuple[str, ...]:
    host = urlsplit(template).hostname
    return (host.lower(),) if host else ()


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    data_dir = Path(environ.get("STL_DATA_DIR") or ".stl_data").absolute()
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"STL_DATA_DIR={str(data_dir)!r} is a file; point it at a directory")
    pairs, categories = environ.get("STL_PAIRS_PATH"), environ.get("STL_CATEGORIES_PATH")
    if bool(pairs) != bool(categories):
        raise ValueError(
            "set both STL_PAIRS_PATH and STL_CATEGORIES_PATH (your own STL files), "
            "or neither (the generated demo dataset)"
        )
    demo = not pairs
    demo_dir = data_dir / DEMO_DIR
    if demo:
        pairs_path, categories_path = demo_dir / PAIRS_FILE, demo_dir / CATEGORIES_FILE
        default_template = (demo_dir / IMAGES_DIR).as_uri() + "/{signature}.jpg"
    else:
        pairs_path, categories_path = Path(pairs).absolute(), Path(categories).absolute()
        default_template = PINTEREST_TEMPLATE
    template = check_url_template(environ.get("STL_IMAGE_URL_TEMPLATE") or default_template)
    hosts_text = environ.get("STL_ALLOWED_HOSTS")
    if hosts_text:
        hosts = tuple(h.strip().lower() for h in hosts_text.split(",") if h.strip())
    else:
        hosts = default_allowed_hosts(template)
    model, weights, size = DEMO_BACKBONE if demo else REAL_BACKBONE
    model = environ.get("STL_BACKBONE") or model
    weights_text = environ.get("STL_BACKBONE_WEIGHTS") or weights
    checkpoint = None
    if weights_text not in WEIGHTS_KEYWORDS:  # a path: a local checkpoint file
        weights, checkpoint = "checkpoint", str(Path(weights_text).absolute())
    else:
        weights = weights_text
    size_text = environ.get("STL_BACKBONE_IMAGE_SIZE")
    if size_text:
        if (
            not (size_text.isdigit() and len(size_text) <= 4)
            or not MIN_IMAGE_SIZE <= int(size_text) <= MAX_IMAGE_SIZE
        ):
            raise ValueError(
                f"STL_BACKBONE_IMAGE_SIZE={size_text[:20]!r}: use a whole number of pixels from "
                f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
            )
        size = int(size_text)
    elif environ.get("STL_BACKBONE"):
        size = None  # another model: its own input size
    return Settings(
        data_dir,
        pairs_path,
        categories_path,
        template,
        hosts,
        demo,
        backbone=model,
        backbone_weights=weights,
        backbone_checkpoint=checkpoint,
        image_size=size,
        device=_device(environ.get("STL_DEVICE") or "auto"),
        precision=_precision(environ.get("STL_PRECISION") or "auto"),
        mlflow_tracking_uri=environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}",
        retrain_cron=_cron(environ.get("STL_RETRAIN_CRON") or WEEKLY),
        hm_retrain_cron=_cron(environ.get("HM_RETRAIN_CRON") or WEEKLY),
        executor=_executor(environ.get("STL_EXECUTOR") or EXECUTORS[0]),
        hm_paths=_hm_paths(environ) or tuple(data_dir / HM_DEMO_DIR / name for name in HM_FILES),
        hm_demo=_hm_paths(environ) is None,
    )


def _hm_paths(environ: Mapping[str, str]) -> tuple[Path, ...] | None:
    given = [environ.get(name) for name in HM_VARIABLES]
    if not any(given):
        return None
    if not all(given):
        missing = ", ".join(name for name, value in zip(HM_VARIABLES, given, strict=True) if not value)
        raise ValueError(
            f"set all of {', '.join(HM_VARIABLES)} (your own H&M-format files), or none (the generated "
            f"demo purchases); missing: {missing}"
        )
    return tuple(Path(value).absolute() for value in given)  # type: ignore[arg-type]


def _executor(text: str) -> str:
    if text not in EXECUTORS:
        raise ValueError(f"STL_EXECUTOR={text[:20]!r}: use one of {', '.join(EXECUTORS)}")
    return text


def _device(text: str) -> str:
    try:
        return check_device_spec(text)
    except ValueError as error:
        raise ValueError(f"STL_DEVICE: {error}") from None


def _precision(text: str) -> Precision:
    try:
        return check_precision(text.strip().lower())
    except ValueError as error:
        raise ValueError(f"STL_PRECISION: {error}") from None


def _cron(text: str) -> str:
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"STL_RETRAIN_CRON={text!r}: use a five-field cron string, e.g. {WEEKLY!r} (Mondays 03:00 UTC)"
        )
    return " ".join(fields)
