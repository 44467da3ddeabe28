import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stl_pipeline.generate import GeneratorConfig, generate_dataset

ROOT = Path(__file__).parents[1]
ASSETS = {
    "stl_tables (stl_pairs, stl_products)",
    "product_images",
    "scene_images",
    "product_embeddings",
    "scene_embeddings",
    "stl_crop_embeddings",
    "ctl_scene_embeddings",
    "ctl_scene_context",
    "stl_graph",
    "gat_model",
    "sage_model",
    "triplet_head",
    "two_tower",
    "retrieval_report",
    "embedding_report",
    "stl_champion",
    "product_index",
    "recommendations",
    "recommendation_gallery",
}


@pytest.mark.slow
def test_end_to_end_benchmark_runs_the_lineage_and_writes_its_json(tmp_path: Path) -> None:
    """The demo's dataset through the script docs/benchmarks.md's tables at size come from: every
    asset timed, memory sampled, every method scored. (Much smaller datasets leave too few
    validation queries for the quality gate to pass reliably, and the run stops there.)"""
    generate_dataset(GeneratorConfig(), tmp_path / "demo")
    out = tmp_path / "e2e.json"
    command = [
        sys.executable,
        "benchmarks/end_to_end.py",
        "--data",
        str(tmp_path / "demo"),
        "--device",
        "cpu",
    ]
    run = subprocess.run(
        [*command, "--workers", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["succeeded"] and set(result["assets"]) == ASSETS
    assert 0 < sum(result["assets"].values()) <= result["total_seconds"]
    assert result["peak_rss_mb"] > 100  # the run's own process tree, not the script's
    rows = {(r["split"], r["method"], r["task"], r["pool"]) for r in result["retrieval"]}
    methods = {"random", "popularity", "frozen_knn", "triplet_head", "two_tower", "gat", "sage", "oracle"}
    assert rows == {
        ("test", m, t, p) for m in methods for t in ("stl", "ctl") for p in ("same_category", "catalogue")
    }
    # The demo's release shape: CTL queries with other annotated garments and without.
    contexts = {r["context"] for r in result["retrieval"] if r["task"] == "ctl"}
    assert contexts == {"all", "annotated", "image_only"}
    assert set(result["training"]) == {"gat_model", "sage_model", "triplet_head", "two_tower"}
    assert "gat_model" in run.stdout and "Retrieval report" in run.stdout


def _end_to_end():
    spec = importlib.util.spec_from_file_location("end_to_end", ROOT / "benchmarks" / "end_to_end.py")
    assert spec is not None and spec.loader is not None
    end_to_end = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(end_to_end)
    return end_to_end


def test_end_to_end_epochs_cap_is_run_config_the_job_accepts() -> None:
    """``--epochs`` reaches every training asset as run config that the job validates."""
    import dagster as dg

    from stl_pipeline.definitions import defs
    from stl_pipeline.registry import MODELS

    end_to_end = _end_to_end()
    args = argparse.Namespace(precision="fp32", workers=None, epochs=5)
    config = end_to_end.run_config(args)
    assert {name: op["config"]["epochs"] for name, op in config["ops"].items()} == {
        model.asset: 5 for model in MODELS
    }
    job = defs.resolve_job_def(end_to_end.JOB)
    assert dg.validate_run_config(job, config)["ops"]["gat_model"]["config"]["epochs"] == 5
    assert "ops" not in end_to_end.run_config(argparse.Namespace(precision="fp32", workers=None, epochs=None))


def test_personalized_benchmark_times_every_stage(tmp_path: Path) -> None:
    """The script docs/benchmarks.md's personalized tables come from, at the demo's size: each
    stage timed, and its --json holds the stages, the report (``map@12`` beside each method's
    paired gain) and the candidates' recall for dashboards."""
    summary = tmp_path / "summary.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "personalized.py"), "--demo", "--device", "cpu"]
    keep = tmp_path / "keep"
    done = subprocess.run(
        [*command, "--json", str(summary), "--keep", str(keep)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("| stage |") :].split("\n\n")[0].splitlines()
    rows = [line for line in table if "---" not in line]
    stages = [row.split("|")[1].strip() for row in rows[1:]]
    assert stages == [
        "generate",
        "read_csv_floor",
        "ingest",
        "graph",
        "train",
        "ranker",
        "report",
        "recommend",
    ]
    ingest = rows[1 + stages.index("ingest")]
    assert "60,000 purchases, 0 quarantined" in ingest and ingest.split("|")[3].strip().endswith("x")
    found = json.loads(summary.read_text())
    assert list(found["stages"]) == stages and found["peak_rss_mb"] > 0
    assert found["total_seconds"] == pytest.approx(sum(found["stages"][s]["seconds"] for s in stages[2:]))
    methods = {(row["split"], row["method"]) for row in found["report"]}
    assert {
        (split, m) for split in ("val", "test") for m in ("hm_ranker", "hm_sage", "repurchase")
    } <= methods
    assert all(0 <= row["map@12"] <= 1 for row in found["report"])
    assert [row["window"] for row in found["candidate_recall"]] == ["val", "test"]
    assert all(row["recall_union"] >= row["recall_repurchase"] for row in found["candidate_recall"])

    # The GNN's recipe on the same graph, validation only: the defaults first, then each --set.
    recipe = [
        sys.executable,
        str(ROOT / "benchmarks" / "personalized_recipe.py"),
        str(keep),
        "--device",
        "cpu",
    ]
    done = subprocess.run(
        [
            *recipe,
            "--set",
            "epochs=2,eval_every=1",
            "--set",
            "loss=bce,lr=0.05,epochs=3,article_embeddings=false",
            "--json",
            str(tmp_path / "recipe.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "recipe.json").read_text())["runs"]
    assert [(r["set"], r["epochs_run"]) for r in runs] == [
        ("defaults", 40),
        ("epochs=2,eval_every=1", 2),
        ("loss=bce,lr=0.05,epochs=3,article_embeddings=False", 3),
    ]
    assert runs[0]["val_map@12"] == pytest.approx(_val(found, "hm_sage"))
    assert "| epochs=2,eval_every=1 |" in done.stdout and "vs repurchase" in done.stdout
    wrong = subprocess.run([*recipe, "--set", "epoch=2"], capture_output=True, text=True, timeout=600)
    assert wrong.returncode and "'epoch' is not a HmTrainConfig field" in wrong.stderr

    # The ranker's recipe, the run's GNN fixed: its defaults are the report's ranker.
    done = subprocess.run(
        [*recipe, "--ranker", "--set", "train_weeks=1,rounds=3", "--json", str(tmp_path / "ranker.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found_ranker = json.loads((tmp_path / "ranker.json").read_text())
    assert found_ranker["hm_sage"] == pytest.approx(_val(found, "hm_sage"))
    runs = found_ranker["runs"]
    assert [r["set"] for r in runs] == ["defaults", "train_weeks=1,rounds=3"] and runs[1]["epochs_run"] <= 3
    assert runs[0]["val_map@12"] == pytest.approx(_val(found, "hm_ranker"))
    wrong = subprocess.run(
        [*recipe, "--ranker", "--set", "lr=0.1"], capture_output=True, text=True, timeout=600
    )
    assert wrong.returncode and "'lr' is not a RankerConfig field" in wrong.stderr


def _val(found: dict, method: str) -> float:
    return next(r["map@12"] for r in found["report"] if (r["split"], r["method"]) == ("val", method))


def test_kernels_benchmark_compares_our_dropout_and_gather_with_pytorchs_own() -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--repeats", "1", "--sizes", "tenth"]
    table = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = [line for line in table.splitlines() if " tenth " in line]
    for kernel in ("dropout", "gather"):  # two shapes each, in two precisions
        assert len([row for row in rows if row.startswith(kernel)]) == 4, table
    assert all(float(row.split()[-1]) > 0 for row in rows)


def test_end_to_end_reads_the_gpu_from_one_looping_nvidia_smi(tmp_path: Path, monkeypatch) -> None:
    """One ``nvidia-smi`` that loops, not one started per sample (which slowed training on two
    cores); its unreadable lines are skipped, it is stopped with the run, and a machine without
    it gets no GPU samples."""
    import threading
    import time

    end_to_end = _end_to_end()
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" > "$(dirname "$0")/args"\n'
        "echo '[N/A], [N/A]'\n"
        "while true; do echo '37, 1024'; sleep 0.05; done\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    samples, stop = end_to_end.Samples(), threading.Event()
    sampler = threading.Thread(target=end_to_end.sample_gpu, args=(samples, stop))
    sampler.start()
    deadline = time.time() + 10
    while len(samples.gpu) < 3 and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    sampler.join(timeout=10)
    assert not sampler.is_alive()
    assert len(samples.gpu) >= 3 and {(busy, mb) for _, busy, mb in samples.gpu} == {(37.0, 1024.0)}
    assert "-lms" in (fake.parent / "args").read_text().split()

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    none = end_to_end.Samples()
    end_to_end.sample_gpu(none, threading.Event())
    assert none.gpu == []
