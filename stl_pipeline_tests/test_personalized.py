"""The personalized group's parts: generated H&M-format files, their validation, the temporal
split that keeps later purchases out of earlier windows, the metrics, and a model that earns
its place against the baselines on a dataset generated for the test alone."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stl_pipeline.ingest.parse import IngestError
from stl_pipeline.personalized.config import HmTrainConfig, RankerConfig
from stl_pipeline.personalized.evaluate import baselines, ranking_metrics
from stl_pipeline.personalized.files import HM_FILES
from stl_pipeline.personalized.generate import HmConfig, generate_hm, load_truth
from stl_pipeline.personalized.graph import ARTICLE, BUYS, build_hm_graph
from stl_pipeline.personalized.ingest import check_quarantine, ingest_hm
from stl_pipeline.personalized.split import check_windows
from stl_pipeline.personalized.windows import temporal_violations
from stl_pipeline_tests.conftest import HM_SMALL

SMALL = HM_SMALL


def _paths(folder: Path) -> list[Path]:
    return [folder / name for name in HM_FILES]


def test_generated_files_have_the_release_formats(hm_small: Path, tmp_path: Path) -> None:
    transactions, articles, customers = (pd.read_csv(p, dtype=str) for p in _paths(hm_small))
    assert list(transactions.columns) == ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
    assert len(transactions) == SMALL.purchases and len(customers) == SMALL.customers
    assert transactions["customer_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert transactions["article_id"].str.fullmatch(r"0[0-9]{9}").all()  # leading zero kept
    assert pd.to_datetime(transactions["t_dat"]).max() == pd.Timestamp("2020-09-22")
    assert set(transactions["sales_channel_id"]) == {"1", "2"}
    assert len(articles.columns) == 25 and {"product_type_name", "detail_desc"} <= set(articles.columns)
    assert set(customers.columns) == {
        "customer_id",
        "FN",
        "Active",
        "club_member_status",
        "fashion_news_frequency",
        "age",
        "postal_code",
    }
    # Repeat purchases and weekend trade are in the data; the same seed writes the same bytes.
    pairs = transactions[["customer_id", "article_id"]]
    assert pairs.duplicated().mean() > 0.05
    weekday = pd.to_datetime(transactions["t_dat"]).dt.day_of_week.value_counts(normalize=True)
    assert weekday[5] > weekday[1]
    generate_hm(SMALL, tmp_path / "again")
    assert all(
        a.read_bytes() == b.read_bytes()
        for a, b in zip(_paths(hm_small), _paths(tmp_path / "again"), strict=True)
    )
    with pytest.raises(FileExistsError):
        generate_hm(SMALL, hm_small)


def _write_bad_copy(hm_small: Path, folder: Path) -> dict[str, int]:
    """A copy with one broken line of each kind; returns reason -> its line number."""
    folder.mkdir()
    for path in _paths(hm_small):
        (folder / path.name).write_bytes(path.read_bytes())
    lines = (folder / HM_FILES[0]).read_text().splitlines()
    good = lines[5].split(",")
    broken = {
        "is not a date in the format YYYY-MM-DD": ["2020-13-45", *good[1:]],
        "is not in customers.csv": [good[0], "f" * 64, *good[2:]],
        "is not in articles.csv": [good[0], good[1], "0000000000", *good[3:]],
        "is not a number": [*good[:3], "-0.5", good[4]],
        "is not 1 or 2": [*good[:4], "7"],
    }
    numbers = {}
    for reason, fields in broken.items():
        lines.append(",".join(fields))
        numbers[reason] = len(lines)
    (folder / HM_FILES[0]).write_text("\n".join(lines) + "\n")
    articles = (folder / HM_FILES[1]).read_text().splitlines()
    articles.append("12345," + articles[1].split(",", 1)[1])  # not 10 digits
    (folder / HM_FILES[1]).write_text("\n".join(articles) + "\n")
    return numbers


def test_ingestion_quarantines_each_bad_line_with_its_number(hm_small: Path, tmp_path: Path) -> None:
    numbers = _write_bad_copy(hm_small, tmp_path / "bad")
    tables = ingest_hm(*_paths(tmp_path / "bad"))
    assert len(tables.transactions) == SMALL.purchases  # every good line kept
    rejected = tables.quarantine
    for reason, line in numbers.items():
        row = rejected[rejected["reason"].str.contains(reason, regex=False)]
        assert list(row["line"]) == [line], (reason, rejected.to_string())
    assert rejected["reason"].str.contains("invalid article_id '12345'").sum() == 1
    # Over the limit, the error names the file, a line and the way out.
    with pytest.raises(
        IngestError, match=re.escape(f"{tmp_path / 'bad' / HM_FILES[1]}:122: invalid")
    ) as error:
        check_quarantine(tables, 0.0001, tmp_path / "q.parquet")
    assert "max_quarantine_share" in str(error.value)
    # Codes, not strings: the categories are the other tables' ids, in their order.
    assert (tables.transactions["customer_id"].cat.categories == tables.customers["customer_id"]).all()
    assert tables.transactions["window"].value_counts()["test"] > 0


def test_a_missing_column_is_named_with_its_file(hm_small: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cut"
    folder.mkdir()
    for path in _paths(hm_small):
        (folder / path.name).write_bytes(path.read_bytes())
    text = (folder / HM_FILES[0]).read_text().replace("sales_channel_id", "channel", 1)
    (folder / HM_FILES[0]).write_text(text)
    with pytest.raises(IngestError, match=r"transactions_train\.csv:1: missing column\(s\) sales_channel_id"):
        ingest_hm(*_paths(folder))


def test_later_purchases_never_reach_an_earlier_window(hm_small: Path) -> None:
    tables = ingest_hm(*_paths(hm_small))
    graph = build_hm_graph(tables.transactions, tables.articles, tables.customers, tables.windows)
    assert temporal_violations(graph, tables.transactions) == []
    # A graph whose test purchases were moved a week earlier leaks them into validation.
    leaky = build_hm_graph(tables.transactions, tables.articles, tables.customers, tables.windows)
    test_start = leaky.info["test_start_day"]
    time = leaky[BUYS].time
    time[time >= test_start] -= 7
    leaky[BUYS].time = torch.sort(time).values
    problems = temporal_violations(leaky, tables.transactions)
    assert any("count purchases not before it" in p for p in problems), problems
    # A table split with other windows is refused, not silently re-split.
    with pytest.raises(ValueError, match="window_days"):
        check_windows(tables.transactions, 14)


def test_ranking_metrics_by_hand() -> None:
    customers = np.array([0, 1])
    top = np.array([[5, 3, 9, *range(100, 109)], [1, 2, 3, *range(100, 109)]])
    bought_c, bought_a = np.array([0, 0, 1]), np.array([3, 7, 4])
    metrics, per_customer = ranking_metrics(top, customers, bought_c, bought_a)
    # Customer 0: one of two purchases, at rank 2: AP = (1/2) / 2. Customer 1: no hit.
    assert per_customer["MAP@12"].tolist() == [0.25, 0.0]
    assert metrics["MAP@12"] == pytest.approx(0.125)
    assert metrics["Recall@12"] == pytest.approx(0.25) and metrics["HR@12"] == pytest.approx(0.5)
    assert metrics["NDCG@12"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)) / 2)


def test_map_at_12_is_relbenchs() -> None:
    """MAP@12 as RelBench's rel-hm task defines it, written out: over the customers who bought,
    each one's sum of precision at every hit, divided by min(purchases, 12)."""
    rng = np.random.default_rng(0)
    customers = np.arange(300)
    top = np.stack([rng.choice(40, 12, replace=False) for _ in customers])
    bought = [rng.choice(40, rng.integers(1, 20), replace=False) for _ in customers]
    expected = []
    for row, items in zip(top, bought, strict=True):
        hits = np.isin(row, items)
        precision = np.cumsum(hits) / np.arange(1, 13)
        expected.append((precision * hits).sum() / min(len(items), 12))
    bought_c = np.repeat(customers, [len(b) for b in bought])
    metrics, per_customer = ranking_metrics(top, customers, bought_c, np.concatenate(bought))
    assert per_customer["MAP@12"] == pytest.approx(np.array(expected))
    assert metrics["MAP@12"] == pytest.approx(np.mean(expected))


def test_the_sparse_top_k_is_the_dense_one(hm_small: Path) -> None:
    """Each heuristic ranks from its entries and the fill row; the lists, their scores and the
    scored pairs are the dense matrix's, with a list size that needs the fill (k = 40)."""
    from stl_pipeline.personalized.evaluate import rank, sample_negatives
    from stl_pipeline.personalized.windows import make_window

    tables = ingest_hm(*_paths(hm_small))
    graph = build_hm_graph(tables.transactions, tables.articles, tables.customers, tables.windows)
    window = make_window(graph, graph.info["test_start_day"], 7, torch.device("cpu"))
    customers = np.unique(window.customers.numpy())
    pairs = sample_negatives(window, 0)
    ids = (pd.Index(tables.customers["customer_id"]), pd.Index(tables.articles["article_id"]))
    heuristics = baselines(window, None, *ids, pd.Timestamp(graph.info["start"]).date())
    for name, scorer in heuristics.items():
        top, values, scored = rank(scorer, customers, 40, pairs)
        row, article, value = scorer.entries(customers)
        dense = np.tile(scorer.fill, (len(customers), 1))
        dense[row, article] = value
        expected = torch.topk(torch.from_numpy(dense), 40, dim=1).values.numpy()
        assert np.array_equal(values, expected), name
        assert np.array_equal(np.take_along_axis(dense, top, 1), values), name
        assert np.array_equal(scored, dense[np.searchsorted(customers, pairs[0]), pairs[1]]), name
        assert all(len(set(t)) == 40 for t in top), name


def test_the_gnn_layers_are_sages_with_torchs_gradients(hm_small: Path) -> None:
    """HmSage applies SAGEConv's weights by hand, its backward through the snapshot's stored
    transposes: the embeddings are PyG HeteroConv's on the same weights, and every parameter's
    gradient is the one torch's own sparse backward gives."""
    import stl_pipeline.personalized.model as model_module
    from stl_pipeline.personalized.graph import CUSTOMER, snapshot

    tables = ingest_hm(*_paths(hm_small))
    graph = build_hm_graph(tables.transactions, tables.articles, tables.customers, tables.windows)
    snap = snapshot(graph, graph.info["val_start_day"])
    torch.manual_seed(0)
    model = model_module.build_model(graph, HmTrainConfig(dropout=0.0))
    with torch.no_grad():  # a trained-looking model: the article embeddings are zero at first
        model.article_embedding.weight.normal_()

    def loss_and_grads() -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        model.zero_grad()
        out = model(snap)
        sum(o.square().sum() for o in out).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ours, our_grads = loss_and_grads()
    h = {kind: torch.relu(model.project[kind](x)) for kind, x in snap.x.items()}
    h[ARTICLE] = torch.relu(model.project[ARTICLE](snap.x[ARTICLE]) + model.article_embedding.weight)
    for i, conv in enumerate(model.convs):
        h = conv(h, snap.adj_t)
        if i < len(model.convs) - 1:
            h = {k: torch.relu(v) for k, v in h.items()}
    assert torch.allclose(ours[0], h[CUSTOMER], atol=1e-5)
    assert torch.allclose(ours[1], h[ARTICLE], atol=1e-5)
    with pytest.MonkeyPatch.context() as patch:  # torch's own backward of the CSR product
        patch.setattr(model_module._Aggregate, "apply", lambda x, adjacency, _: adjacency @ x)
        _, torch_grads = loss_and_grads()
    assert len(torch_grads) == len(our_grads) > 10  # the repeat term alone is not in the forward
    for name, grad in torch_grads.items():
        assert torch.allclose(our_grads[name], grad, rtol=1e-4, atol=1e-6 * grad.abs().max()), name


def test_the_softmax_loss_is_the_full_softmax_when_every_article_is_sampled(
    hm_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The softmax loss takes the customer's history exactly and the rest from a sample: with
    every article on sale in the sample its value and gradients are the full cross-entropy's,
    each purchase against every article on sale, the repeat term included; a sample of a
    tenth gives an estimate, not the same figure."""
    import stl_pipeline.personalized.model as model_module
    from stl_pipeline.personalized.windows import make_window

    monkeypatch.setattr(model_module._PairDot, "CHUNK", 97)  # the history's scores in many chunks

    tables = ingest_hm(*_paths(hm_small))
    graph = build_hm_graph(tables.transactions, tables.articles, tables.customers, tables.windows)
    window = make_window(graph, graph.info["val_start_day"] - 7, 7, torch.device("cpu"))
    config = HmTrainConfig(dropout=0.0, loss="softmax", negatives=10**9)
    torch.manual_seed(0)
    model = model_module.build_model(graph, config)
    with torch.no_grad():  # a repeat term that matters
        model.again.weight.copy_(torch.tensor([[1.5, 2.0]]))
    eligible, customers, articles = window.negatives.eligible, window.customers, window.articles
    assert window.snap.bought(customers, articles).gt(0).any()  # some purchases are repeats

    def loss_and_grads(full: bool) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        if full:
            h_c, h_a, bias = model(window.snap)
            pairs = len(customers), len(eligible)
            bought = window.snap.bought(
                customers.repeat_interleave(len(eligible)), eligible.repeat(len(customers))
            )
            every = h_c[customers] @ h_a[eligible].T + bias[eligible] + model.repeat(bought).view(pairs)
            positive = model.score(
                h_c[customers], h_a[articles], bias[articles], window.snap.bought(customers, articles)
            )
            loss = (torch.logsumexp(every, dim=1) - positive).mean()
        else:
            loss = model_module._step(model, window, config, None, torch.Generator().manual_seed(0))
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ours, our_grads = loss_and_grads(full=False)
    full, full_grads = loss_and_grads(full=True)
    assert ours == pytest.approx(full, rel=1e-5)
    assert our_grads.keys() == full_grads.keys() and "again.weight" in our_grads
    # Some gradients are zero up to rounding (a shift of every article's embedding moves no
    # softmax): tolerance relative to the largest gradient.
    scale = max(float(grad.abs().max()) for grad in full_grads.values())
    for name, grad in full_grads.items():
        assert torch.allclose(our_grads[name], grad, rtol=1e-4, atol=1e-6 * scale), name
    sampled = replace(config, negatives=len(eligible) // 10)
    estimate = model_module._step(model, window, sampled, None, torch.Generator().manual_seed(0))
    assert float(estimate) != pytest.approx(full, rel=1e-5)
    assert float(estimate) == pytest.approx(full, rel=0.2)
    with pytest.raises(ValueError, match="loss is 'hinge'; choose one of softmax, bce"):
        model_module.train_hm(graph, HmTrainConfig(loss="hinge"), torch.device("cpu"), hm_small / "unused")


def _beats(ours: np.ndarray, theirs: np.ndarray, label: tuple) -> None:
    gain = ours - theirs
    standard_error = gain.std(ddof=1) / np.sqrt(len(gain))
    assert gain.mean() > 2 * standard_error, (*label, gain.mean(), standard_error)


def test_the_gnn_and_the_ranker_beat_every_heuristic_on_the_test_week(tmp_path: Path) -> None:
    """A dataset no default uses (seed 7, 6,000 customers), both models with their defaults: on
    the last week, paired over more than a thousand customers, GraphSAGE's MAP@12 and recall@12
    exceed each heuristic's by over two standard errors; the ranker's MAP@12 exceeds each
    heuristic's and GraphSAGE's so; and the oracle shows the headroom is real."""
    from stl_pipeline.personalized.candidates import GENERATORS, CandidateRecall
    from stl_pipeline.personalized.evaluate import HEURISTICS, evaluate
    from stl_pipeline.personalized.model import model_record, train_hm
    from stl_pipeline.personalized.ranker import ranker_record, scorer_for, train_ranker
    from stl_pipeline.personalized.windows import make_window

    folder = tmp_path / "quality"
    generate_hm(HmConfig(customers=6_000, articles=600, purchases=120_000, seed=7), folder)
    tables = ingest_hm(*_paths(folder))
    graph = build_hm_graph(tables.transactions, tables.articles, tables.customers, tables.windows)
    config = HmTrainConfig()
    cpu = torch.device("cpu")
    result = train_hm(graph, config, cpu, tmp_path / "checkpoints")
    assert result.best_val_map > result.popularity_val_map
    sage = model_record(result, graph, config, "test")
    ranker = ranker_record(
        train_ranker(graph, sage, RankerConfig(), cpu), graph, RankerConfig(), sage, "test"
    )
    window = make_window(graph, graph.info["test_start_day"], 7, cpu)
    methods = {
        m: scorer_for(r, graph, window.start, cpu) for m, r in (("hm_sage", sage), ("hm_ranker", ranker))
    }
    methods |= baselines(
        window,
        load_truth(folder),
        pd.Index(tables.customers["customer_id"]),
        pd.Index(tables.articles["article_id"]),
        pd.Timestamp(graph.info["start"]).date(),
    )
    bought = (window.customers.numpy(), window.articles.numpy())
    methods["hm_ranker"].recall = CandidateRecall(graph[ARTICLE].num_nodes, bought)
    results = {name: evaluate(scorer, window) for name, scorer in methods.items()}
    print({name: {k: round(v, 4) for k, v in r.metrics.items()} for name, r in results.items()})
    assert len(results["hm_sage"].customers) > 1_000
    for baseline in HEURISTICS:
        for metric in ("MAP@12", "Recall@12"):
            ours, theirs = results["hm_sage"].per_customer[metric], results[baseline].per_customer[metric]
            _beats(ours, theirs, ("hm_sage", baseline, metric))
    for other in (*HEURISTICS, "hm_sage"):
        _beats(
            results["hm_ranker"].per_customer["MAP@12"],
            results[other].per_customer["MAP@12"],
            ("hm_ranker", other),
        )
    assert results["oracle"].metrics["MAP@12"] > results["hm_ranker"].metrics["MAP@12"]
    # The union's recall bounds the ranker's, and holds more than any one generator's.
    recall = methods["hm_ranker"].recall.result()
    assert recall["recall_union"] > max(recall[f"recall_{g}"] for g in GENERATORS)
    assert recall["recall_union"] >= results["hm_ranker"].metrics["Recall@12"]


def test_the_rankers_features_come_from_before_its_weeks(hm_small: Path) -> None:
    from stl_pipeline.personalized.windows import feature_violations

    tables = ingest_hm(*_paths(hm_small))
    graph = build_hm_graph(tables.transactions, tables.articles, tables.customers, tables.windows)
    assert feature_violations(graph, tables.transactions, RankerConfig()) == []
    # Purchases moved a day earlier reach the week before them: the recount tells.
    leaky = build_hm_graph(tables.transactions, tables.articles, tables.customers, tables.windows)
    leaky[BUYS].time = leaky[BUYS].time - 1
    problems = feature_violations(leaky, tables.transactions, RankerConfig())
    assert any("counts purchases not before it" in p for p in problems), problems
    assert any("affinity_product_type_name" in p for p in problems), problems


def test_the_hm_variables_feed_the_group_and_bad_files_stop_it(
    hm_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster reads the operator's files, not the demo's; over the quarantine limit the run
    fails with the file, the line and the reason."""
    import dagster as dg

    from stl_pipeline.definitions import build_definitions
    from stl_pipeline.settings import HM_VARIABLES, load_settings

    tables = [dg.AssetKey(name) for name in ("hm_transactions", "hm_articles", "hm_customers")]

    def ingest(folder: Path) -> dg.ExecuteInProcessResult:
        for variable, path in zip(HM_VARIABLES, _paths(folder), strict=True):
            monkeypatch.setenv(variable, str(path))
        job = build_definitions(load_settings()).resolve_job_def("hm_personalized")
        return job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), asset_selection=tables, raise_on_error=False
        )

    result = ingest(hm_small)
    assert result.success
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == tables[0]]
    metadata = event.step_materialization_data.materialization.metadata
    assert metadata["purchases"].value == SMALL.purchases
    assert metadata["source"].value == str(hm_small / HM_FILES[0])
    assert not (tmp_path / "stl_data" / "demo_hm").exists()  # nothing generated

    _write_bad_copy(hm_small, tmp_path / "bad")
    lines = (tmp_path / "bad" / HM_FILES[2]).read_text().splitlines()
    lines += [f"{'e' * 64},,,ACTIVE,NONE,{age},x" for age in ("abc",) * 20]  # 5% of customers: too many
    (tmp_path / "bad" / HM_FILES[2]).write_text("\n".join(lines) + "\n")
    result = ingest(tmp_path / "bad")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.cause.message if failure.step_failure_data.error.cause else ""
    assert f"{tmp_path / 'bad' / HM_FILES[2]}:" in message and "max_quarantine_share" in message, message


def test_stl_generate_hm_writes_a_sized_dataset_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from stl_pipeline.personalized.generate import main

    out = tmp_path / "hm"
    assert main(["--out", str(out), "--scale", "0.001"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["customers"], summary["articles"], summary["purchases"]) == (1372, 106, 31788)
    assert (summary["start"], summary["end"]) == ("2018-09-20", "2020-09-22")  # the release's two years
    assert (out / HM_FILES[0]).read_text().count("\n") == 31788 + 1
    with pytest.raises(SystemExit):
        main(["--out", str(out)])
    assert "exists; pass --force" in capsys.readouterr().err
