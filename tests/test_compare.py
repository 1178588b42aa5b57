"""The comparison helper: run rows, summary columns, mean +- std, adapter bytes, cache, plot."""
import math

import pytest
import torch

from gpart_edu import plots
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import compare, train

from .conftest import MLP

GRID = [("gpart", [8, 30]), ("unilora", [8]), ("lora", [1]), ("head", [None]), ("full", [None])]


def make_model(seed):
    torch.manual_seed(seed)
    m = MLP()
    m.classifier = m.head   # a classification head named like HF's, found by trainable="auto"
    del m.head
    m.forward = lambda x: m.classifier(torch.tanh(m.layers[1](torch.tanh(m.layers[0](x)))))
    return m


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    return x, (x @ torch.randn(6, 3, generator=g)).argmax(1)


@pytest.fixture(scope="module")
def rows():
    cfg = train.TrainConfig(steps=15, batch_size=16, lr=2e-2, progress=False)
    return compare.run_grid(make_model, GRID, seeds=[0, 1], train=data(), eval_data=data(1), config=cfg,
                            targets=["layers.0", "layers.1"], lrs={"full": (5e-3, None)}, verbose=False)


def test_run_rows_have_every_column(rows):
    assert len(rows) == 2 * 6
    for r in rows:
        assert set(compare.RUN_COLUMNS) <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["steps"] == 15 and r["train_time_s"] > 0 and r["peak_mem_mb"] > 0
    by = {(r["method"], r["budget"]): r for r in rows if r["seed"] == 0}
    D = 6 * 9 + 9 * 7
    assert by[("gpart", 8)]["params"] == 8 and by[("lora", 1)]["params"] == (6 + 9) + (9 + 7)
    assert by[("head", None)]["params"] == 0 and by[("head", None)]["adapter_bytes"] == 0
    assert by[("full", None)]["params"] == D + 9 + 7 and by[("full", None)]["adapter_bytes"] == 4 * (D + 16)
    assert by[("full", None)]["lr"] == 5e-3 and by[("gpart", 8)]["lr"] == 2e-2
    assert all(r["head_params"] == 7 * 3 + 3 for r in rows)
    assert 4 * 8 < by[("gpart", 8)]["adapter_bytes"] < 4 * 8 + 4096      # theta + a small header


def test_summary_mean_std_and_columns(rows):
    table = compare.summarize(rows)
    assert table.columns == list(compare.SUMMARY_COLUMNS)
    assert [(r["method"], r["budget"]) for r in table] == [(m, b) for m, bs in GRID for b in bs]
    for t in table:
        accs = [r["accuracy"] for r in rows if (r["method"], r["budget"]) == (t["method"], t["budget"])]
        assert t["n_seeds"] == 2 and t["accuracy_mean"] == pytest.approx(sum(accs) / 2)
        assert t["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    md = table.to_markdown()
    assert md.splitlines()[0].startswith("| method | budget | params") and len(md.splitlines()) == 2 + 6
    assert "<table>" in table._repr_html_() and "gpart" in str(table)


def test_runs_are_reproducible(rows):
    cfg = train.TrainConfig(steps=15, batch_size=16, lr=2e-2, progress=False)
    again = compare.run_one(make_model, "gpart", 8, 1, data(), data(1), cfg, targets=["layers.0", "layers.1"])
    first = next(r for r in rows if (r["method"], r["budget"], r["seed"]) == ("gpart", 8, 1))
    assert again["accuracy"] == first["accuracy"] and again["loss"] == first["loss"]


def test_budget_to_reach(rows):
    table = compare.summarize(rows)
    best = max(r["accuracy_mean"] for r in table if r["method"] == "gpart")
    hit = compare.budget_to_reach(table, "gpart", best)
    assert hit["method"] == "gpart" and hit["accuracy_mean"] >= best
    assert compare.budget_to_reach(table, "gpart", 1.01) is None


def test_cache_resumes_without_rerunning(tmp_path, monkeypatch):
    cfg = train.TrainConfig(steps=3, batch_size=16, progress=False)
    cache = tmp_path / "runs.jsonl"
    args = dict(seeds=[0], train=data(), eval_data=data(1), config=cfg, targets=["layers.0"], cache=cache,
                tag="toy", verbose=False)
    first = compare.run_grid(make_model, [("gpart", [4]), ("head", [None])], **args)
    calls = []
    monkeypatch.setattr(compare, "run_one", lambda *a, **k: calls.append(a) or first[0])
    again = compare.run_grid(make_model, [("gpart", [4]), ("head", [None])], **args)
    assert calls == [] and again == first
    compare.run_grid(make_model, [("gpart", [4])], **{**args, "tag": "other data"})
    assert len(calls) == 1                       # a different tag is a different experiment


@pytest.mark.parametrize("grid, pattern", [([("gpart", [None])], "needs a budget"),
                                           ([("head", [3])], "takes no budget"),
                                           ([("adalora", [4])], "unknown method")])
def test_bad_grid_is_rejected_before_any_run(grid, pattern):
    with pytest.raises(ConfigError, match=pattern):
        compare.run_grid(make_model, grid, [0], data(), data(), train.TrainConfig(progress=False))


def test_accuracy_vs_params_plot(rows):
    import matplotlib
    matplotlib.use("Agg", force=False)
    ax = plots.plot_accuracy_vs_params(compare.summarize(rows), title="toy")
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "GPart" in labels and any(s.startswith("full FT") for s in labels)
    assert any(s.startswith("head only") for s in labels)


def test_learning_rates_per_budget():
    cfg = train.TrainConfig(steps=2, batch_size=16, progress=False)
    args = dict(seeds=[0], train=data(), eval_data=None, config=cfg, targets=["layers.0"], verbose=False)
    rows = compare.run_grid(make_model, [("gpart", [4, 8])], lrs={"gpart": {4: (0.1, 0.01), 8: (0.05, None)}}, **args)
    assert [(r["lr"], r["head_lr"]) for r in rows] == [(0.1, 0.01), (0.05, None)]
    rows = compare.run_grid(make_model, [("gpart", [4])], lrs={"gpart": lambda d: (0.4 / d, 0.02)}, **args)
    assert (rows[0]["lr"], rows[0]["head_lr"]) == (0.1, 0.02) and math.isnan(rows[0]["accuracy"])
    with pytest.raises(ConfigError, match="no entry for budget 8"):
        compare.run_grid(make_model, [("gpart", [8])], lrs={"gpart": {4: (0.1, 0.01)}}, **args)
