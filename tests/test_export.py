"""Leaving gpart_edu: merge_and_unload gives a plain model; save_pretrained with an adapter attached keeps Delta W;
peft-style aliases (unload, disable_adapter, print_trainable_parameters)."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

import gpart_edu as ge
from gpart_edu import AttachError
from gpart_edu.core.adapter import ADAPTER_ATTR
from gpart_edu.core.export import SavePretrainedGuard

from .conftest import state_hash

CASES = {"gpart": {"d": 60, "seed": 1}, "gpart-bias": {"d": 60, "include_bias": True},
         "unilora": {"d": 40, "r": 2}, "lora": {"r": 2, "alpha": 4.0}}
IDS = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
TOL = 1e-5


def tiny_cls():
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                     max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).eval()


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def trained(case):
    model = tiny_cls()
    cfg = dict(CASES[case])
    adapter = ge.attach(model, case.split("-")[0], targets=["query", "value"], **cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        adapter.theta.add_(0.3 * torch.randn(adapter.theta.shape, generator=g))
        model.classifier.weight.add_(0.3 * torch.randn(model.classifier.weight.shape, generator=g))
    return model, adapter


def reload(path):
    from transformers import AutoModelForSequenceClassification
    return AutoModelForSequenceClassification.from_pretrained(path).eval()


@pytest.mark.parametrize("case", list(CASES))
def test_merge_and_unload_gives_a_plain_model_that_reloads_with_the_same_logits(tmp_path, case):
    model, adapter = trained(case)
    want = logits(model)
    assert (want - logits(tiny_cls())).abs().max() > 1e-2                 # the control: the adapter matters
    plain = adapter.merge_and_unload()
    assert plain is model and not hasattr(plain, ADAPTER_ATTR) and ge.get_adapter(plain) is None
    assert "save_pretrained" not in plain.__dict__ and all("forward" not in m.__dict__ for m in plain.modules())
    assert (logits(plain) - want).abs().max().item() <= TOL
    plain.save_pretrained(tmp_path / "plain")
    assert (logits(reload(tmp_path / "plain")) - want).abs().max().item() <= TOL
    assert adapter.model is None
    with pytest.raises(AttachError, match="detached"):
        adapter.merge_and_unload()


def test_merge_and_unload_of_a_merged_adapter_keeps_the_merge():
    model, adapter = trained("gpart")
    adapter.merge()
    want = logits(model)
    adapter.merge_and_unload()
    assert (logits(model) - want).abs().max().item() == 0


def test_merge_and_unload_refuses_nonfinite_theta_untouched():
    model, adapter = trained("lora")
    with torch.no_grad():
        adapter.theta[0] = float("nan")
    h = state_hash(model)
    with pytest.raises(AttachError, match="non-finite"):
        adapter.merge_and_unload()
    assert state_hash(model) == h and ge.get_adapter(model) is adapter


@pytest.mark.parametrize("case", list(CASES))
def test_save_pretrained_with_an_attached_adapter_saves_the_adapted_model(tmp_path, case):
    model, adapter = trained(case)
    want = logits(model)
    h = state_hash(model)
    model.save_pretrained(tmp_path / "m")
    assert state_hash(model) == h, "saving must not change the model"
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if ADAPTER_ATTR in k]
    assert (logits(reload(tmp_path / "m")) - want).abs().max().item() <= TOL
    # disabled: the model computes W0 and saves W0 (with the head it has)
    with adapter.disable_adapter():
        base_now = logits(model)
        model.save_pretrained(tmp_path / "off")
    assert (logits(reload(tmp_path / "off")) - base_now).abs().max().item() <= TOL
    # merged: the merged weights, once
    adapter.merge()
    model.save_pretrained(tmp_path / "merged")
    assert (logits(reload(tmp_path / "merged")) - want).abs().max().item() <= TOL


def test_explicit_state_dict_is_respected_and_detach_removes_the_guard(tmp_path):
    model, adapter = trained("gpart")
    assert isinstance(model.__dict__["save_pretrained"], SavePretrainedGuard)
    sd = {k: v for k, v in model.state_dict().items() if ADAPTER_ATTR not in k}
    model.save_pretrained(tmp_path / "raw", state_dict=sd)                 # the caller's choice: W0
    with torch.no_grad():
        base = logits(reload(tmp_path / "raw"))
    with adapter.disabled():
        assert (base - logits(model)).abs().max().item() <= TOL
    adapter.detach()
    assert "save_pretrained" not in model.__dict__


def test_copies_of_an_adapted_model_save_their_own_adapter(tmp_path):
    model, adapter = trained("lora")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        ge.get_adapter(twin).theta.mul_(2)
    twin.save_pretrained(tmp_path / "twin")
    assert (logits(reload(tmp_path / "twin")) - logits(twin)).abs().max().item() <= TOL
    assert (logits(twin) - logits(model)).abs().max() > 1e-3


def test_tied_adapted_weight_is_refused_clearly(tmp_path):
    model = tiny_cls()
    ge.attach(model, "gpart", d=20, targets=["layer.0.attention.self.query"])
    model.bert.encoder.layer[1].attention.self.query.weight = model.bert.encoder.layer[0].attention.self.query.weight
    with pytest.raises(AttachError, match="is tied to"):
        model.save_pretrained(tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_unload_is_detach_and_restores_the_original_weights():
    model, adapter = trained("unilora")
    base = tiny_cls()
    base.classifier.load_state_dict(model.classifier.state_dict())
    adapter.merge()
    assert adapter.unload() is model and ge.get_adapter(model) is None
    assert (logits(model) - logits(base)).abs().max().item() <= 1e-6


def test_print_trainable_parameters_counts_theta_and_head(capsys):
    model, adapter = trained("gpart")
    adapter.print_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    head = model.classifier.weight.numel() + model.classifier.bias.numel()
    assert capsys.readouterr().out.strip() == (f"trainable params: {60 + head:,} || all params: {total:,} || "
                                               f"trainable%: {100 * (60 + head) / total:.4f}")
