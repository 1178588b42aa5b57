"""peft interop: peft LoRA / Uni-LoRA folders (made with peft here) and the official GPart fork's checkpoints
(tests/fixtures/official_gpart) load with identical logits; adapters export back to folders peft loads."""
from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gpart_edu as ge
from gpart_edu import AdapterFileError, AttachError, ConfigError
from gpart_edu.core import peft_format
from gpart_edu.core.adapter import ADAPTER_ATTR

from .conftest import state_hash

peft = pytest.importorskip("peft")
FIX = Path(__file__).parent / "fixtures" / "official_gpart"
CASES = ("qv_materialized_seed7", "qv_stateless_seed42", "all_stateless_seed3")
TOL = 1e-5                        # fp32 logits


def tiny_cls(seed=0, labels=3):
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                     max_position_embeddings=32, num_labels=labels, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return GPT2Model(cfg).eval()


IDS = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))


def out(model):
    with torch.no_grad():
        o = model(IDS)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def perturb(peft_model, seed=1):
    """Give every trainable peft tensor (B factors, theta_d, the saved head) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def peft_folder(tmp_path, base, config, name="adapter"):
    m = peft.get_peft_model(copy.deepcopy(base), config)
    perturb(m)
    m.eval()
    m.save_pretrained(tmp_path / name)
    return m, tmp_path / name


def lora_cfg(**kw):
    kw = {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"], "modules_to_save": ["classifier"], **kw}
    return peft.LoraConfig(**kw)


def unilora_cfg(**kw):
    kw = {"r": 2, "theta_d_length": 40, "target_modules": ["query", "value"], "modules_to_save": ["classifier"],
          "proj_seed": 5, **kw}
    return peft.UniLoraConfig(**kw)


# --------------------------------------------------------------------------------- peft -> gpart_edu
@pytest.mark.parametrize("make, base", [
    (lambda: lora_cfg(), tiny_cls),
    (lambda: lora_cfg(use_rslora=True, r=4, lora_alpha=3), tiny_cls),
    (lambda: lora_cfg(target_modules=["query", "key", "value", "dense"]), tiny_cls),
    (lambda: peft.LoraConfig(r=2, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True),
     tiny_gpt2),
    (lambda: unilora_cfg(), tiny_cls),
    (lambda: unilora_cfg(save_indices=True, proj_seed=11), tiny_cls),
    (lambda: peft.UniLoraConfig(r=2, theta_d_length=50, target_modules=["c_attn"], fan_in_fan_out=True), tiny_gpt2),
], ids=["lora", "rslora", "lora-dense", "lora-gpt2", "unilora", "unilora-saved-indices", "unilora-gpt2"])
def test_peft_folder_loads_with_identical_logits(tmp_path, make, base):
    model = base()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm, path = peft_folder(tmp_path, model, make())
    want = out(pm)
    assert (want - out(model)).abs().max() > 1e-2, "the control: the peft adapter changes the output"
    mine = copy.deepcopy(model)
    adapter = ge.load_peft(path, mine)
    got = out(mine)
    assert (got - want).abs().max().item() <= TOL
    # the same Delta W per layer as peft's own
    for t in adapter.targets:
        layer = pm.base_model.model.get_submodule(t.name)
        assert torch.allclose(adapter.delta_weights()[t.name + ".weight"], layer.get_delta_weight("default"),
                              atol=1e-6, rtol=0)


def test_peft_lora_gradients_match_gpart_edu(tmp_path):
    model = tiny_cls()
    pm, path = peft_folder(tmp_path, model, lora_cfg())
    mine = copy.deepcopy(model)
    adapter = ge.load_peft(path, mine)
    target = torch.tensor([0, 2, 1])
    torch.nn.functional.cross_entropy(pm(IDS).logits, target).backward()
    torch.nn.functional.cross_entropy(mine(IDS).logits, target).backward()
    grads = []
    for t in adapter.targets:
        layer = pm.base_model.model.get_submodule(t.name)
        grads += [layer.lora_A["default"].weight.grad.reshape(-1), layer.lora_B["default"].weight.grad.reshape(-1)]
    assert torch.allclose(adapter.theta.grad, torch.cat(grads), atol=1e-6, rtol=0)


def test_imported_head_is_the_saved_head_and_trainable(tmp_path):
    model = tiny_cls()
    _, path = peft_folder(tmp_path, model, unilora_cfg())
    saved = load_file(path / peft_format.WEIGHTS_FILE)
    adapter = ge.load_peft(path, model)
    assert torch.equal(model.classifier.weight, saved["base_model.model.classifier.weight"])
    assert model.classifier.weight.requires_grad and adapter.trainable_names == ["classifier.weight",
                                                                                  "classifier.bias"]
    assert adapter.method.P.assignment == "peft-balanced"


# ------------------------------------------------------------------------------- gpart_edu -> peft
def _trained(model, method, **cfg):
    adapter = ge.attach(model, method, targets=["query", "value"], **cfg)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        adapter.theta.add_(0.3 * torch.randn(adapter.theta.shape, generator=g))
        model.classifier.weight.add_(0.3 * torch.randn(model.classifier.weight.shape, generator=g))
    return adapter


@pytest.mark.parametrize("method, cfg", [
    ("lora", {"r": 3, "alpha": 6.0}),
    ("unilora", {"d": 40, "r": 2, "seed": 2, "assignment": "peft-balanced"}),
    ("unilora", {"d": 40, "r": 2, "seed": 2}),                       # balanced: exported with its indices
    ("unilora", {"d": 40, "r": 2, "seed": 2, "assignment": "hashed"}),
], ids=["lora", "unilora-peft-balanced", "unilora-balanced", "unilora-hashed"])
def test_save_peft_loads_in_peft_with_identical_logits(tmp_path, method, cfg):
    base = tiny_cls()
    model = copy.deepcopy(base)
    adapter = _trained(model, method, **cfg)
    want = out(model)
    adapter.save_peft(tmp_path / "out")
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "out").eval()
    assert (out(pm) - want).abs().max().item() <= TOL
    config = json.loads((tmp_path / "out" / peft_format.CONFIG_FILE).read_text())
    assert config["save_indices" if method == "unilora" else "r"] == (
        cfg.get("assignment") != "peft-balanced" if method == "unilora" else 3)
    # and back: the same map and assignment
    again = copy.deepcopy(base)
    back = ge.load_peft(tmp_path / "out", again)
    assert (out(again) - want).abs().max().item() <= TOL
    assert back.method.config() == adapter.method.config()


@pytest.mark.parametrize("assignment", ["multinomial", "stateless"])
def test_gpart_exports_the_forks_format_and_reloads(tmp_path, assignment):
    base = tiny_cls()
    model = copy.deepcopy(base)
    adapter = _trained(model, "gpart", d=60, seed=3, assignment=assignment, include_bias=True)
    want = out(model)
    adapter.save_peft(tmp_path / "g")
    config = json.loads((tmp_path / "g" / peft_format.CONFIG_FILE).read_text())
    assert (config["peft_type"], config["assignment_backend"], config["bias"], config["d"], config["proj_seed"]) == \
        ("GPART", {"multinomial": "materialized", "stateless": "stateless"}[assignment], "gpart_only", 60, 3)
    again = copy.deepcopy(base)
    ge.load_peft(tmp_path / "g", again)
    assert (out(again) - want).abs().max().item() <= TOL


@pytest.mark.parametrize("assignment", ["balanced", "hashed"])
def test_gpart_export_of_other_assignments_names_the_one_to_use(tmp_path, assignment):
    adapter = _trained(tiny_cls(), "gpart", d=60, assignment=assignment)
    with pytest.raises(ConfigError, match=f"uses '{assignment}': train with assignment='multinomial'"):
        adapter.save_peft(tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_save_peft_overwrites_an_existing_folder_whole(tmp_path):
    model = tiny_cls()
    adapter = _trained(model, "lora", r=2)
    adapter.save_peft(tmp_path / "o")
    with torch.no_grad():
        adapter.theta.mul_(2)
    adapter.save_peft(tmp_path / "o")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [peft_format.CONFIG_FILE, peft_format.WEIGHTS_FILE]
    fresh = tiny_cls()
    assert torch.equal(ge.load_peft(tmp_path / "o", fresh).theta, adapter.theta)


# ------------------------------------------------------------------------- the official fork's checkpoints
def fork_base():
    from transformers import AutoModelForSequenceClassification
    return AutoModelForSequenceClassification.from_pretrained(FIX / "base").eval()


EXPECTED = load_file(FIX / "expected.safetensors")


def fork_logits(model):
    with torch.no_grad():
        return model(input_ids=EXPECTED["input_ids"], attention_mask=EXPECTED["attention_mask"]).logits


@pytest.mark.parametrize("case", CASES)
def test_official_fork_checkpoint_reproduces_the_forks_logits(case):
    model = fork_base()
    assert (fork_logits(model) - EXPECTED["base_logits"]).abs().max() <= TOL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = ge.load_peft(FIX / case, model)
    diff = (fork_logits(model) - EXPECTED[f"{case}.logits"]).abs().max().item()
    assert diff <= TOL, diff
    assert (EXPECTED[f"{case}.logits"] - EXPECTED["base_logits"]).abs().max() > 0.1    # the control
    cfg = json.loads((FIX / case / peft_format.CONFIG_FILE).read_text())
    assert adapter.method.P.assignment == {"materialized": "multinomial", "stateless": "stateless"}[
        cfg["assignment_backend"]]
    empty = int((adapter.method.P.counts == 0).sum())
    assert (empty > 0) == any("groups of the fork's partition are empty" in str(w.message) for w in caught)
    assert empty == (9 if case == "all_stateless_seed3" else 0)


def test_the_lab_works_on_an_imported_fork_checkpoint():
    from gpart_edu.lab import geometry, jacobian
    model = fork_base()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = ge.load_peft(FIX / "all_stateless_seed3", model)
    pc = geometry.partition_check(adapter.method.P, recount=True)
    assert pc["empty"] == 9 and pc["max_abs"] == 1.0           # 9 zero columns: P^T P = I fails there
    s = jacobian.singular_value_sample(adapter.method, m=200)
    assert abs(s.max() - 1) < 1e-12 and s.min() >= 0
    good = ge.load_peft(FIX / "qv_materialized_seed7", fork_base())
    r = geometry.distance_ratios(good.method, n_pairs=5)
    assert abs(r - 1).max() < 1e-12


def test_fork_checkpoint_round_trips_to_the_same_files(tmp_path):
    model = fork_base()
    adapter = ge.load_peft(FIX / "qv_stateless_seed42", model)
    adapter.save_peft(tmp_path / "again")
    mine = json.loads((tmp_path / "again" / peft_format.CONFIG_FILE).read_text())
    theirs = json.loads((FIX / "qv_stateless_seed42" / peft_format.CONFIG_FILE).read_text())
    for key in ("peft_type", "d", "proj_seed", "assignment_backend", "bias", "grouping_strategy", "isometric",
                "partition_scope", "projection_type"):
        assert mine[key] == theirs[key], key
    a, b = load_file(tmp_path / "again" / peft_format.WEIGHTS_FILE), load_file(FIX / "qv_stateless_seed42" /
                                                                                  peft_format.WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stateless_seeds_are_shifted_streams_and_gpart_edu_seeds_are_not():
    from gpart_edu.core.projections import hashed_group_ids, stateless_group_ids
    s0, s1 = stateless_group_ids(42, 0, 10_001, 500), stateless_group_ids(43, 0, 10_000, 500)
    assert torch.equal(s1, s0[1:])
    h0, h1 = hashed_group_ids(42, 0, 10_001, 500), hashed_group_ids(43, 0, 10_000, 500)
    assert (h1 == h0[1:]).float().mean() < 0.01 and (h1 == h0[:-1]).float().mean() < 0.01


# ------------------------------------------------------------------------------------- errors
def _edit(tmp_path, case, **changes):
    dst = tmp_path / "edited"
    shutil.copytree(FIX / case, dst)
    cfg = json.loads((dst / peft_format.CONFIG_FILE).read_text())
    cfg.update(changes)
    (dst / peft_format.CONFIG_FILE).chmod(0o644)
    (dst / peft_format.CONFIG_FILE).write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("changes, pattern", [
    ({"grouping_strategy": "contiguous"}, "option grouping_strategy='contiguous' is not supported"),
    ({"isometric": False}, "option isometric=False is not supported"),
    ({"partition_scope": "layer"}, "option partition_scope='layer'"),
    ({"bias": "all"}, r"option bias='all' is not supported by gpart_edu \(it reproduces bias in \['none', "
                      r"'gpart_only'\]\)"),
    ({"assignment_backend": "hashed"}, "assignment_backend='hashed'"),
    ({"layers_to_transform": [0]}, "option layers_to_transform=\\[0\\]"),
    ({"some_new_option": 3}, "option some_new_option=3 is not supported"),
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported; gpart_edu reads LORA, UNILORA, GPART"),
])
def test_unsupported_fork_options_name_the_option_and_leave_the_model_untouched(tmp_path, changes, pattern):
    path = _edit(tmp_path, "qv_stateless_seed42", **changes)
    model = fork_base()
    h = state_hash(model)
    with pytest.raises(ConfigError, match=pattern):
        ge.load_peft(path, model)
    assert state_hash(model) == h and ge.get_adapter(model) is None


@pytest.mark.parametrize("cfg, pattern", [
    (lambda: lora_cfg(use_dora=True), "option use_dora=True is not supported"),
    (lambda: lora_cfg(rank_pattern={"value": 4}), r"rank_pattern=\{'value': 4\} gives layers their own rank"),
    (lambda: lora_cfg(alpha_pattern={"query": 1}), "alpha_pattern"),
    (lambda: lora_cfg(bias="lora_only"), "option bias='lora_only'"),
])
def test_unsupported_lora_options_name_the_option(tmp_path, cfg, pattern):
    model = tiny_cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, path = peft_folder(tmp_path, model, cfg())
    h = state_hash(model)
    with pytest.raises(ConfigError, match=pattern):
        ge.load_peft(path, model)
    assert state_hash(model) == h and ge.get_adapter(model) is None


def test_wrong_model_missing_files_and_corruption_are_clear_errors(tmp_path):
    model = tiny_cls()
    _, path = peft_folder(tmp_path, model, lora_cfg())
    other = tiny_cls(labels=5)                               # a different head
    h = state_hash(other)
    with pytest.raises(AttachError, match=r"head tensor classifier\.(weight|bias) has shape \(3, ?(16)?\)"):
        ge.load_peft(path, other)
    assert state_hash(other) == h
    with pytest.raises(AttachError, match="(no parameter of this model|which this model lacks); load the adapter onto"):
        ge.load_peft(path, tiny_gpt2())
    with pytest.raises(AdapterFileError, match="not a folder"):
        ge.load_peft(tmp_path / "nothing", model)
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    data = (broken / peft_format.WEIGHTS_FILE).read_bytes()
    (broken / peft_format.WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="truncated or corrupted"):
        ge.load_peft(broken, model)
    (broken / peft_format.WEIGHTS_FILE).unlink()
    save_file({"x": torch.zeros(1)}, broken / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match="adapter_model.bin \\(a pickle\\)"):
        ge.load_peft(broken, model)
    with pytest.raises(TypeError, match="note the order: load_peft\\(path, model\\)"):
        ge.load_peft(model, path)
    assert ge.get_adapter(model) is None


def test_loading_onto_a_model_with_an_adapter_is_refused_untouched(tmp_path):
    model = tiny_cls()
    _, path = peft_folder(tmp_path, model, lora_cfg())
    first = ge.attach(model, "gpart", d=20, targets=["query"])
    h = state_hash(model)
    with pytest.raises(AttachError, match="already has a gpart_edu adapter"):
        ge.load_peft(path, model)
    assert state_hash(model) == h and ge.get_adapter(model) is first


# ------------------------------------------------------------------------------ gpart-edu verify
@pytest.mark.parametrize("case, status", [("qv_materialized_seed7", 0), ("all_stateless_seed3", 1)])
def test_verify_accepts_peft_folders(case, status, capsys):
    from gpart_edu.cli import main
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["verify", "--adapter", str(FIX / case), "--spectrum", "sample", "--pairs", "4"])
    text = capsys.readouterr().out
    assert rc == status, text
    assert "the official GPart fork" in text
    if status:
        assert "9 empty" in text and "FAIL" in text


def test_verify_on_a_peft_lora_folder_with_model(tmp_path, capsys):
    from gpart_edu.cli import main
    base = tiny_cls()
    base.save_pretrained(tmp_path / "base")
    _, path = peft_folder(tmp_path, base, lora_cfg())
    assert main(["verify", "--adapter", str(path), "--model", str(tmp_path / "base"), "--spectrum", "none"]) == 0
    text = capsys.readouterr().out
    assert "peft LoRA" in text and "not claimed" in text
    with pytest.raises(SystemExit):       # no base model named in the folder and none given: usage error (exit 2)
        main(["verify", "--adapter", str(path), "--spectrum", "none"])
    assert "base_model_name_or_path" in capsys.readouterr().err


def test_adapter_attr_is_gone_after_import_and_detach(tmp_path):
    model = tiny_cls()
    _, path = peft_folder(tmp_path, model, lora_cfg())
    ge.load_peft(path, model).detach()
    assert not hasattr(model, ADAPTER_ATTR)


def test_the_lab_works_on_an_imported_peft_lora(tmp_path):
    from gpart_edu.lab import geometry, jacobian
    from gpart_edu.lab import landscape as L
    model = tiny_cls()
    pm, path = peft_folder(tmp_path, model, lora_cfg())
    adapter = ge.load_peft(path, model)
    s = jacobian.singular_value_sample(adapter, m=40)
    assert s.max() / max(s.min(), 1e-300) > 2                     # bilinear: a spread, not an isometry
    r = geometry.distance_ratios(adapter, n_pairs=5, scale=float(adapter.theta.detach().norm()))
    assert abs(r - 1).max() > 1e-3
    data = {"input_ids": IDS, "labels": torch.tensor([0, 2, 1])}
    obj = L.Objective(model, data)
    (u,) = L.random_directions(adapter.num_trainable, k=1, seed=0)
    curve = L.line(obj, u, span=0.5, n=5, progress=False)
    centre = torch.nn.functional.cross_entropy(pm(IDS).logits, data["labels"]).item()
    assert abs(curve.center_loss - centre) <= 1e-5 and len(curve.loss) == 5   # the centre: peft's own loss
