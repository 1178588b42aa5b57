"""The adapter's life cycle on paths the notebooks do not take (issue 14 A): every case is the right result or a
clear error raised before anything changes. Files written by hand use format version 1 (theta only), which
older gpart_edu wrote and this one still reads, so the checks of theta and the header are tested on their own."""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import gpart_edu as ge
from gpart_edu.core.adapter import ADAPTER_ATTR

from .conftest import MODEL_KINDS, output_of, state_hash


def tiny_bert_classifier(seed=0, dtype=torch.float64):
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                     max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_labels=3)
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg).to(dtype).eval()


IDS = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))


def write_v1(path, method, config, targets, theta):
    """A version-1 adapter file as older gpart_edu wrote it (fingerprint of the layers and sha256 of theta)."""
    text = "\n".join(",".join(map(str, t)) for t in targets)
    theta = theta.contiguous()
    meta = {"format": "gpart_edu.adapter", "format_version": "1", "method": method, "config": json.dumps(config),
            "targets": json.dumps(targets), "fingerprint": hashlib.sha256(text.encode()).hexdigest(),
            "theta_sha256": hashlib.sha256(theta.view(torch.uint8).numpy().tobytes()).hexdigest()}
    save_file({"theta": theta}, str(path), metadata=meta)
    return path


MLP_TARGETS = [["layers.0", "linear", 6, 9, True], ["layers.1", "linear", 9, 7, True]]


def mlp():
    return MODEL_KINDS["mlp"](torch.float64)[0]


# ------------------------------------------------------------------------------- 1 the trained head
def test_reload_restores_the_trained_head_and_the_file_stays_small(tmp_path):
    model = tiny_bert_classifier(seed=0)
    ad = ge.attach(model, "gpart", d=64, targets=["query", "value"])
    with torch.no_grad():
        ad.theta.normal_(0, 0.1)
        model.classifier.weight.normal_(0, 1.0)           # "trained" head
    want = model(IDS).logits
    path = ad.save(tmp_path / "a.safetensors")
    fresh = tiny_bert_classifier(seed=5)                   # same base weights? no: other seed gives other base
    fresh.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith(ADAPTER_ATTR) and not k.startswith("classifier")}, strict=False)
    ge.load_adapter(path, fresh)
    assert torch.allclose(fresh(IDS).logits, want, atol=1e-12, rtol=0)
    assert fresh.classifier.weight.requires_grad
    head = sum(p.numel() for p in model.classifier.parameters())
    size = path.stat().st_size
    assert 8 * (64 + head) <= size <= 8 * (64 + head) + 4096      # float64 model: 8 bytes per number + header


# ------------------------------------------------------------------------------- 2 low precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_theta_is_float32_on_low_precision_models_and_reload_keeps_it_exact(dtype, tmp_path):
    model = MODEL_KINDS["mlp"](torch.float32)[0].to(dtype)
    ad = ge.attach(model, "gpart", d=12, targets=["layers.0", "layers.1"], trainable=())
    assert ad.theta.dtype == torch.float32
    with torch.no_grad():
        ad.theta.copy_(1.0 + 1e-4 * torch.arange(12, dtype=torch.float32))     # not representable in bf16 / fp16
    y = model(torch.randn(2, 6, dtype=dtype))
    assert y.dtype == dtype
    y.float().sum().backward()
    assert ad.theta.grad is not None and ad.theta.grad.dtype == torch.float32
    path = ad.save(tmp_path / "a.safetensors")
    other = MODEL_KINDS["mlp"](torch.float32)[0].to(dtype)
    back = ge.load_adapter(path, other)
    assert back.theta.dtype == torch.float32 and torch.equal(back.theta.detach(), ad.theta.detach())
    assert ge.attach(mlp(), "gpart", d=4, targets=["layers.0"], theta_dtype=torch.float32).theta.dtype == torch.float32


def test_toy_fit_on_a_bf16_model_is_as_good_as_float32_theta():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    start = torch.full((32,), 3.0)
    goal = start + 0.1 * torch.randn(32, generator=torch.Generator().manual_seed(2))
    losses = {}
    for theta_dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 4, bias=False)).to(torch.bfloat16)
        ad = ge.attach(model, "gpart", d=32, targets=["0"], trainable=(), theta_dtype=theta_dtype)
        with torch.no_grad():
            ad.theta.copy_(goal)
            y = model(x).float()                          # reachable: theta = goal fits exactly
            ad.theta.copy_(start)
        opt = torch.optim.AdamW([ad.theta], lr=2e-3, weight_decay=0.0)
        for _ in range(150):
            opt.zero_grad()
            loss = (model(x).float() - y).square().mean()
            loss.backward()
            opt.step()
        losses[theta_dtype] = float(loss.detach())
    default = ge.attach(nn.Sequential(nn.Linear(8, 4)).to(torch.bfloat16), "gpart", d=4, targets=["0"], trainable=())
    assert default.theta.dtype == torch.float32                             # the default is the good one
    assert losses[torch.float32] < 0.25 * losses[torch.bfloat16], losses    # bf16 theta: AdamW's steps round away


# ------------------------------------------------------------------------------- 4 state dicts
def test_merged_state_dict_into_a_fresh_adapter_is_not_applied_twice():
    model, inputs, targets = MODEL_KINDS["mlp"](torch.float64)
    ad = ge.attach(model, "gpart", d=20, seed=3, targets=targets[:2])
    with torch.no_grad():
        ad.theta.normal_(0, 0.5)
    want = output_of(model, inputs)
    ad.merge()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    fresh, _, _ = MODEL_KINDS["mlp"](torch.float64)
    ad2 = ge.attach(fresh, "gpart", d=20, seed=3, targets=targets[:2])
    fresh.load_state_dict(sd)
    assert ad2.merged
    assert torch.allclose(output_of(fresh, inputs), want, atol=1e-12)
    ad2.unmerge()
    assert torch.allclose(output_of(fresh, inputs), want, atol=1e-12)


def test_state_dict_of_another_seed_is_refused_before_anything_loads():
    model, inputs, targets = MODEL_KINDS["mlp"](torch.float64)
    ad = ge.attach(model, "gpart", d=20, seed=3, targets=targets[:2])
    with torch.no_grad():
        ad.theta.normal_(0, 0.5)
    sd = model.state_dict()
    other, _, _ = MODEL_KINDS["mlp"](torch.float64)
    ge.attach(other, "gpart", d=20, seed=4, targets=targets[:2])
    before = state_hash(other)
    with pytest.raises(ge.AttachError, match="different adapter"):
        other.load_state_dict(sd)
    assert state_hash(other) == before


# ------------------------------------------------------------------------------- 5 checksum over the header
@pytest.mark.parametrize("field,old,new", [("seed", 3, 4), ("alpha", 4.0, 5.0), ("include_bias", False, True)])
def test_one_changed_header_value_is_refused(field, old, new, tmp_path):
    model = mlp()
    kw = {"alpha": 4.0, "r": 2} if field == "alpha" else {"d": 20, "include_bias": False}
    method = "lora" if field == "alpha" else "gpart"
    ad = ge.attach(model, method, seed=3, targets=["layers.0", "layers.1"], **kw)
    path = ad.save(tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    assert config[field] == old
    config[field] = new
    meta["config"] = json.dumps(config, sort_keys=True)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ge.AdapterFileError, match="checksum"):
        ge.load_adapter(path, mlp())


# ------------------------------------------------------------------------------- 6 tied weights
def test_two_targets_sharing_one_parameter_are_refused():
    shared = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5))
    shared[1].weight = shared[0].weight
    before = state_hash(shared)
    with pytest.raises(ge.AttachError, match=r"1\.weight is tied to 0\.weight|0\.weight is tied to 1\.weight"):
        ge.attach(shared, "gpart", d=10, targets=["0", "1"])
    assert state_hash(shared) == before and ge.get_adapter(shared) is None


def test_gpt2_lm_head_tied_to_the_input_embeddings_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ge.AttachError, match="lm_head.weight is tied to transformer.wte.weight"):
        ge.attach(model, "gpart", d=10, targets=["lm_head"])
    assert ge.get_adapter(model) is None


# ------------------------------------------------------------------------------- 8 exact names, base weights
def test_other_pretrained_weights_are_named_and_refused_unless_overridden(tmp_path):
    model, inputs, targets = MODEL_KINDS["bert"](torch.float64)
    path = ge.attach(model, "gpart", d=30, targets=targets).save(tmp_path / "a.safetensors")
    torch.manual_seed(7)
    other = type(model)(model.config).to(torch.float64).eval()            # same architecture, other weights
    before = state_hash(other)
    with pytest.raises(ge.AdapterFileError, match=r"other base weights .*encoder\.layer\.0\.attention\.self\.query"):
        ge.load_adapter(path, other)
    assert state_hash(other) == before
    with pytest.warns(UserWarning, match="other base weights"):
        ge.load_adapter(path, other, base_mismatch="warn")
    same_bf16 = MODEL_KINDS["bert"](torch.float64)[0].to(torch.bfloat16)  # the same weights rounded: accepted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ge.load_adapter(path, same_bf16)


class WithExtra(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.add_module("0", nn.Linear(4, 4))
        self.extra = nn.Sequential(nn.Linear(4, 4))

    def forward(self, x):
        return self.extra(getattr(self, "0")(x))


def test_saved_names_match_exactly_not_as_suffixes(tmp_path):
    model, x = WithExtra().double(), torch.randn(3, 4, dtype=torch.float64)
    ad = ge.attach(model, "gpart", d=6, seed=1, targets=re.compile("0"))
    with torch.no_grad():
        ad.theta.normal_()
    want = model(x)
    path = ad.save(tmp_path / "a.safetensors")
    back = ge.load_adapter(path, WithExtra().double())
    assert [t.name for t in back.targets] == ["0"]
    assert torch.allclose(back.model(x), want, atol=1e-12)


# ------------------------------------------------------------------------------- 9 typos
def test_trainable_typo_as_a_string_is_an_error():
    model = tiny_bert_classifier()
    before = state_hash(model)
    with pytest.raises(ge.ConfigError, match="clasifier"):
        ge.attach(model, "gpart", d=20, targets=["query"], trainable="clasifier")
    assert state_hash(model) == before


def test_unilora_init_scale_zero_is_an_error():
    with pytest.raises(ge.ConfigError, match="init_scale"):
        ge.attach(mlp(), "unilora", d=10, r=2, init_scale=0, targets=["layers.0"])


# ------------------------------------------------------------------------------- 10, 11, 12 files
@pytest.mark.parametrize("theta,match", [(torch.zeros(1), "1 entries"), (torch.zeros(25), "25 entries"),
                                         (torch.full((20,), float("nan")), "non-finite"),
                                         (torch.zeros(4, 5), "1-D")])
def test_bad_theta_is_refused_before_the_model_changes_and_a_retry_works(theta, match, tmp_path):
    bad = write_v1(tmp_path / "bad.safetensors", "gpart", {"d": 20, "seed": 0}, MLP_TARGETS, theta)
    good = write_v1(tmp_path / "good.safetensors", "gpart", {"d": 20, "seed": 0}, MLP_TARGETS, torch.ones(20))
    model = mlp()
    before = state_hash(model)
    with pytest.raises(ge.AdapterFileError, match=match):
        ge.load_adapter(bad, model)
    assert state_hash(model) == before and ge.get_adapter(model) is None
    with pytest.warns(UserWarning, match="version-1"):
        ad = ge.load_adapter(good, model)                  # old files load, with a warning to re-save
    assert torch.equal(ad.theta.detach(), torch.ones(20, dtype=torch.float64))


@pytest.mark.parametrize("config,targets,match", [
    ({"r": 10 ** 6, "alpha": 1.0, "seed": 0}, MLP_TARGETS, "r=1000000"),                   # r > min(in, out)
    ({"d": 20, "seed": "0"}, MLP_TARGETS, "seed"),                                          # config types
    ({"d": 10 ** 9, "seed": 0}, MLP_TARGETS, "d=1000000000"),                                # d > D
    ({"d": 20, "seed": 0}, [["a", "linear", 1 << 25, 1 << 25, False]], "in_features"),     # huge layers
    ({"d": 20, "seed": 0}, [["a", "linear", 1 << 22, 1 << 22, False]] * 1, "limit"),        # D beyond the bound
])
def test_header_is_bounded_before_anything_is_allocated(config, targets, match, tmp_path):
    method = "lora" if "alpha" in config else "gpart"
    path = write_v1(tmp_path / "h.safetensors", method, config, targets, torch.zeros(20))
    with pytest.raises(ge.AdapterFileError, match=match):
        ge.core.storage.read_adapter(path)                   # what `gpart-edu verify --adapter` reads


@pytest.mark.parametrize("config,match", [("[1, 2]", "JSON object"), ("[" * 100_000 + "]" * 100_000, "header")])
def test_malformed_config_header_is_a_clear_error(config, match, tmp_path):
    path = write_v1(tmp_path / "c.safetensors", "gpart", {}, MLP_TARGETS, torch.zeros(20))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["config"] = config
    save_file({"theta": torch.zeros(20)}, str(path), metadata=meta)
    with pytest.raises(ge.AdapterFileError, match=match):
        ge.load_adapter(path, mlp())


# ------------------------------------------------------------------------------- 14 clear errors
def test_loading_where_the_saved_layer_is_not_linear_names_it(tmp_path):
    path = ge.attach(mlp(), "gpart", d=20, targets=["layers.0", "layers.1"]).save(tmp_path / "a.safetensors")
    model = mlp()
    model.layers[1] = nn.ReLU()
    with pytest.raises(ge.AttachError, match=r"layers\.1 \(ReLU\).*not nn\.Linear"):
        ge.load_adapter(path, model)


def test_attach_on_the_meta_device_is_a_clear_error():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ge.AttachError, match="meta device"):
        ge.attach(model, "gpart", d=4, targets=["0"])
    assert ge.get_adapter(model) is None


def test_fit_while_merged_is_a_clear_error():
    from gpart_edu.finetune import train
    model, (x,), targets = MODEL_KINDS["mlp"](torch.float32)
    ad = ge.attach(model, "gpart", d=8, targets=targets[:2], trainable=())
    ad.merge()
    with pytest.raises(ge.AttachError, match="unmerge"):
        train.fit(model, (x, torch.randint(0, 3, (5,))), config=train.TrainConfig(steps=2, batch_size=5))
    with torch.no_grad():
        model.eval()(x)                                   # inference while merged still works


# ------------------------------------------------------------------------------- 15 small things
def test_saved_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = ge.attach(mlp(), "gpart", d=4, targets=["layers.0"]).save(tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_saving_through_a_symlink_keeps_the_link(tmp_path):
    real = tmp_path / "real.safetensors"
    real.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    ge.attach(mlp(), "gpart", d=4, targets=["layers.0"]).save(link)
    assert link.is_symlink() and real.stat().st_size > 3


def test_a_killed_saves_temporary_file_is_cleaned_by_the_next_save(tmp_path):
    dead = 2 ** 22 + 12345                                  # beyond pid_max on most systems: no such process
    stale = tmp_path / f".a.safetensors.{dead}.x1y2.tmp"
    stale.write_bytes(b"\0" * 1000)
    ge.attach(mlp(), "gpart", d=4, targets=["layers.0"]).save(tmp_path / "a.safetensors")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ad = ge.attach(mlp(), "gpart", d=4, targets=["layers.0"])
    ad.save("~/a.safetensors")
    assert (tmp_path / "a.safetensors").is_file()
    ad.detach()
    assert ge.load_adapter("~/a.safetensors", ad.model or mlp()).num_trainable == 4


def test_disabled_documents_that_it_is_not_thread_safe():
    assert "thread" in ge.Adapter.disabled.__doc__.lower()


# ------------------------------------------------------------------------------- 7 memory of the ids
def test_balanced_ids_are_the_same_permutation_as_before():
    P = ge.PartitionProjection(10_007, 97, seed=5)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(P.group_ids(), torch.randperm(10_007, generator=g) % 97)     # saved adapters keep their P


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM (Linux)")
def test_balanced_ids_peak_memory_is_about_4_bytes_per_weight():
    import subprocess
    import sys
    # VmHWM is the child's own peak (ru_maxrss would carry pytest's larger peak across exec and read 0 extra)
    child = ("import torch\nfrom gpart_edu.core.projections import PartitionProjection\n"
             "def peak():\n    return next(int(x.split()[1]) for x in open('/proc/self/status') if "
             "x.startswith('VmHWM:')) * 1024\n"
             "P = PartitionProjection(20_000_000, 10_000, seed=0)\nbase = peak()\nP.index(0, 1)\n"
             "print(peak() - base)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(ge.__file__)))
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root))
    per_weight = int(out.stdout.split()[-1]) / 20_000_000
    assert per_weight < 6, f"{per_weight:.2f} B per weight (the int64 recipe needs about 16)"


def test_measured_id_memory_is_read_from_the_benchmark_file():
    from gpart_edu.finetune import measured
    rows = measured.id_memory()
    assert set(rows) == {"balanced", "hashed", "old-balanced-int64"}
    assert all(r["D"] == 10 ** 8 and r["bytes_per_weight"] == r["peak_extra_bytes"] / r["D"] for r in rows.values())
    assert rows["balanced"]["bytes_per_weight"] < 6 < rows["old-balanced-int64"]["bytes_per_weight"]


def test_detach_removes_the_state_dict_check_also_on_a_deep_copy():
    import copy
    model, _, targets = MODEL_KINDS["mlp"](torch.float64)
    n0 = len(model._load_state_dict_pre_hooks)
    ad = ge.attach(model, "gpart", d=10, targets=targets[:2])
    clone = copy.deepcopy(model)
    ge.get_adapter(clone).detach()
    assert len(clone._load_state_dict_pre_hooks) == n0 and len(model._load_state_dict_pre_hooks) == n0 + 1
    ad.detach()
    assert len(model._load_state_dict_pre_hooks) == n0


def test_a_head_the_model_lacks_is_an_error_unless_head_false(tmp_path):
    model = tiny_bert_classifier()
    ad = ge.attach(model, "gpart", d=20, targets=["query"])
    path = ad.save(tmp_path / "a.safetensors")
    other = tiny_bert_classifier()
    other.classifier = nn.Linear(16, 5).double()                           # another number of labels
    with pytest.raises(ge.AttachError, match="head=False"):
        ge.load_adapter(path, other)
    assert ge.get_adapter(other) is None
    back = ge.load_adapter(path, other, head=False)
    assert torch.equal(back.theta.detach(), ad.theta.detach()) and other.classifier.out_features == 5
