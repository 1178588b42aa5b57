"""The paper's recipes as named defaults: values against the issue's table, baselines, cost from the meta model."""
from __future__ import annotations

import pytest
import torch

from gpart_edu.core.targets import resolve_targets
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import engine, recipes

GLUE_EPOCHS_BASE = {"cola": 80, "sst2": 60, "mrpc": 30, "qnli": 25, "rte": 160, "stsb": 80}   # the table


@pytest.mark.parametrize("task", sorted(GLUE_EPOCHS_BASE))
def test_roberta_base_glue_recipes_match_the_paper_table(task):
    r = recipes.get(f"roberta-base-{task}")
    assert (r.model, r.task, r.method, r.family) == ("FacebookAI/roberta-base", task, "gpart", "glue")
    assert r.targets == ("query", "value") and r.d == 23_040
    assert (r.lr, r.weight_decay, r.batch_size, r.warmup, r.schedule, r.dropout) == (5e-3, 0.1, 32, 0.06, "linear", 0.1)
    assert r.epochs == GLUE_EPOCHS_BASE[task]
    assert r.head_lr is not None and r.head_lr > 0


def test_glue_head_learning_rate_is_set_per_task():
    base = {t: recipes.get(f"roberta-base-{t}").head_lr for t in GLUE_EPOCHS_BASE}
    assert len(set(base.values())) > 1, base                   # "a separate head lr per task"
    assert base["rte"] == 1e-2 and base["stsb"] == 2e-4


@pytest.mark.parametrize("task", sorted(GLUE_EPOCHS_BASE))
def test_roberta_large_keeps_d_lr_and_targets(task):
    r = recipes.get(f"roberta-large-{task}")
    assert r.model == "FacebookAI/roberta-large" and r.d == 23_040 and r.lr == 5e-3
    assert r.targets == ("query", "value") and r.batch_size == 32 and r.weight_decay == 0.1


@pytest.mark.parametrize("size,d", [("base", 72_000), ("large", 144_000)])
@pytest.mark.parametrize("task", recipes.VIT_TASKS)
def test_vit_recipes_match_the_paper_table(size, d, task):
    r = recipes.get(f"vit-{size}-{task}")
    assert r.targets == ("query", "value") and r.d == d and r.method == "gpart"
    assert (r.lr, r.head_lr, r.epochs, r.weight_decay, r.warmup) == (4e-3, 3e-3, 20, 0.01, 0.4)


@pytest.mark.parametrize("size,d", [("0.5b", 131_072), ("7b", 524_288)])
def test_math_recipes_match_the_paper_table(size, d):
    r = recipes.get(f"math-{size}")
    assert r.targets == ("q_proj", "k_proj", "v_proj", "o_proj") and r.d == d
    assert (r.lr, r.schedule, r.epochs, r.bf16, r.max_length) == (2e-4, "cosine", 2, True, 2048)
    assert r.task == "metamath" and r.head_lr is None


def test_every_paper_recipe_has_lora_r8_and_unilora_r4_same_d_baselines():
    paper = [r for r in recipes.RECIPES.values() if r.family in ("glue", "vit", "math") and r.method == "gpart"]
    assert len(paper) == 2 * 6 + 2 * 2 + 2
    for r in paper:
        lora, uni = recipes.get(r.name + "-lora"), recipes.get(r.name + "-unilora")
        assert lora.method == "lora" and lora.r == 8
        assert uni.method == "unilora" and uni.r == 4 and uni.d == r.d
        for b in (lora, uni):
            assert (b.model, b.task, b.targets) == (r.model, r.task, r.targets)


def test_get_returns_a_copy_and_unknown_names_suggest_close_ones():
    r = recipes.get("roberta-base-sst2")
    r.method_config["d"] = 1
    assert recipes.get("roberta-base-sst2").d == 23_040
    with pytest.raises(ConfigError, match="did you mean roberta-base-sst2"):
        recipes.get("roberta-base-sst")


def test_run_config_from_recipe_carries_values_and_overrides_win():
    c = engine.RunConfig.from_recipe("roberta-base-mrpc")
    r = recipes.get("roberta-base-mrpc")
    assert (c.model, c.task, c.method, c.d, c.lr, c.head_lr, c.epochs, c.batch_size, c.weight_decay, c.warmup,
            c.dropout, c.max_length, c.targets) == (r.model, r.task, "gpart", 23_040, r.lr, r.head_lr, 30, 32, 0.1,
                                                     0.06, 0.1, 512, ("query", "value"))
    c = engine.RunConfig.from_recipe("roberta-base-mrpc", steps=5, lr=1e-3, grad_accum=2)
    assert (c.steps, c.epochs, c.lr, c.grad_accum, c.per_device_batch_size) == (5, None, 1e-3, 2, None)
    c.validate()


# ------------------------------------------------------------------------------------------ cost
@pytest.mark.parametrize("name,layers,hidden", [("roberta-base-sst2", 12, 768), ("roberta-large-sst2", 24, 1024),
                                                ("vit-base-cifar10", 12, 768), ("vit-large-cifar100", 24, 1024)])
def test_cost_counts_query_value_weights_of_the_real_architecture(name, layers, hidden):
    c = recipes.cost(recipes.get(name))
    assert c["D"] == layers * 2 * hidden * hidden and c["adapted_layers"] == 2 * layers
    assert c["allreduce_bytes"] == 4 * (c["theta"] + c["head"])
    assert c["allreduce_bytes"] < 0.02 * c["full_ft_allreduce_bytes"]


def test_cost_of_roberta_base_sst2_in_numbers():
    c = recipes.cost(recipes.get("roberta-base-sst2"))
    head = (768 * 768 + 768) + (768 * 2 + 2)                 # RoBERTa's classifier: dense + out_proj
    assert (c["theta"], c["head"], c["allreduce_bytes"]) == (23_040, head, 4 * (23_040 + head))
    assert c["model_params"] == 124_647_170                  # RobertaForSequenceClassification, 2 labels
    lora = recipes.cost(recipes.get("roberta-base-sst2-lora"))
    assert lora["theta"] == 24 * 8 * (768 + 768)             # r (in + out) per adapted layer


def test_cost_of_the_causal_lm_recipes_counts_qkvo_with_grouped_kv_heads():
    qwen = recipes.cost(recipes.get("math-0.5b"))            # 24 layers, 896 wide, 2 kv heads of 64
    assert qwen["D"] == 24 * (2 * 896 * 896 + 2 * 896 * 128) and qwen["head"] == 0
    mistral = recipes.cost(recipes.get("math-7b"))           # 32 layers, 4096 wide, 8 kv heads of 128
    assert mistral["D"] == 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024)
    assert mistral["allreduce_bytes"] == 4 * 524_288
    assert abs(mistral["model_params"] / 7.24e9 - 1) < 0.01


def test_resolve_targets_maps_query_value_to_the_names_a_model_uses():
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel
    with torch.device("meta"):
        bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
        vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    assert [n.rsplit(".", 1)[-1] for n, _ in resolve_targets(bert, ("query", "value"))] == ["query", "value"]
    vit_names = [n.rsplit(".", 1)[-1] for n, _ in resolve_targets(vit, ("query", "value"))]
    assert len(vit_names) == 2 and set(vit_names) in ({"query", "value"}, {"q_proj", "v_proj"})
    from gpart_edu.errors import TargetError
    with pytest.raises(TargetError, match="matched no module"):
        resolve_targets(bert, ("nonexistent",))


def test_table_rows_for_the_readme():
    rows = recipes.table("glue")
    assert [r["recipe"] for r in rows][:2] == ["roberta-base-cola", "roberta-base-sst2"]
    assert {r["d"] for r in rows} == {23_040}
