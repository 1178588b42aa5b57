"""attach / merge / unmerge / detach / save / load, and every bad input the foundation rejects."""
import os
import re

import pytest
import torch
from torch import nn

import gpart_edu as ge
from gpart_edu.core.adapter import ADAPTER_ATTR

from .conftest import MODEL_KINDS, output_of, state_hash


def _trained(ad, seed=0, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ad.theta.add_(torch.randn(ad.num_trainable, generator=g, dtype=ad.theta.dtype) * scale)
    return ad


# ---------------------------------------------------------------------------- merge / detach
def test_merge_matches_unmerged_and_unmerge_restores(model_kind, method_case):
    name, cfg = method_case
    for dtype, fwd_tol, restore_rel in ((torch.float64, 1e-12, 1e-14), (torch.float32, 1e-5, 1e-6)):
        model, inputs, targets = MODEL_KINDS[model_kind](dtype)
        base = {k: v.clone() for k, v in model.state_dict().items()}
        ad = _trained(ge.attach(model, name, targets=targets, **cfg))
        unmerged = output_of(model, inputs)
        ad.merge()
        assert ad.merged
        assert torch.allclose(output_of(model, inputs), unmerged, atol=fwd_tol, rtol=fwd_tol)
        ad.unmerge()
        for k, v in base.items():
            now = model.state_dict()[k]
            assert (now - v).abs().max() <= restore_rel * max(v.abs().max().item(), 1.0)


def test_detach_restores_model_bit_for_bit(model_kind, method_case):
    name, cfg = method_case
    model, inputs, targets = MODEL_KINDS[model_kind](torch.float64)
    h0, y0 = state_hash(model), output_of(model, inputs)
    ad = _trained(ge.attach(model, name, targets=targets, **cfg))
    output_of(model, inputs).sum().backward()
    returned = ad.detach()
    assert returned is model
    for p in model.parameters():
        p.grad = None
    assert state_hash(model) == h0
    assert torch.equal(output_of(model, inputs), y0)
    assert not hasattr(model, ADAPTER_ATTR)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_disabled_context_runs_base_model():
    model, inputs, targets = MODEL_KINDS["bert"](torch.float64)
    y0 = output_of(model, inputs)
    ad = _trained(ge.attach(model, "gpart", d=20, targets=targets))
    with ad.disabled():
        assert torch.equal(output_of(model, inputs), y0)
    assert not torch.equal(output_of(model, inputs), y0)


def test_merge_refuses_non_finite_theta():
    model, inputs, targets = MODEL_KINDS["mlp"](torch.float64)
    ad = ge.attach(model, "gpart", d=10, targets=targets)
    with torch.no_grad():
        ad.theta[3] = float("nan")
    h0 = state_hash(model)
    with pytest.raises(ge.AttachError, match="non-finite"):
        ad.merge()
    assert state_hash(model) == h0 and not ad.merged


def test_merge_twice_and_unmerge_unmerged_are_errors():
    model, _, targets = MODEL_KINDS["mlp"](torch.float64)
    ad = ge.attach(model, "lora", r=2, targets=targets)
    with pytest.raises(ge.AttachError, match="not merged"):
        ad.unmerge()
    ad.merge()
    with pytest.raises(ge.AttachError, match="already merged"):
        ad.merge()


def test_unmerge_uses_theta_snapshot_from_merge():
    model, _, targets = MODEL_KINDS["mlp"](torch.float64)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ad = _trained(ge.attach(model, "gpart", d=10, targets=targets))
    ad.merge()
    with torch.no_grad():
        ad.theta.mul_(3)  # changing theta while merged must not corrupt the restore
    ad.unmerge()
    for k, v in base.items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-14)


# ---------------------------------------------------------------------------------- attach
def test_double_attach_is_an_error_and_changes_nothing():
    model, _, targets = MODEL_KINDS["bert"](torch.float64)
    ge.attach(model, "gpart", d=10, targets=targets)
    h = state_hash(model)
    with pytest.raises(ge.AttachError, match=r"already has a gpart_edu adapter attached \(gpart\).*detach"):
        ge.attach(model, "lora", r=2, targets=targets)
    assert state_hash(model) == h


def test_attach_to_submodule_of_adapted_model_is_an_error():
    model, _, targets = MODEL_KINDS["bert"](torch.float64)
    ge.attach(model, "gpart", d=10, targets=targets)
    with pytest.raises(ge.AttachError, match="on a submodule"):
        ge.attach(model.encoder, "gpart", d=10, targets=targets)


def test_detach_twice_is_an_error():
    model, _, targets = MODEL_KINDS["mlp"](torch.float64)
    ad = ge.attach(model, "gpart", d=10, targets=targets)
    ad.detach()
    with pytest.raises(ge.AttachError, match="detached"):
        ad.detach()
    ge.attach(model, "gpart", d=10, targets=targets)  # re-attaching after detach works


def test_unknown_method_lists_valid_ones():
    model, _, targets = MODEL_KINDS["mlp"](torch.float64)
    with pytest.raises(ge.ConfigError, match="unknown method 'dora'; valid methods: gpart, unilora, lora"):
        ge.attach(model, "dora", targets=targets)


def test_no_target_matched_lists_candidates():
    model, _, _ = MODEL_KINDS["bert"](torch.float64)
    with pytest.raises(ge.TargetError, match=r"matched no module; adaptable layers end in: .*dense.*query.*value"):
        ge.attach(model, "gpart", d=10, targets=["q_proj"])


def test_unsupported_layer_type_among_targets():
    model, _, _ = MODEL_KINDS["bert"](torch.float64)
    with pytest.raises(ge.UnsupportedLayerError, match=r"not nn.Linear or Conv1D: .*word_embeddings \(Embedding\)"):
        ge.attach(model, "gpart", d=10, targets=["word_embeddings"])


@pytest.mark.parametrize("method,cfg,pattern", [
    ("gpart", {"d": 0}, "d must be >= 1"),
    ("gpart", {"d": -1}, "d must be >= 1"),
    ("gpart", {"d": 2.0}, "d must be a positive integer"),
    ("gpart", {"d": 10**9}, r"d=1,000,000,000 exceeds D=\d"),
    ("gpart", {"d": 5, "assignment": "bogus"}, "unknown assignment"),
    ("unilora", {"d": 5, "r": 0}, "r must be >= 1"),
    ("lora", {"r": -2}, "r must be >= 1"),
    ("lora", {"r": 2, "alpha": 0}, "alpha must be a finite number > 0"),
    ("lora", {"r": 2, "alpha": float("nan")}, "alpha must be a finite number > 0"),
    ("gpart", {"d": 5, "rank": 3}, "valid options: d, seed, assignment, include_bias"),
])
def test_bad_config_is_clear_error_and_model_untouched(method, cfg, pattern):
    model, _, targets = MODEL_KINDS["bert"](torch.float64)
    h = state_hash(model)
    with pytest.raises(ge.ConfigError, match=pattern):
        ge.attach(model, method, targets=targets, **cfg)
    assert state_hash(model) == h and not hasattr(model, ADAPTER_ATTR)


def test_failed_attach_leaves_model_untouched_when_patching_fails(monkeypatch):
    model, _, targets = MODEL_KINDS["bert"](torch.float64)
    h = state_hash(model)
    import gpart_edu.core.adapter as A

    calls = {"n": 0}
    real = A._LayerForward.__init__

    def boom(self, *a, **k):  # fail half-way through redirecting layers
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure")
        real(self, *a, **k)

    monkeypatch.setattr(A._LayerForward, "__init__", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        ge.attach(model, "gpart", d=10, targets=targets)
    assert state_hash(model) == h and not hasattr(model, ADAPTER_ATTR)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_targets_regex_suffix_and_all_linear():
    model, _, _ = MODEL_KINDS["bert"](torch.float64)
    by_suffix = [n for n, _ in ge.find_targets(model, ["query", "value"])]
    by_regex = [n for n, _ in ge.find_targets(model, re.compile(r".*\.(query|value)"))]
    by_str = [n for n, _ in ge.find_targets(model, r"re:.*\.(query|value)")]
    assert by_suffix == by_regex == by_str and len(by_suffix) == 4
    all_lin = [n for n, m in ge.find_targets(model, "all-linear")]
    assert len(all_lin) == 2 * 6 + 1  # q, k, v, attn-out, intermediate, output per layer + pooler


def test_all_linear_skips_classification_head_and_auto_trains_it():
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=12, num_labels=3)
    model = BertForSequenceClassification(cfg)
    ad = ge.attach(model, "gpart", d=50, targets="all-linear")
    assert "classifier" not in [t.name for t in ad.targets]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["classifier.bias", "classifier.weight", f"{ADAPTER_ATTR}.theta"]
    ad.detach()
    ge.attach(model, "gpart", d=50, targets="all-linear", trainable=())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [f"{ADAPTER_ATTR}.theta"]


def test_nn_sequential_model_works():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    y0 = model(x)
    ad = ge.attach(model, "gpart", d=8, targets="all-linear")
    assert torch.equal(model(x), y0)
    _trained(ad)
    assert not torch.equal(model(x), y0)


def test_model_to_moves_theta_and_projection_state():
    model, inputs, targets = MODEL_KINDS["mlp"](torch.float32)
    ad = ge.attach(model, "gpart", d=10, targets=targets)
    model.double()
    assert ad.theta.dtype == torch.float64
    assert output_of(model, (inputs[0].double(),)).dtype == torch.float64


# ------------------------------------------------------------------------------ save / load
def test_save_load_roundtrip_bit_exact(tmp_path, model_kind, method_case):
    name, cfg = method_case
    model, inputs, targets = MODEL_KINDS[model_kind](torch.float32)
    ad = _trained(ge.attach(model, name, targets=targets, **cfg))
    y = output_of(model, inputs)
    path = ad.save(tmp_path / "a.safetensors")
    fresh, _, _ = MODEL_KINDS[model_kind](torch.float32)
    ad2 = ge.load_adapter(path, fresh)
    assert torch.equal(ad2.theta, ad.theta)
    assert torch.equal(output_of(fresh, inputs), y)
    assert ad2.method.config() == ad.method.config()


def test_adapter_file_size_is_about_4d_bytes(tmp_path):
    model, _, targets = MODEL_KINDS["bert"](torch.float32)
    d = 1000
    ad = ge.attach(model, "gpart", d=d, targets=targets)
    size = os.path.getsize(ad.save(tmp_path / "g.safetensors"))
    assert 4 * d < size < 4 * d + 2048


def test_load_onto_different_model_says_which_layers(tmp_path):
    model, _, targets = MODEL_KINDS["bert"](torch.float32)
    path = ge.attach(model, "gpart", d=10, targets=targets).save(tmp_path / "a.safetensors")
    from transformers import BertConfig, BertModel
    other = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=24))
    h = state_hash(other)
    with pytest.raises(ge.AttachError, match=r"encoder.layer.0.attention.self.query: saved \(16, 16\), model \(32, 32\)"):
        ge.load_adapter(path, other)
    gpt, _, _ = MODEL_KINDS["gpt2"](torch.float32)
    with pytest.raises(ge.AttachError, match="which this model lacks"):
        ge.load_adapter(path, gpt)
    assert state_hash(other) == h and not hasattr(other, ADAPTER_ATTR)


def test_load_with_wrong_method_is_an_error(tmp_path):
    model, _, targets = MODEL_KINDS["mlp"](torch.float32)
    path = ge.attach(model, "gpart", d=10, targets=targets).save(tmp_path / "a.safetensors")
    fresh, _, _ = MODEL_KINDS["mlp"](torch.float32)
    with pytest.raises(ge.ConfigError, match="holds a 'gpart' adapter, not 'lora'"):
        ge.load_adapter(path, fresh, method="lora")


def test_truncated_and_corrupted_files_are_rejected(tmp_path):
    model, _, targets = MODEL_KINDS["mlp"](torch.float32)
    ad = _trained(ge.attach(model, "gpart", d=40, targets=targets))
    path = ad.save(tmp_path / "a.safetensors")
    raw = path.read_bytes()
    fresh, _, _ = MODEL_KINDS["mlp"](torch.float32)
    (tmp_path / "trunc.safetensors").write_bytes(raw[:-10])
    with pytest.raises(ge.AdapterFileError, match="truncated or corrupted"):
        ge.load_adapter(tmp_path / "trunc.safetensors", fresh)
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF  # one byte of theta
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ge.AdapterFileError, match="checksum mismatch"):
        ge.load_adapter(tmp_path / "flip.safetensors", fresh)
    with pytest.raises(ge.AdapterFileError, match="does not exist"):
        ge.load_adapter(tmp_path / "missing.safetensors", fresh)
    assert not hasattr(fresh, ADAPTER_ATTR)


def test_unknown_format_version_is_rejected(tmp_path):
    from safetensors.torch import save_file
    save_file({"theta": torch.zeros(3)}, str(tmp_path / "v9.safetensors"),
              metadata={"format": "gpart_edu.adapter", "format_version": "9"})
    model, _, _ = MODEL_KINDS["mlp"](torch.float32)
    with pytest.raises(ge.AdapterFileError, match="format version '9'.*reads version 1"):
        ge.load_adapter(tmp_path / "v9.safetensors", model)


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    model, _, targets = MODEL_KINDS["mlp"](torch.float32)
    ad = ge.attach(model, "gpart", d=10, targets=targets)
    import gpart_edu.core.storage as S

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(S, "save_file", broken)
    with pytest.raises(OSError, match="simulated"):
        ad.save(tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_real_minilm_query_value(tmp_path):
    from .conftest import minilm_or_skip
    minilm_or_skip()
    from gpart_edu import assets
    model, tok = assets.load_classifier("minilm", num_labels=2)
    model.eval()
    enc = tok(["a short test", "another sentence here"], return_tensors="pt", padding=True)
    y0 = model(**enc).logits
    ad = ge.attach(model, "gpart", d=23_040, targets=["query", "value"])
    assert ad.D == 1_769_472 and ad.num_trainable == 23_040
    assert torch.equal(model(**enc).logits, y0)
    _trained(ad, scale=0.05)
    y1 = model(**enc).logits
    path = ad.save(tmp_path / "m.safetensors")
    fresh, _ = assets.load_classifier("minilm", num_labels=2)
    fresh.eval()
    ge.load_adapter(path, fresh)
    assert torch.equal(fresh(**enc).logits, y1)
