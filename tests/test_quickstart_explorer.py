"""The quickstart's θ-scale explorer, driven without a kernel (setting .value runs the observers)."""
import pytest
import torch

import gpart_edu as ge
from gpart_edu import widgets
from gpart_edu.finetune import train
from tests.conftest import state_hash, tiny_mlp


def _trained(method, **cfg):
    model, (x,), targets = tiny_mlp()
    y = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(2))
    adapter = ge.attach(model, method, targets=targets, **cfg)
    with torch.no_grad():
        adapter.theta.copy_(torch.randn(adapter.theta.shape, generator=torch.Generator().manual_seed(3),
                                        dtype=adapter.theta.dtype))
    return model, adapter, (x, y)


def test_gpart_explorer_shows_exact_isometry_and_true_losses_without_mutating():
    model, adapter, data = _trained("gpart", d=40, seed=3)
    before = state_hash(model)
    box = widgets.theta_scale_explorer(adapter, data, t_min=-1.0, t_max=2.0, step=0.25, t=1.0)
    first = box.readout.value
    for t in (-1.0, 0.0, 0.5, 2.0, 1.0):
        box.slider.value = t
        row = box.results[t]
        assert f"t = {t:+.2f}" in box.readout.value
        if t == 0:
            assert row["norm_dw"] == 0.0 and row["ratio"] is None
        else:
            assert row["ratio"] == pytest.approx(1.0, abs=1e-12)
            assert row["predicted"] == pytest.approx(abs(t) * adapter.theta.double().norm().item(), rel=1e-12)
    assert box.readout.value == first                          # back at t = 1: same readout
    assert state_hash(model) == before                          # model and θ untouched
    ref = train.evaluate(model, data)                           # t = 1 is the adapter as trained
    # one evaluator (losses.evaluate): theta = 1·θ swapped in equals the model as it is, bit for bit
    assert box.results[1.0]["loss"] == ref["loss"] and box.results[1.0]["accuracy"] == ref["accuracy"]
    with adapter.disabled():                                    # t = 0 is the pretrained weights
        base = train.evaluate(model, data)
    assert box.results[0.0]["loss"] == pytest.approx(base["loss"], rel=1e-12)
    assert base["loss"] != pytest.approx(ref["loss"], rel=1e-6)   # so the two checks above differ


def test_lora_explorer_reveals_the_bilinear_map():
    _, adapter, _ = _trained("lora", r=2, alpha=4.0, seed=3)
    box = widgets.theta_scale_explorer(adapter)                 # no data: norms only
    box.slider.value = 2.0
    r1, r2 = box.results[1.0]["ratio"], box.results[2.0]["ratio"]
    assert r2 / r1 == pytest.approx(2.0, rel=1e-9)              # ΔW(tθ) = t² ΔW(θ)
    assert "loss" not in box.results[2.0] and "loss" not in box.readout.value


def test_explorer_rejects_bad_input_early():
    model, adapter, data = _trained("gpart", d=40, seed=3)
    with pytest.raises(ValueError, match="t_min < t_max"):
        widgets.theta_scale_explorer(adapter, t_min=1.0, t_max=1.0)
    with pytest.raises(ValueError, match="step > 0"):
        widgets.theta_scale_explorer(adapter, t=5.0)
    adapter.merge()
    with pytest.raises(ValueError, match="unmerge"):
        widgets.theta_scale_explorer(adapter)
    adapter.unmerge()
    adapter.detach()
    with pytest.raises(ValueError, match="detached"):
        widgets.theta_scale_explorer(adapter)
