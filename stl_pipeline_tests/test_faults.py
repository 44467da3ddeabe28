"""Fault injection: killed processes, corrupted state on disk, concurrent runs and hostile
input, each reproduced as an operator or an attacker would meet it. docs/reference.md, Reliability,
summarizes the cases; every one must end in a clear error or an exact resume, never in a
silent wrong result, a stuck run or an unbounded read."""

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stl_pipeline.catalogue import read_embeddings
from stl_pipeline.definitions import MODULES, build_definitions
from stl_pipeline.features.assets import ALL_PARTITIONS
from stl_pipeline.features.partitions import PARTITIONS
from stl_pipeline.generate import generate_dataset
from stl_pipeline.generate.dataset import signature
from stl_pipeline.graph.store import load_graph
from stl_pipeline.guards import FailedCheckError
from stl_pipeline.images.decode import ImageLimits, decode
from stl_pipeline.images.download import CACHED, DOWNLOADED, FAILED, Downloader
from stl_pipeline.images.policy import DownloadPolicy
from stl_pipeline.images.verify import verify_image
from stl_pipeline.ingest.parse import IngestError
from stl_pipeline.ingest.tables import ingest
from stl_pipeline.lineage import MismatchedInputError
from stl_pipeline.models.splits import QUERY_ASSETS, split_queries
from stl_pipeline.personalized.files import HM_FILES
from stl_pipeline.personalized.ingest import ingest_hm, read_hm, split_windows
from stl_pipeline.settings import HM_VARIABLES, load_settings
from stl_pipeline.storage import UMASK, CorruptArtifactError, atomic_write_bytes, read_artifact
from stl_pipeline.vectors import Embeddings
from stl_pipeline_tests.conftest import SMALL
from stl_pipeline_tests.http_server import ImageServer
from stl_pipeline_tests.images import animated, encoded, exif_rotated, grey16, saved, see_through
from stl_pipeline_tests.lineage import generated_environ

ROOT = Path(__file__).parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _instance_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "instance" / "dagster.yaml", home / "dagster.yaml")
    return home


def test_a_killed_run_gives_its_gpu_slot_back_to_the_next_run(tmp_path: Path) -> None:
    """kill -9 of a run holding the ``gpu`` slot: the next run ends it and frees the slot,
    instead of waiting for it for ever."""
    home, holding = _instance_home(tmp_path), tmp_path / "holding"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT), "STL_TEST_HOLDING": str(holding)}
    materialize = [DAGSTER, "asset", "materialize", "-m", "stl_pipeline_tests.holder", "--select", "hold"]
    killed = subprocess.Popen(
        materialize,
        env={**env, "STL_TEST_HOLD_SECONDS": "600"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not holding.exists():
        assert killed.poll() is None and time.monotonic() < deadline, "the step never started"
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (dead,) = instance.get_runs()
        assert dead.status == dg.DagsterRunStatus.STARTED  # what the kill leaves behind
        assert instance.event_log_storage.get_concurrency_run_ids() == {dead.run_id}

    again = subprocess.run(materialize, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"ended run {dead.run_id} and freed its pool slots" in again.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_run_ids()


TABLES = ["stl_pairs", "stl_products"]
ASSETS = [*dg.load_assets_from_modules(MODULES), *dg.load_asset_checks_from_modules(MODULES)]


def materialize(
    environ: dict, selection: str | list[str] | dg.AssetSelection, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    resources = build_definitions(load_settings(environ)).resources
    return dg.materialize(
        ASSETS,
        selection=selection,
        resources=resources,
        instance=instance,
        tags=ALL_PARTITIONS,
        raise_on_error=False,
    )


def failed_checks(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {e.check_name: e.description or "" for e in result.get_asset_check_evaluations() if not e.passed}


@pytest.fixture(scope="module")
def graphed(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> tuple[dict, dg.DagsterInstance]:
    """The small dataset materialized through stl_graph and the queries (what training reads),
    on an instance that keeps its history."""
    root = tmp_path_factory.mktemp("graphed")
    environ = generated_environ(root, small_dataset)
    instance = dg.DagsterInstance.ephemeral()
    queries = dg.AssetSelection.assets(*QUERY_ASSETS.values(), "ctl_scene_context")
    assert materialize(environ, dg.AssetSelection.assets("stl_graph").upstream() | queries, instance).success
    return environ, instance


def test_a_graph_is_not_built_from_embeddings_of_other_tables(
    graphed: tuple[dict, dg.DagsterInstance], tmp_path: Path
) -> None:
    """New raw files ingested, images and embeddings not: stl_graph refuses, the good graph stays."""
    environ, instance = graphed
    other = tmp_path / "other"
    generate_dataset(dataclasses.replace(SMALL, seed=8), other)
    graph_file = Path(environ["STL_DATA_DIR"]) / "graph" / "stl_graph.safetensors"
    before = graph_file.read_bytes()
    switched = generated_environ(tmp_path, other) | {"STL_DATA_DIR": environ["STL_DATA_DIR"]}
    assert materialize(switched, TABLES, instance).success
    rebuilt = materialize(switched, "stl_graph", instance)
    assert not rebuilt.success
    (failure,) = [e for e in rebuilt.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.cause.message
    assert "product_embeddings was made from other tables than the current stl_products" in message
    assert "Rematerialize product_images and product_embeddings" in message
    assert graph_file.read_bytes() == before
    # Back to the files the embeddings were made from: the graph builds again.
    assert materialize(environ, TABLES, instance).success
    assert materialize(environ, "stl_graph", instance).success


def test_empty_or_shrunken_tables_fail_their_blocking_checks(tmp_path: Path, small_dataset: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(small_dataset, raw, ignore=shutil.ignore_patterns("images"))
    environ = generated_environ(tmp_path, small_dataset) | {"STL_PAIRS_PATH": str(raw / "fashion.json")}
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(environ, TABLES, instance).success

    lines = (small_dataset / "fashion.json").read_text().splitlines()
    (raw / "fashion.json").write_text("\n".join(lines[: len(lines) // 5]) + "\n")
    shrunk = materialize(environ, TABLES, instance)
    assert not shrunk.success
    assert "pairs fell from" in failed_checks(shrunk)["stl_pairs_not_shrunk"]

    (raw / "fashion.json").write_text("")
    empty = materialize(environ, TABLES, instance)
    assert not empty.success
    assert "pairs is 0" in failed_checks(empty)["stl_pairs_not_shrunk"]


def test_training_refuses_a_graph_or_queries_made_from_other_pairs(
    graphed: tuple[dict, dg.DagsterInstance],
) -> None:
    environ, _ = graphed
    data = Path(environ["STL_DATA_DIR"])
    graph, graph.info = load_graph(data / "graph" / "stl_graph.safetensors")
    pairs = pd.read_parquet(data / "tables" / "stl_pairs.parquet")
    queries = {task: read_embeddings(data, name) for task, name in QUERY_ASSETS.items()}
    assert split_queries(graph, pairs, queries, "train")[0]["stl"].x.shape[0] > 0

    moved = pairs.copy()
    moved.loc[moved.index[0], "split"] = "test" if moved["split"].iloc[0] != "test" else "train"
    with pytest.raises(MismatchedInputError, match=r"stl_graph was built from other pairs.*Rematerialize"):
        split_queries(graph, moved, queries, "train")
    stale = Embeddings([f"{i:032x}" for i in range(len(pairs))], queries["ctl"].vectors[: len(pairs)])
    with pytest.raises(MismatchedInputError, match="ctl_scene_embeddings was made from other tables"):
        split_queries(graph, pairs, queries | {"ctl": stale}, "val")

    ids = list(pairs["pair_id"])
    tokens = np.eye(len(ids) + 1, 8, dtype=np.float32)
    context = Embeddings([f"{p}/0" for p in ids] + [f"{ids[0]}/1"], tokens)
    ctl = split_queries(graph, pairs, queries, "train", context)[0]["ctl"]
    assert ctl.context.shape == (len(ctl), 2, 8)  # padded to the most tokens a pair has
    foreign = Embeddings([*context.keys[:-1], "not-a-pair/0"], tokens)
    with pytest.raises(MismatchedInputError, match="ctl_scene_context holds tokens of 1 pairs"):
        split_queries(graph, pairs, queries, "train", foreign)


def _file_mirror(tmp_path: Path, count: int = 3) -> tuple[Path, list[str]]:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    names = [signature(3, "fault", i) for i in range(count)]
    for i, name in enumerate(names):
        (mirror / f"{name}.jpg").write_bytes(encoded(colour=(i * 40, 90, 10), size=(96, 96)))
    return mirror, names


def test_a_truncated_cached_image_is_fetched_again(tmp_path: Path) -> None:
    mirror, names = _file_mirror(tmp_path)
    downloader = Downloader(DownloadPolicy(mirror.as_uri() + "/{signature}.jpg"), tmp_path / "store")
    first = downloader.run(names)
    stored = Path(first.loc[0, "path"])
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])  # its header survives

    second = downloader.run(names)
    assert list(second["status"]) == [DOWNLOADED, CACHED, CACHED]
    assert second.loc[0, "sha256"] == first.loc[0, "sha256"]
    verify_image(stored.read_bytes(), ImageLimits(10**6))


def _special_files(mirror: Path) -> dict[str, str]:
    """Mirror entries that are not image files, each with the error it must end in."""
    names = [signature(4, "special", i) for i in range(4)]
    os.mkfifo(mirror / f"{names[0]}.jpg")
    (mirror / f"{names[1]}.jpg").symlink_to("/dev/urandom")
    (mirror / f"{names[2]}.jpg").symlink_to("/etc/passwd")
    with open(mirror / f"{names[3]}.jpg", "wb") as sparse:  # 64 GB of holes: cheap to make
        sparse.truncate(64 << 30)
    return {
        names[0]: "is not a regular file",
        names[1]: "is not a regular file",
        names[2]: "not an image: no JPEG, PNG, GIF or WebP signature",
        names[3]: "over the cap",
    }


def test_file_sources_read_regular_files_only_and_within_the_caps(tmp_path: Path) -> None:
    mirror, (good,) = _file_mirror(tmp_path, count=1)
    expected = _special_files(mirror)
    policy = DownloadPolicy(mirror.as_uri() + "/{signature}.jpg", concurrency=4, max_bytes=1 << 20)
    start = time.monotonic()
    manifest = Downloader(policy, tmp_path / "store").run([good, *expected]).set_index("signature")
    assert time.monotonic() - start < 30  # no FIFO hangs, no endless device read
    for name, error in expected.items():
        assert manifest.loc[name, "status"] == FAILED and error in manifest.loc[name, "error"]
    assert "root:" not in " ".join(manifest["error"].dropna())  # never the file's contents
    assert manifest.loc[good, "status"] == DOWNLOADED


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("file:///dev/zero?{signature}", "file template puts {signature} in its path"),
        ("file:///etc/passwd#{signature}", "file template puts {signature} in its path"),
        ("javascript:alert(1)//{signature}", "scheme must be one of"),
        ("gopher://h/{signature}", "scheme must be one of"),
    ],
)
def test_hostile_templates_fail_when_the_definitions_load(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_settings({"STL_IMAGE_URL_TEMPLATE": template})


HOSTILE_PAIR_LINES = {
    "nested": ("[" * 30_000 + "]" * 30_000, "nested too deeply"),
    "long number": ('{"product": "x", "scene": "y", "bbox": [0.1, 0.2, 0.3, ' + "9" * 5000 + "]}", "digits"),
    "long line": ('{"product": "' + "a" * 100_000 + '"}', "over 65,536 characters"),
    "not utf-8": ('{"product": "\udcff"}', "missing key"),
}


@pytest.mark.parametrize("case", HOSTILE_PAIR_LINES)
def test_one_pathological_pairs_line_is_quarantined_by_line(
    case: str, small_dataset: Path, tmp_path: Path
) -> None:
    hostile, reason = HOSTILE_PAIR_LINES[case]
    lines = (small_dataset / "fashion.json").read_text().splitlines()
    pairs_path = tmp_path / "fashion.json"
    text = "\n".join([*lines[:3], hostile, *lines[3:]]) + "\n"
    pairs_path.write_bytes(text.encode("utf-8", "surrogateescape"))
    result = ingest(pairs_path, small_dataset / "fashion-cat.json")
    clean = ingest(small_dataset / "fashion.json", small_dataset / "fashion-cat.json")
    assert len(result.pairs) == len(clean.pairs)
    (row,) = result.quarantine.itertuples()
    assert row.line == 4 and reason in row.reason and len(row.raw) <= 300


def test_a_byte_order_mark_is_not_part_of_the_first_record(small_dataset: Path, tmp_path: Path) -> None:
    for name in ("fashion.json", "fashion-cat.json"):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + (small_dataset / name).read_bytes())
    result = ingest(tmp_path / "fashion.json", tmp_path / "fashion-cat.json")
    clean = ingest(small_dataset / "fashion.json", small_dataset / "fashion-cat.json")
    assert result.quarantine.empty and len(result.pairs) == len(clean.pairs)


@pytest.mark.parametrize(
    ("value", "reason"),
    [("[" * 200_000 + "]" * 200_000, "nested too deeply"), ("9" * 5000, "digits"), ('{"a": [1, "]"]}', "")],
)
def test_one_pathological_category_is_quarantined_by_product(
    value: str, reason: str, small_dataset: Path, tmp_path: Path
) -> None:
    text = (small_dataset / "fashion-cat.json").read_text()
    hostile = f'{{"{"f" * 32}": {value}, ' + text.lstrip()[1:]
    (tmp_path / "fashion-cat.json").write_text(hostile)
    result = ingest(small_dataset / "fashion.json", tmp_path / "fashion-cat.json")
    clean = ingest(small_dataset / "fashion.json", small_dataset / "fashion-cat.json")
    assert len(result.products) == len(clean.products) and len(result.pairs) == len(clean.pairs)
    (row,) = result.quarantine.itertuples()
    assert row.key == "f" * 32 and reason in row.reason


def test_a_product_listed_twice_in_the_categories_is_quarantined_both_times(
    small_dataset: Path, tmp_path: Path
) -> None:
    """Two entries for one product id (two categories): which one a JSON reader keeps is
    arbitrary, so neither is; not two product rows and two graph nodes."""
    text = (small_dataset / "fashion-cat.json").read_text()
    categories = json.loads(text)
    product = json.loads((small_dataset / "fashion.json").read_text().splitlines()[0])["product"]
    first = categories[product]
    other = next(c for c in categories.values() if c != first)
    (tmp_path / "fashion-cat.json").write_text(text.rstrip()[:-1] + f', "{product}": "{other}"}}')
    result = ingest(small_dataset / "fashion.json", tmp_path / "fashion-cat.json")
    clean = ingest(small_dataset / "fashion.json", small_dataset / "fashion-cat.json")
    assert result.products["product"].is_unique and product not in set(result.products["product"])
    assert len(result.products) == len(clean.products) - 1
    rejected = result.quarantine
    twice = rejected[(rejected["key"] == product) & (rejected["file"] == str(tmp_path / "fashion-cat.json"))]
    assert len(twice) == 2 and twice["reason"].str.contains("product id appears 2 times").all()
    assert other in twice["reason"].iloc[0] and first in twice["reason"].iloc[0]
    assert product not in set(result.pairs["product"])  # its pairs are quarantined, by line
    assert (
        result.quarantine["reason"] == f"product {product} has no valid category in fashion-cat.json"
    ).any()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _artifacts(data: Path, tmp_path: Path) -> dict[str, tuple[Path, object]]:
    """One file of each kind the IO managers write, with its reader."""
    from stl_pipeline.checkpoints import load_checkpoint, save_checkpoint
    from stl_pipeline.serving.index import build_index, load_index, save_index

    products = read_embeddings(data, "product_embeddings")
    index_path, model_path = tmp_path / "product_index.safetensors", tmp_path / "gat_model.pt"
    save_index(build_index(products.vectors, products.keys), index_path)
    save_checkpoint(model_path, {"weights": torch.randn(64, 64)})
    return {
        "table": (data / "tables" / "stl_pairs.parquet", pd.read_parquet),
        "embeddings": (data / "embeddings" / "product_embeddings" / "0.parquet", Embeddings.load),
        "graph": (data / "graph" / "stl_graph.safetensors", load_graph),
        "index": (index_path, load_index),
        "model": (model_path, load_checkpoint),
    }


def test_every_truncated_artifact_is_named_with_what_to_do(
    graphed: tuple[dict, dg.DagsterInstance], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(graphed[0]["STL_DATA_DIR"], data)
    for kind, (path, reader) in _artifacts(data, tmp_path).items():
        reader(path)
        _truncate(path)
        damaged = re.escape(f"{path} is damaged or truncated")
        with pytest.raises(CorruptArtifactError, match=damaged) as caught:
            read_artifact(path, reader, f"rematerialize the {kind}")
        assert str(caught.value).endswith(f"rematerialize the {kind}"), kind


def test_stl_recommend_names_a_truncated_artifact_in_one_line(
    graphed: tuple[dict, dg.DagsterInstance], tmp_path: Path
) -> None:
    from stl_pipeline.champion.store import set_current, write_snapshot

    data = tmp_path / "data"
    shutil.copytree(graphed[0]["STL_DATA_DIR"], data)
    # A champion whose snapshot's graph was damaged on disk: what stl-recommend reads first.
    graph = {"graph.safetensors": data / "graph" / "stl_graph.safetensors"}
    folder = write_snapshot(data, "stl", "0123abcd", {"config": {}}, graph, {})
    set_current(
        data, "stl", {"method": "gat", "registered": "stl-gat", "version": "1", "mlflow_run_id": "0123abcd"}
    )
    _truncate(folder / "graph.safetensors")
    product = pd.read_parquet(data / "tables" / "stl_products.parquet")["product"].iloc[0]
    env = {**os.environ, "STL_DATA_DIR": str(data)}
    answer = subprocess.run(
        [str(Path(sys.executable).with_name("stl-recommend")), "product", product],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 2 and answer.stdout == ""
    (line,) = answer.stderr.strip().splitlines()
    assert "graph.safetensors is damaged or truncated" in line and "promote a model again" in line


def test_a_truncated_resume_checkpoint_starts_training_afresh(tmp_path: Path) -> None:
    from stl_pipeline.checkpoints import LAST
    from stl_pipeline.training.loop import train
    from stl_pipeline_tests.test_training import CONFIG, setup

    straight = train(*setup(), CONFIG, tmp_path / "straight")
    _truncate(tmp_path / "straight" / LAST)
    with pytest.warns(UserWarning, match="last.pt is damaged or truncated.*training starts afresh"):
        again = train(*setup(), CONFIG, tmp_path / "straight")
    assert again.history == straight.history and again.best_epoch == straight.best_epoch


def test_a_truncated_embedding_cache_part_is_removed_and_recomputed(tmp_path: Path) -> None:
    from stl_pipeline.features.backbone import load_backbone
    from stl_pipeline.features.embed import EmbeddingCache, embed_items
    from stl_pipeline.features.spec import BackboneSpec
    from stl_pipeline_tests.test_features import write_images

    backbone, cpu = load_backbone(BackboneSpec("resnet18", "none", image_size=32)), torch.device("cpu")
    items = write_images(tmp_path / "img", 6)
    cache = EmbeddingCache(tmp_path / "cache", backbone)
    first, _ = embed_items(items, backbone, cpu, batch_size=3, workers=0, cache=cache)
    damaged = sorted(cache.dir.glob("part-*.parquet"))[0]
    _truncate(damaged)
    with pytest.warns(UserWarning, match="removed damaged embedding cache part"):
        second, stats = embed_items(items, backbone, cpu, batch_size=3, workers=0, cache=cache)
    assert (stats.computed, stats.cached) == (3, 3)
    assert np.allclose(second.vectors, first.vectors, atol=1e-6)
    _, stats = embed_items(items, backbone, cpu, batch_size=3, workers=0, cache=cache)
    assert (stats.computed, stats.cached) == (0, 6)  # repaired for good


def test_an_unreachable_tracking_server_fails_in_seconds(tmp_path: Path) -> None:
    from stl_pipeline.tracking import Tracker, TrackingUnavailable

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=f"127.0.0.1:{port} does not answer.*make mlflow"):
        Tracker(f"http://127.0.0.1:{port}", "stl-pipeline").check_reachable()
    assert time.monotonic() - start < 10
    with ImageServer() as server:  # any HTTP answer, here a 404, is a server that is up
        Tracker(server.url(""), "stl-pipeline").check_reachable()


def test_mlflow_runs_of_ended_orchestrator_runs_are_marked_killed(tmp_path: Path) -> None:
    from mlflow.entities import RunStatus

    from stl_pipeline.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "stl-pipeline", str(tmp_path / "artifacts"))
    experiment = tracker.experiment_id()
    runs = {
        tag: tracker.client.create_run(experiment, tags={"dagster_run_id": tag} if tag else {}).info.run_id
        for tag in ("dead", "alive", "")
    }
    assert tracker.end_abandoned(lambda run_id: run_id == "dead") == [runs["dead"]]
    status = {tag: tracker.client.get_run(run_id).info.status for tag, run_id in runs.items()}
    assert status == {"dead": RunStatus.to_string(RunStatus.KILLED), "alive": "RUNNING", "": "RUNNING"}


def test_atomically_written_files_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    path = tmp_path / "gallery.html"
    atomic_write_bytes(path, b"<html></html>")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK
    assert UMASK & 0o044 or path.stat().st_mode & 0o044  # readable by others where the umask allows


HOSTILE_ENVIRONMENT = [
    ({"STL_DEVICE": "gpu0; rm -rf /"}, "STL_DEVICE: unknown device"),
    ({"STL_DEVICE": "cuda:-1"}, "STL_DEVICE: unknown device"),
    ({"STL_PRECISION": "int8"}, "STL_PRECISION: unknown precision 'int8'"),
    ({"STL_BACKBONE_IMAGE_SIZE": "100000"}, "STL_BACKBONE_IMAGE_SIZE='100000'"),
    ({"STL_BACKBONE_IMAGE_SIZE": "1e3"}, "STL_BACKBONE_IMAGE_SIZE='1e3'"),
    ({"STL_BACKBONE_IMAGE_SIZE": "9" * 5000}, "from 32 to 1024"),
    ({"STL_RETRAIN_CRON": "@reboot"}, "STL_RETRAIN_CRON"),
    ({"STL_IMAGE_URL_TEMPLATE": "http://h/{signature.__class__}"}, "must contain {signature}"),
    ({"STL_IMAGE_URL_TEMPLATE": "http://h/{0}{signature}"}, "must contain {signature}"),
    ({"STL_IMAGE_URL_TEMPLATE": "file:///dev/zero?{signature}"}, "a file template puts {signature}"),
    ({"STL_PAIRS_PATH": "/etc/passwd"}, "set both STL_PAIRS_PATH and STL_CATEGORIES_PATH"),
]


@pytest.mark.parametrize(("environ", "message"), HOSTILE_ENVIRONMENT)
def test_hostile_environment_fails_when_the_definitions_load(environ: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_settings(environ)


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(ValueError, match=r"STL_DATA_DIR=.* is a file"):
        load_settings({"STL_DATA_DIR": str(tmp_path / "data")})


EMBED_CHILD = """
import sys, torch
from stl_pipeline.features.backbone import load_backbone
from stl_pipeline.features.embed import EmbeddingCache, embed_items
from stl_pipeline.features.spec import BackboneSpec
from stl_pipeline_tests.test_features import write_images
from pathlib import Path
folder, cache_root = Path(sys.argv[1]), Path(sys.argv[2])
backbone = load_backbone(BackboneSpec("resnet18", "none", image_size=32))
items = write_images(folder, 64)
cache = EmbeddingCache(cache_root, backbone)
embed_items(items, backbone, torch.device("cpu"), batch_size=4, workers=0, cache=cache,
            progress=lambda done, total: __import__("time").sleep(0.2))
"""


def test_a_killed_embedding_run_resumes_from_its_cache_with_the_same_vectors(tmp_path: Path) -> None:
    from stl_pipeline.features.backbone import load_backbone
    from stl_pipeline.features.embed import EmbeddingCache, embed_items
    from stl_pipeline.features.spec import BackboneSpec
    from stl_pipeline_tests.test_features import write_images

    cache_root, folder = tmp_path / "cache", tmp_path / "img"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", EMBED_CHILD, str(folder), str(cache_root)], env=env)
    deadline = time.monotonic() + 120
    while len(list(cache_root.glob("*/part-*.parquet"))) < 3:
        assert child.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()

    backbone, cpu = load_backbone(BackboneSpec("resnet18", "none", image_size=32)), torch.device("cpu")
    items = write_images(folder, 64)
    resumed, stats = embed_items(
        items, backbone, cpu, batch_size=4, workers=0, cache=EmbeddingCache(cache_root, backbone)
    )
    assert 12 <= stats.cached < 64 and stats.computed + stats.cached == 64
    straight, _ = embed_items(items, backbone, cpu, batch_size=4, workers=0)
    assert resumed.keys == straight.keys and np.allclose(resumed.vectors, straight.vectors, atol=1e-6)


def test_concurrent_materializations_leave_tables_and_images_intact(
    tmp_path: Path, small_dataset: Path
) -> None:
    home = _instance_home(tmp_path)
    dg.DagsterInstance.from_config(str(home)).dispose()  # its storage exists, as under `make ui`
    env = {**os.environ, **generated_environ(tmp_path, small_dataset), "DAGSTER_HOME": str(home)}
    command = [
        DAGSTER,
        "asset",
        "materialize",
        "-m",
        "stl_pipeline.definitions",
        "--select",
        "stl_pairs,stl_products,product_images,scene_images",
    ]
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    runs = [subprocess.Popen(command, env=env, stdout=f.open("w"), stderr=subprocess.STDOUT) for f in logs]
    codes = [run.wait(timeout=300) for run in runs]
    assert codes == [0, 0], "".join(log.read_text()[-2000:] for log in logs)

    data = Path(env["STL_DATA_DIR"])
    for table in ("product_images", "scene_images"):
        manifest = pd.read_parquet(data / "tables" / f"{table}.parquet")
        assert set(manifest["status"]) <= {DOWNLOADED, CACHED}
        for path in manifest["path"]:
            verify_image(Path(path).read_bytes(), ImageLimits(10**6))
    assert len(pd.read_parquet(data / "tables" / "stl_products.parquet")) == SMALL.products
    assert not list(data.rglob("*.part"))


def test_a_model_trained_on_another_graph_is_not_evaluated_or_served(tmp_path: Path) -> None:
    from stl_pipeline.checkpoints import BEST, load_checkpoint
    from stl_pipeline.evaluation.report import vector_methods
    from stl_pipeline.lineage import PAIRS_DIGEST
    from stl_pipeline.models.record import model_record
    from stl_pipeline.training.loop import train
    from stl_pipeline_tests.test_training import CONFIG, setup

    model, graph, train_q, val_q = setup()
    graph.info = {PAIRS_DIGEST: "built-from-these-pairs"}
    train(model, graph, train_q, val_q, CONFIG, tmp_path)
    info = {"source": "masked", "grid": "2", "model": "m", "weights": "w"}
    context = Embeddings(["p/0"], np.ones((1, 4), dtype=np.float32) / 2, info)
    best = load_checkpoint(tmp_path / BEST)
    record = model_record(best, graph, train_q["stl"].x.shape[1], "run", context)
    assert set(vector_methods(graph, 4, {"gat": record}, context)) == {"frozen_knn", "gat"}
    regridded = Embeddings(context.keys, context.vectors, info | {"grid": "3"})
    with pytest.raises(MismatchedInputError, match="grid '2' in training, '3' now"):
        vector_methods(graph, 4, {"gat": record}, regridded)
    graph.info = {PAIRS_DIGEST: "rebuilt-from-other-pairs"}
    with pytest.raises(MismatchedInputError, match="gat_model was trained on another stl_graph"):
        vector_methods(graph, 4, {"gat": record}, context)


WRITE_CHILD = """
import sys, time
from pathlib import Path
from stl_pipeline.graph.store import load_graph, save_graph
graph, info = load_graph(Path(sys.argv[1]))
original = save_graph.__globals__["atomic_write_with"]
def slow(path, write):
    def stalled(tmp):
        write(tmp)
        print("written", flush=True)
        time.sleep(600)
    original(path, stalled)
save_graph.__globals__["atomic_write_with"] = slow
save_graph(graph, Path(sys.argv[1]), info={"rebuilt": True})
"""


def test_a_graph_build_killed_while_writing_leaves_the_old_graph_and_no_part(
    graphed: tuple[dict, dg.DagsterInstance], tmp_path: Path
) -> None:
    """Every artifact is written to a part file and renamed into place: a kill at the worst
    moment, the new file whole on disk but not yet renamed, leaves the old one."""
    from stl_pipeline.storage import remove_stale_parts

    data = tmp_path / "data"
    shutil.copytree(graphed[0]["STL_DATA_DIR"], data)
    path = data / "graph" / "stl_graph.safetensors"
    before = path.read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", WRITE_CHILD, str(path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "written"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert path.read_bytes() == before and len(list(path.parent.glob("*.part"))) == 1
    assert remove_stale_parts(data) == 1 and not list(path.parent.glob("*.part"))


FULL_DISK_CHILD = """
import json, shutil, sys
from pathlib import Path
import dagster as dg
from mlflow import MlflowClient
from stl_pipeline_tests.test_faults import materialize
source, disk, environ = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
shutil.copytree(source, disk / "data")
# Ballast leaves 4 MiB: room for MLflow's store and its first rows, not for a checkpoint.
with open(disk / "ballast", "wb") as ballast:
    while (free := shutil.disk_usage(disk).free - 4 * 2**20) > 0:
        ballast.write(bytes(min(free, 1 << 20)))
result = materialize(environ, "gat_model", dg.DagsterInstance.ephemeral())
failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.cause
client = MlflowClient(environ["MLFLOW_TRACKING_URI"])
runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
print(json.dumps({
    "success": result.success,
    "message": failure.message,
    "runs": [run.info.status for run in runs],
    "parts": [str(p) for p in (disk / "data").rglob("*.part")],
}))
"""


def test_a_full_disk_names_the_file_and_fails_the_mlflow_run_at_once(
    graphed: tuple[dict, dg.DagsterInstance], tmp_path: Path
) -> None:
    """Training on a data dir whose disk fills: the error names the checkpoint, the space
    left and what to free (not torch's "unexpected pos"), and the MLflow run ends FAILED."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs a mount namespace (unshare -rm) for a small tmpfs to fill")
    source = Path(graphed[0]["STL_DATA_DIR"])
    size = sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) + (64 << 20)
    disk = tmp_path / "disk"
    disk.mkdir()
    data = disk / "data"
    environ = graphed[0] | {
        "STL_DATA_DIR": str(data),
        "MLFLOW_TRACKING_URI": f"sqlite:///{data}/mlflow/mlflow.db",
    }
    mount = f"mount -t tmpfs -o size={size} tmpfs {disk}"
    child = f'{mount} && exec "$0" -c "$1" "$2" "$3" "$4"'
    ran = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            child,
            sys.executable,
            FULL_DISK_CHILD,
            str(source),
            str(disk),
            json.dumps(environ),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    outcome = json.loads(ran.stdout.strip().splitlines()[-1])
    assert not outcome["success"]
    message = outcome["message"]
    assert re.search(
        rf"cannot write {re.escape(str(data))}/checkpoints/gat_model/\w+/\w+\.pt: the disk", message
    ), message
    assert "free of" in message and "mlflow gc" in message and "unexpected pos" not in message
    assert outcome["runs"] == ["FAILED"] and outcome["parts"] == []


@pytest.mark.parametrize("k", ["0", "1001", "1000000000", "9" * 5000, "-3", "ten"])
def test_stl_recommend_refuses_a_hostile_list_length_before_loading_anything(
    k: str, capsys: pytest.CaptureFixture
) -> None:
    from stl_pipeline.serving.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["product", "0" * 32, "-k", k])
    assert exited.value.code == 2
    assert "use a whole number from 1 to 1000" in capsys.readouterr().err


def test_one_partition_runs_alone_and_a_partition_that_shrank_fails(
    graphed: tuple[dict, dg.DagsterInstance],
) -> None:
    """A backfill's run computes and checks its own partition; that partition's count is
    compared with its own past, not with the whole asset's."""
    environ, instance = graphed
    resources = build_definitions(load_settings(environ)).resources
    selection = dg.AssetSelection.assets("product_embeddings")  # with its checks

    def run_partition(partition: str) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            ASSETS,
            selection=selection,
            resources=resources,
            instance=instance,
            partition_key=partition,
            raise_on_error=False,
        )

    alone = run_partition("1")
    assert alone.success
    (complete,) = [e for e in alone.get_asset_check_evaluations() if e.check_name.endswith("_complete")]
    products = read_embeddings(Path(environ["STL_DATA_DIR"]), "product_embeddings")
    in_one = sum(key.startswith("1") for key in products.keys)
    assert complete.metadata["expected"].value == in_one < len(products)

    instance.report_runless_asset_event(
        dg.AssetMaterialization("product_embeddings", partition="0", metadata={"count": 1000})
    )
    shrunk = run_partition("0")
    assert not shrunk.success
    assert "count fell from 1000 to" in failed_checks(shrunk)["product_embeddings_not_shrunk"]
    assert "in partition 0" in failed_checks(shrunk)["product_embeddings_not_shrunk"]


# Inputs real users send: phone photos, 16-bit and transparent PNGs, animations, slivers.


def _photo(size: tuple[int, int] = (96, 128)) -> Image.Image:
    """An upright picture whose top and bottom differ, so a quarter turn shows."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 1] = np.linspace(0, 120, size[0], dtype=np.uint8)  # a green ramp, left to right
    pixels[: size[1] // 2, :, 0] = 220  # red top
    pixels[size[1] // 2 :, :, 2] = 220  # blue bottom
    return Image.fromarray(pixels)


def _as_shown(tmp_path: Path) -> dict[str, tuple[bytes, Image.Image]]:
    """Each kind of file with the picture a browser shows for it."""
    photo = _photo()
    return {
        "phone photo": (exif_rotated(photo), photo),
        "16-bit grey": grey16(photo),
        "transparent": see_through(photo),
        "animated": animated(),
    }


def test_downloads_and_embeddings_see_images_as_a_browser_shows_them(tmp_path: Path) -> None:
    """EXIF orientation applied, 16 bits scaled to 8, transparency over white, the first frame:
    the manifest's size is the shown one, and a box crops the pixels it was drawn on."""
    from stl_pipeline.features.transform import Letterbox, decode_batch

    cases = _as_shown(tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    names = {case: signature(5, "shown", i) for i, case in enumerate(cases)}
    for case, (data, _) in cases.items():
        (mirror / f"{names[case]}.jpg").write_bytes(data)  # a PNG named .jpg, as mirrors do
    manifest = Downloader(DownloadPolicy(mirror.as_uri() + "/{signature}.jpg"), tmp_path / "store").run(
        list(names.values())
    )
    rows = manifest.set_index("signature")
    letterbox = Letterbox(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for case, (_, shown) in cases.items():
        row = rows.loc[names[case]]
        assert row["status"] == DOWNLOADED, (case, row["error"])
        assert (row["width"], row["height"]) == shown.size, case
        got = np.asarray(decode(row["path"]), dtype=np.int16)
        tolerance = 6 if case == "phone photo" else 0  # JPEG's loss only
        assert got.shape == np.asarray(shown).shape and np.abs(got - np.asarray(shown)).mean() <= tolerance, (
            case
        )
        top = (0, 0, shown.width, shown.height // 2)
        embedded = decode_batch([(case, row["path"], top, None)], letterbox)[0].astype(np.int16)
        assert np.abs(embedded - letterbox(shown, top)).mean() <= tolerance, case


UNUSABLE = {
    "1x1": (saved(Image.new("RGB", (1, 1), (10, 20, 30))), "under 32 pixels on a side"),
    "20000x2 strip": (saved(Image.new("RGB", (20_000, 2), (10, 20, 30))), "under 32 pixels on a side"),
    "1600x40 banner": (saved(Image.new("RGB", (1600, 40), (10, 20, 30))), "40.0 times longer than wide"),
    "fully transparent": (
        saved(Image.new("RGBA", (64, 64), (0, 0, 0, 0))),
        "every pixel is fully transparent",
    ),
}


def test_images_that_show_no_product_are_refused_with_the_reason(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    names = {case: signature(6, "unusable", i) for i, case in enumerate(UNUSABLE)}
    for case, (data, _) in UNUSABLE.items():
        (mirror / f"{names[case]}.png").write_bytes(data)
    policy = DownloadPolicy(mirror.as_uri() + "/{signature}.png")
    rows = Downloader(policy, tmp_path / "store").run(list(names.values())).set_index("signature")
    for case, (_, reason) in UNUSABLE.items():
        assert rows.loc[names[case], "status"] == FAILED and reason in rows.loc[names[case], "error"], case
    assert not list((tmp_path / "store").rglob("*.png"))
    # The limits are the image source's settings: a looser one takes the banner.
    loose = Downloader(dataclasses.replace(policy, max_aspect=50), tmp_path / "loose")
    assert loose.run([names["1600x40 banner"]])["status"].tolist() == [DOWNLOADED]


def test_stl_recommend_answers_a_photo_as_it_is_shown(trained, tmp_path: Path) -> None:
    """The same picture as a phone photo, a 16-bit or a transparent PNG gets the answer its
    shown pixels get; a sliver or an empty picture is refused with the reason."""
    from stl_pipeline.generate import unseen_scenes
    from stl_pipeline.serving.cold_start import ColdStartError
    from stl_pipeline.serving.loading import load

    cold = load(trained.settings)
    (pair, *_) = unseen_scenes(trained.config, 1, tmp_path / "unseen")
    photo = decode(tmp_path / "unseen" / f"{pair['scene']}.jpg")
    files = {
        "phone photo": (exif_rotated(photo, "PNG"), photo),  # lossless: answers must be equal
        "16-bit grey": grey16(photo),
        "transparent": see_through(photo),
    }
    for case, (data, shown) in files.items():
        (tmp_path / f"{case}.png").write_bytes(data)
        shown.save(tmp_path / f"{case} shown.png")
        answer = cold.scene(tmp_path / f"{case}.png", tuple(pair["bbox"]), k=10)
        expected = cold.scene(tmp_path / f"{case} shown.png", tuple(pair["bbox"]), k=10)
        assert answer == dataclasses.replace(expected, image=answer.image), case
    for data, reason in UNUSABLE.values():
        (tmp_path / "unusable.png").write_bytes(data)
        with pytest.raises(ColdStartError, match=re.escape(reason)):
            cold.scene(tmp_path / "unusable.png")


# H&M files as spreadsheets and exports write them.


def _hm_copy(
    source: Path, folder: Path, edit: dict[str, Callable[[pd.DataFrame], pd.DataFrame]]
) -> list[Path]:
    """The files of ``source`` in ``folder``, each named in ``edit`` rewritten by it."""
    folder.mkdir()
    for name in HM_FILES:
        frame = pd.read_csv(source / name, dtype=str, keep_default_na=False)
        edit.get(name, lambda f: f)(frame).to_csv(folder / name, index=False)
    return [folder / name for name in HM_FILES]


def test_hm_files_with_a_byte_order_mark_are_read_as_without(hm_small: Path, tmp_path: Path) -> None:
    for name in HM_FILES:
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + (hm_small / name).read_bytes())
    marked = ingest_hm(*(tmp_path / name for name in HM_FILES))
    clean = ingest_hm(*(hm_small / name for name in HM_FILES))
    assert marked.quarantine.empty and marked.transactions.equals(clean.transactions)


def _day_first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(t_dat=pd.to_datetime(frame["t_dat"]).dt.strftime("%d/%m/%Y"))


def _with_time(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(t_dat=frame["t_dat"] + " 10:30:00")


def _no_leading_zero(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(article_id=frame["article_id"].str.lstrip("0"))


SPREADSHEET_EXPORTS = {
    "day-first dates": (
        {HM_FILES[0]: _day_first},
        HM_FILES[0],
        "is not a date in the format YYYY-MM-DD (as 2020-09-22)",
    ),
    "dates with a time": ({HM_FILES[0]: _with_time}, HM_FILES[0], "10:30:00' is not a date in the format"),
    "ids without the leading zero": (
        {HM_FILES[0]: _no_leading_zero, HM_FILES[1]: _no_leading_zero},
        HM_FILES[1],
        "not 10 digits with the leading zero",
    ),
}


@pytest.mark.parametrize("case", SPREADSHEET_EXPORTS)
def test_a_spreadsheet_export_is_refused_naming_its_first_bad_line(
    case: str, hm_small: Path, tmp_path: Path
) -> None:
    """The error names the first bad line and what it should look like, and the quarantine
    table it points to is written."""
    edit, refused, reason = SPREADSHEET_EXPORTS[case]
    paths = _hm_copy(hm_small, tmp_path / "export", edit)
    environ = {"STL_DATA_DIR": str(tmp_path / "data")} | dict(zip(HM_VARIABLES, map(str, paths), strict=True))
    result = materialize(
        environ, ["hm_transactions", "hm_articles", "hm_customers"], dg.DagsterInstance.ephemeral()
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.cause.message
    assert f"{tmp_path / 'export' / refused}:2: " in message and reason in message, message
    quarantine = pd.read_parquet(tmp_path / "data" / "quarantine" / "hm.parquet")
    rejected = quarantine[quarantine["file"] == str(tmp_path / "export" / refused)]
    assert (
        len(rejected) == len(pd.read_csv(tmp_path / "export" / refused))
        and rejected["reason"].str.contains(reason, regex=False).all()
    )
    # With every line allowed to fail, the refusal still names the first one.
    if refused == HM_FILES[0]:
        with pytest.raises(IngestError, match=re.escape(f"First rejected: {paths[0]}:2: t_dat")):
            split_windows(read_hm(*paths), paths[0])


def test_an_id_listed_twice_in_the_hm_files_is_quarantined_both_times(hm_small: Path, tmp_path: Path) -> None:
    def twice(frame: pd.DataFrame) -> pd.DataFrame:
        again = frame.iloc[[0]].assign(product_type_name="Umbrella")
        return pd.concat([frame, again], ignore_index=True)

    paths = _hm_copy(hm_small, tmp_path / "twice", {HM_FILES[1]: twice, HM_FILES[2]: twice})
    tables = ingest_hm(*paths)
    for path, column in ((paths[1], "article_id"), (paths[2], "customer_id")):
        first = pd.read_csv(path, dtype=str)[column].iloc[0]
        rows = tables.quarantine[
            (tables.quarantine["file"] == str(path)) & (tables.quarantine["key"] == first)
        ]
        last = len(pd.read_csv(path)) + 1
        assert list(rows["line"]) == [2, last]
        assert rows["reason"].str.contains(f"is on lines 2, {last} of {path.name}").all()
    assert first not in set(tables.customers["customer_id"])
    article = pd.read_csv(paths[1], dtype=str)["article_id"].iloc[0]
    assert article not in set(tables.articles["article_id"])
    assert article not in set(tables.transactions["article_id"].astype(str))


EMBEDDINGS = ["product_embeddings", "scene_embeddings", "stl_crop_embeddings", "ctl_scene_embeddings"]


def test_a_same_size_dataset_passes_not_shrunk_whatever_its_partitions_hold(
    tmp_path: Path, small_dataset: Path
) -> None:
    """New ids move items between the hash partitions (12 -> 2 in one here) while the totals
    stay: a run over every partition is compared as a whole, so no check fails."""
    instance = dg.DagsterInstance.ephemeral()
    selection = dg.AssetSelection.assets(*EMBEDDINGS).upstream()
    environ = generated_environ(tmp_path, small_dataset)
    assert materialize(environ, selection, instance).success
    other = tmp_path / "other"
    generate_dataset(dataclasses.replace(SMALL, seed=8), other)
    renewed = materialize(generated_environ(tmp_path, other), selection, instance)
    assert renewed.success and failed_checks(renewed) == {}
    counts = {
        partition: [
            int(r.asset_materialization.metadata["count"].value)
            for r in instance.fetch_materializations(
                dg.AssetRecordsFilter(dg.AssetKey("product_embeddings"), [partition]), limit=2
            ).records
        ]
        for partition in PARTITIONS
    }
    assert any(new < old / 2 for new, old in counts.values())  # the noise is there
    assert sum(new for new, _ in counts.values()) == sum(old for _, old in counts.values())


def test_a_failed_blocking_check_stops_later_runs_until_rematerialized_or_acknowledged(
    graphed: tuple[dict, dg.DagsterInstance], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(graphed[0]["STL_DATA_DIR"], data)
    environ = graphed[0] | {"STL_DATA_DIR": str(data)}
    home = _instance_home(tmp_path)
    instance = dg.DagsterInstance.from_config(str(home))
    resources = build_definitions(load_settings(environ)).resources

    def partition_0() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            ASSETS,
            selection=dg.AssetSelection.assets("product_embeddings"),
            resources=resources,
            instance=instance,
            partition_key="0",
            raise_on_error=False,
        )

    def shrink_partition_0() -> None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization("product_embeddings", partition="0", metadata={"count": 1000})
        )
        shrunk = partition_0()
        assert "count fell from 1000" in failed_checks(shrunk)["product_embeddings_not_shrunk"]

    def graph_run() -> dg.ExecuteInProcessResult:
        return materialize(environ, "stl_graph", instance)

    shrink_partition_0()
    blocked = graph_run()
    assert not blocked.success
    (failure,) = [e for e in blocked.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.cause.message
    assert "product_embeddings failed its blocking check product_embeddings_not_shrunk" in message
    assert "count fell from 1000" in message and "stl-acknowledge product_embeddings_not_shrunk" in message
    # A notebook's read, outside any run, is refused alike.
    with pytest.raises(FailedCheckError, match="blocking check product_embeddings_not_shrunk"):
        build_definitions(load_settings(environ)).load_asset_value("product_embeddings", instance=instance)

    # An operator who knows the output is right acknowledges the failure, with a reason.
    command = [str(Path(sys.executable).with_name("stl-acknowledge")), "product_embeddings_not_shrunk"]
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    ack = subprocess.run([*command, "--reason", "fewer images"], env=env, capture_output=True, text=True)
    assert ack.returncode == 0 and "later runs read product_embeddings again" in ack.stdout, ack.stderr
    again = subprocess.run([*command, "--reason", "twice"], env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "nothing to acknowledge" in again.stderr
    assert graph_run().success
    record = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("product_embeddings"), "product_embeddings_not_shrunk")
    )
    assert record.event.dagster_event.event_specific_data.metadata["reason"].value == "fewer images"

    # Or materializes the partition again, once the cause is fixed.
    shrink_partition_0()
    assert not graph_run().success
    assert partition_0().success
    assert graph_run().success
    instance.dispose()
