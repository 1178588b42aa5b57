"""The isometry audit (lab.peft_maps, lab.audit, ``gpart-edu audit``): maps equal peft's merge in float64,
the audit's numbers equal an independent dense computation, derived null dimensions and degrees are measured,
bad input is refused clearly. Tiny 8-8-8 MLPs: every test runs in seconds."""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

import gpart_edu as ge
from gpart_edu import cli
from gpart_edu.errors import AttachError, ConfigError, UnsupportedMethodError
from gpart_edu.lab.audit import audit
from gpart_edu.lab.peft_maps import peft_map

from .conftest import MLP

peft = pytest.importorskip("peft")
warnings.filterwarnings("ignore", module="peft")
T = ["layers.0", "layers.1"]

CONFIGS = {
    "lora": lambda: peft.LoraConfig(r=2, lora_alpha=4, target_modules=T),
    "rslora": lambda: peft.LoraConfig(r=2, lora_alpha=4, target_modules=T, use_rslora=True),
    "dora": lambda: peft.LoraConfig(r=2, target_modules=T, use_dora=True),
    "vera": lambda: peft.VeraConfig(r=2, target_modules=T),
    "loha": lambda: peft.LoHaConfig(r=2, target_modules=T),
    "lokr": lambda: peft.LoKrConfig(r=2, target_modules=T),
    "adalora": lambda: peft.AdaLoraConfig(r=2, init_r=2, target_modules=T, total_step=10),
    "ia3": lambda: peft.IA3Config(target_modules=T, feedforward_modules=["layers.1"]),
    "oft": lambda: peft.OFTConfig(r=0, oft_block_size=4, target_modules=T),
    "boft": lambda: peft.BOFTConfig(boft_block_size=4, target_modules=T),
    "fourierft": lambda: peft.FourierFTConfig(n_frequency=12, target_modules=T),
    "vblora": lambda: peft.VBLoRAConfig(r=2, num_vectors=6, vector_length=4, target_modules=T),
    "unilora": lambda: peft.UniLoraConfig(r=2, theta_d_length=20, target_modules=T),
}


def mlp():
    torch.manual_seed(0)
    return MLP(sizes=(8, 8, 8, 3)).double()


def peft_model(name, head=False):
    cfg = CONFIGS[name]()
    if head:
        cfg.modules_to_save = ["head"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(mlp(), cfg)


def random_theta(pm, seed=1, scale=0.3):
    return pm.fmap.theta0 + scale * torch.randn(pm.d, generator=torch.Generator().manual_seed(seed),
                                                dtype=torch.float64)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_map_equals_peft_merge_and_unload_in_float64(name):
    model = peft_model(name)
    pm = peft_map(model)
    assert pm.check["max_abs_error"] <= pm.check["tol"]
    # independent of the built-in check: another theta, merge_and_unload of the whole model
    theta = random_theta(pm, seed=5)
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    base = {n: m.get_base_layer().weight.detach().clone() for n, m in ref.named_modules()
            if n.removeprefix("base_model.model.") in pm.layers}
    with torch.no_grad():
        pos = 0
        for n in pm.theta_names:
            params[n].copy_(theta[pos: pos + params[n].numel()].view(params[n].shape))
            pos += params[n].numel()
        merged = dict(ref.merge_and_unload().named_parameters())
        want = pm.fmap(theta)
    got = torch.cat([(merged[n.removeprefix("base_model.model.") + ".weight"] - w).reshape(-1)
                     for n, w in base.items()])
    tol = 1e-5 if name == "fourierft" else 1e-12      # peft merges FourierFT in float32
    assert got.abs().max() > 0
    assert torch.allclose(want, got, rtol=0, atol=tol * float(got.abs().max()))
    assert pm.D == 128 and pm.d == theta.numel()


@pytest.mark.parametrize("name", ["lora", "dora", "oft", "fourierft", "loha"])
def test_audit_numbers_equal_the_dense_computation(name):
    model = peft_model(name)
    rep = audit(model, norms=(1.0, 2.0), n_pairs=4)
    f = peft_map(model, check=False).fmap
    theta = f.theta0
    J = torch.autograd.functional.jacobian(lambda t: f(t), theta)          # plain autograd, not jacfwd
    s = torch.linalg.svdvals(J).numpy()
    s = np.concatenate([s, np.zeros(max(0, f.d - len(s)))])
    assert rep.spectrum_method == "dense" and len(rep.singular_values) == f.d
    np.testing.assert_allclose(rep.singular_values, s, rtol=0, atol=1e-12 * s[0])
    tol = 2.2e-16 * max(rep.D, rep.d) * s[0]
    assert rep.null_dim == int((s <= tol).sum())
    assert rep.condition_number == (np.inf if rep.null_dim else s[0] / s[-1])
    # the distance ratios, recomputed
    g = torch.Generator().manual_seed(0)
    u = torch.randn(8, f.d, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    with torch.no_grad():
        r = [float((f(theta + u[2 * i]) - f(theta + u[2 * i + 1])).norm() / (u[2 * i] - u[2 * i + 1]).norm())
             for i in range(4)]
    np.testing.assert_allclose(rep.distance_ratios, r, rtol=1e-12)
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["d"] == rep.d and d["D"] == 128 and len(d["singular_values"]) == f.d


def test_derived_null_dimensions_and_degrees():
    """LoRA: r^2 per layer at a generic theta, r*in at B = 0; VeRA: 1 per layer (lambda_b/lambda_d scaling);
    BOFT: the symmetric half of each block (Cayley uses the skew part); degrees 2 / 3 / 4 / 1."""
    lora = audit(peft_model("lora"), norms=(1.0, 3.0), n_pairs=2)
    assert lora.null_dim == 2 * 2 * 8                       # B = 0 at init: every A direction is null
    assert [p["null_dim"] for p in lora.points] == [2 * 2 ** 2] * 2
    assert lora.homogeneity["degree"] == 2 and lora.zero_at_zero
    vera = audit(peft_model("vera"), norms=(1.0, 3.0), n_pairs=2)
    assert [p["null_dim"] for p in vera.points] == [2, 2] and vera.homogeneity["degree"] == 2
    boft = audit(peft_model("boft"), norms=(1.0,), n_pairs=2)
    assert boft.null_dim == 2 * (8 // 4) * (4 * 5 // 2)     # 2 layers x 2 blocks x b(b+1)/2
    assert audit(peft_model("adalora"), norms=(1.0, 2.0), n_pairs=2).homogeneity["degree"] == 3
    assert audit(peft_model("loha"), norms=(1.0, 2.0), n_pairs=2).homogeneity["degree"] == 4
    four = audit(peft_model("fourierft"), norms=(1.0, 2.0), n_pairs=2)
    assert four.homogeneity["degree"] == 1                  # linear: the same ratios at every norm
    assert four.points[0]["ratio_mean"] == pytest.approx(four.points[1]["ratio_mean"], rel=1e-12)
    ia3 = audit(peft_model("ia3"), norms=(1.0, 2.0), n_pairs=2)
    assert not ia3.zero_at_zero and ia3.homogeneity["degree"] is None and ia3.null_dim == 0
    assert ia3.delta_at_zero == pytest.approx(float(torch.cat([mlp().layers[i].weight.detach().reshape(-1)
                                                                for i in (0, 1)]).norm()), rel=1e-12)


def test_gpart_is_exactly_isometric_and_lora_is_not():
    m = mlp()
    ge.attach(m, "gpart", d=40, seed=0, targets=T)
    rep = audit(m, norms=(0.5, 5.0), n_pairs=5)
    assert rep.source == "gpart_edu" and rep.d == 40 and rep.D == 128
    np.testing.assert_allclose(rep.singular_values, 1.0, atol=1e-14)
    np.testing.assert_allclose(rep.distance_ratios, 1.0, atol=1e-14)
    assert rep.condition_number == pytest.approx(1.0, abs=1e-14) and rep.null_dim == 0
    assert rep.homogeneity["degree"] == 1 and rep.zero_at_zero
    m2 = mlp()
    ge.attach(m2, "unilora", d=30, r=2, seed=0, targets=T)
    assert audit(m2, norms=(1.0, 2.0), n_pairs=3).homogeneity["degree"] == 2


def test_head_is_reported_apart():
    rep = audit(peft_model("lora", head=True), norms=(1.0,), n_pairs=2)
    assert rep.d == 2 * 2 * (8 + 8)
    assert rep.head_params == 8 * 3 + 3 and all("head" in n for n in rep.head)


def test_lanczos_path_reports_only_certified_values():
    rep = audit(peft_model("lora"), norms=(1.0,), n_pairs=2, method="lanczos", k=3)
    dense = audit(peft_model("lora"), norms=(1.0,), n_pairs=2, method="dense")
    c = rep.spectrum_converged
    assert rep.spectrum_method == "lanczos" and len(rep.singular_values) == c["top_count"] + c["bottom_count"]
    if c["top_count"]:
        np.testing.assert_allclose(rep.singular_values[:c["top_count"]], dense.singular_values[:c["top_count"]],
                                   rtol=1e-6)
    if c["bottom_count"] == 0:
        assert rep.sigma_min is None and rep.condition_number is None


def test_bad_input_is_refused_clearly():
    with pytest.raises(AttachError, match="carries no adapter"):
        audit(mlp())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        audit("not a model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hra = peft.get_peft_model(mlp(), peft.HRAConfig(r=2, target_modules=T))
    with pytest.raises(UnsupportedMethodError, match="HRA"):
        audit(hra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        biased = peft.get_peft_model(mlp(), peft.LoraConfig(r=2, target_modules=T, lora_bias=True))
    with pytest.raises(UnsupportedMethodError, match="lora_bias"):
        audit(biased)
    with pytest.raises(ConfigError, match="method must be"):
        audit(peft_model("lora"), method="svd")
    with pytest.raises(ConfigError, match="positive norms"):
        audit(peft_model("lora"), norms=(0.0,))


def test_cli_audit_on_a_peft_folder(tmp_path, capsys):
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                     max_position_embeddings=16)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(BertModel.from_pretrained(tmp_path / "base"),
                                 peft.VeraConfig(r=2, target_modules=["query", "value"], save_projection=True))
        pm.save_pretrained(tmp_path / "vera")
    out = tmp_path / "a.json"
    assert cli.main(["audit", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "vera"), "--norms",
                     "1,2", "--pairs", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "audit of VeRA (peft VERA)" in text and "homogeneity degree 2" in text
    data = json.loads(out.read_text())
    assert data["d"] == 2 * (8 + 2) and data["D"] == 2 * 64 and len(data["points"]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["audit", "--model", str(tmp_path / "base")])
    assert e.value.code == 2
    assert "give --adapter" in capsys.readouterr().err


def test_cli_audit_on_a_gpart_edu_file_saved_with_a_classifier_head(tmp_path, capsys):
    """A file trained with trainable="auto" carries the classifier head; the audit loads the bare base model and
    must measure theta alone (the head is not part of theta -> Delta W)."""
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                     max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    clf = BertForSequenceClassification(cfg)
    clf.save_pretrained(tmp_path / "base")
    adapter = ge.attach(clf, "gpart", d=16, targets=["query", "value"], trainable="auto")
    with torch.no_grad():
        adapter.theta.normal_()
    adapter.save(tmp_path / "a.safetensors")
    out = tmp_path / "a.json"
    assert cli.main(["audit", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "a.safetensors"),
                     "--norms", "1", "--pairs", "3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["d"] == 16 and data["D"] == 2 * 64
    assert max(abs(s - 1.0) for s in data["singular_values"]) < 1e-12


def test_face_audit_is_the_lab_audit():
    import gpart_edu as ge
    assert ge.audit is audit
