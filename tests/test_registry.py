"""One method registry: every consumer turns the same (name, budget, options) into the same method config."""
import inspect

import pytest
import torch

import gpart_edu as ge
from gpart_edu import cli, widgets
from gpart_edu.core import projections, registry
from gpart_edu.core.methods import METHODS, LoRA, Target, UniLoRA
from gpart_edu.core.targets import describe, find_targets
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import compare, engine, recipes
from gpart_edu.lab import verify

from .conftest import MODEL_KINDS

TARGETS = ["query", "value"]
# (name, budget, options): defaults only, then options set by hand
CASES = [("gpart", 40, {}), ("gpart", 40, {"seed": 3, "assignment": "hashed"}), ("unilora", 30, {}),
         ("unilora", 30, {"r": 2, "seed": 3}), ("lora", 2, {}), ("lora", 3, {"alpha": 4.0, "seed": 3})]


def bert():
    return MODEL_KINDS["bert"](torch.float64)[0]


def bert_targets():
    return [describe(n, m) for n, m in find_targets(bert(), TARGETS)]


def configs_of_every_consumer(name, budget, opts, monkeypatch) -> dict:
    """{consumer: method.config()} for one (name, budget, options), built by each consumer its own way."""
    key, tlist = registry.BUDGET_KEY[name], bert_targets()
    out = {"registry.build": registry.build(name, tlist, budget, **opts).config()}
    out["ge.attach"] = ge.attach(bert(), name, targets=TARGETS, **{key: budget}, **opts).method.config()
    model = bert()
    compare.prepare(model, name, budget, targets=TARGETS, **opts)
    out["compare.prepare"] = ge.get_adapter(model).method.config()
    cfg = engine.RunConfig(method=name, targets=tuple(TARGETS), **{key: budget}, **opts)
    out["engine.prepare"] = engine.prepare(bert(), cfg).method.config()
    monkeypatch.setattr(verify, "model_targets", lambda model, targets=None: tlist)  # no HF config needed
    out["verify.build_method"] = verify.build_method("tiny-bert", name, **{key: budget}, **opts)[0].config()
    return out


@pytest.mark.parametrize("name, budget, opts", CASES)
def test_every_consumer_builds_the_same_method_config(name, budget, opts, monkeypatch):
    configs = configs_of_every_consumer(name, budget, opts, monkeypatch)
    want = configs["registry.build"]
    assert want == {**registry.defaults(name), registry.BUDGET_KEY[name]: budget, **opts}
    assert configs == {k: want for k in configs}


def test_the_defaults_are_the_class_signatures():
    for name, cls in METHODS.items():
        sig = inspect.signature(cls.__init__).parameters
        assert registry.defaults(name) == {k: p.default for k, p in sig.items() if p.default is not p.empty}
    assert registry.options("gpart")["d"] is registry.REQUIRED and registry.options("unilora")["d"] is registry.REQUIRED
    t = bert_targets()
    assert registry.build("lora", t).config() == {"r": 8, "alpha": 8.0, "seed": 0}     # LoRA's budget has a default
    assert registry.build("unilora", t, 30).config()["r"] == 4


def test_uni_lora_r_and_lora_r_alpha_agree_across_attach_verify_engine_compare_and_recipes(monkeypatch):
    unilora = configs_of_every_consumer("unilora", 30, {}, monkeypatch)
    lora = configs_of_every_consumer("lora", 8, {}, monkeypatch)
    assert {c["r"] for c in unilora.values()} == {registry.defaults("unilora")["r"]}
    assert {(c["r"], c["alpha"]) for c in lora.values()} == {(8, registry.defaults("lora")["alpha"])}
    for recipe, method in (("roberta-base-sst2-lora", "lora"), ("roberta-base-sst2-unilora", "unilora")):
        r = recipes.get(recipe)
        targets = [describe(n, m) for n, m in find_targets(recipes.meta_model(r), r.targets)]   # RoBERTa-base
        budget = r.method_config[registry.BUDGET_KEY[method]]
        meth = registry.build(method, targets, **r.method_config)
        # the paper's baselines (LoRA r=8, alpha=8; Uni-LoRA r=4) are the registry defaults besides the budget
        assert meth.config() == registry.build(method, targets, budget).config()
        assert recipes.cost(r)["theta"] == meth.num_params


def test_aliases_resolve_everywhere():
    assert {registry.canonical(a) for a in ("uni-lora", "uni_lora", "Uni-LoRA", "UNILORA")} == {"unilora"}
    assert ge.attach(bert(), "Uni-LoRA", d=30, targets=TARGETS).method.name == "unilora"
    model = bert()
    assert compare.prepare(model, "uni_lora", 30, targets=TARGETS) == 30
    t = bert_targets()
    assert registry.build("uni-lora", t, 30).config() == registry.build("unilora", t, 30).config()


def test_tables_come_from_the_registry():
    assert registry.NAMES == tuple(METHODS) == engine.ADAPTER_METHODS
    assert set(registry.BUDGET_KEY) == set(registry.LABELS) == set(registry.NAMES)
    assert compare.BUDGET_KEY is registry.BUDGET_KEY
    assert {k: compare.METHOD_LABELS[k] for k in registry.NAMES} == registry.LABELS
    verify_parser = cli.build_parser()._subparsers._group_actions[0].choices["verify"]
    method = next(a for a in verify_parser._actions if a.dest == "method")
    assert tuple(method.choices) == registry.NAMES


@pytest.mark.parametrize("call, pattern", [
    (lambda t: registry.build("dora", t, 4), "unknown method 'dora'; valid methods: gpart, unilora, lora"),
    (lambda t: registry.build("gpart", t), "gpart needs d, its budget \\(the length of theta\\): pass d="),
    (lambda t: registry.build("unilora", t, r=2), "unilora needs d"),
    (lambda t: registry.build("gpart", t, 4, rank=2), "no option 'rank'; valid options: d, seed, assignment, "
                                                      "include_bias"),
    (lambda t: registry.build("lora", t, 4, alpa=2.0), "did you mean 'alpha'"),
    (lambda t: registry.build("gpart", t, 4, d=5), "budget 4 and d=5 disagree"),
    (lambda t: registry.config_for_size("lora", t, 0), "n must be >= 1"),
])
def test_bad_input_is_a_clear_config_error(call, pattern):
    with pytest.raises(ConfigError, match=pattern):
        call(bert_targets())


def test_options_given_as_none_take_the_default_and_accepted_drops_other_methods_options():
    t = bert_targets()
    assert registry.build("lora", t, None, alpha=None, seed=None).config() == registry.build("lora", t).config()
    assert registry.build("gpart", t, d=10, seed=None).config() == registry.build("gpart", t, 10).config()
    assert registry.accepted("lora", d=5, r=2, alpha=None, assignment="balanced", seed=1) == {"r": 2, "seed": 1}
    assert registry.accepted("gpart", d=5, r=2, alpha=3.0, assignment="hashed") == {"d": 5, "assignment": "hashed"}


def test_num_params_counts_without_building_a_partition(monkeypatch):
    t = bert_targets()
    want = {name: registry.build(name, t, b).num_params for name, b in (("gpart", 40), ("unilora", 30), ("lora", 3))}

    def boom(*a, **k):
        raise AssertionError("num_params built a partition")

    monkeypatch.setattr(projections.PartitionProjection, "__init__", boom)
    assert {name: registry.num_params(name, t, b) for name, b in (("gpart", 40), ("unilora", 30), ("lora", 3))} == want
    with pytest.raises(ConfigError, match="d must be >= 1"):
        registry.num_params("gpart", t, 0)


@pytest.mark.parametrize("n", [1, 20, 64, 128, 256, 512, 1000, 5000])
def test_config_for_size_gives_about_n_parameters(n):
    t = [Target(f"l{i}", "linear", a, b, True) for i, (a, b) in enumerate([(64, 32), (32, 10)])]   # the digits MLP
    per_r = 64 + 32 + 32 + 10
    assert registry.config_for_size("gpart", t, n) == {"d": n}
    uni = registry.config_for_size("unilora", t, n)
    assert uni == {"d": n, "r": max(registry.defaults("unilora")["r"], -(-n // per_r))}
    assert UniLoRA(t, **uni).num_params == n and UniLoRA(t, **uni).D_f >= n
    lora = registry.config_for_size("lora", t, n)
    counts = {r: LoRA(t, r=r).num_params for r in range(1, 60)}
    assert abs(LoRA(t, **lora).num_params - n) == min(abs(c - n) for c in counts.values())


def test_explorer_map_builds_through_the_registry():
    t = widgets._explorer_targets()
    for method, d, r, want in [("gpart-hashed", 64, 2, registry.build("gpart", t, 64, seed=1, assignment="hashed")),
                               ("unilora", 64, 2, registry.build("unilora", t, 64, r=2, seed=1)),
                               ("lora", 64, 3, registry.build("lora", t, 3, alpha=3.0, seed=1))]:
        f = widgets.explorer_map(method, d, r, 1)
        assert f.fn.__self__.config() == want.config()
