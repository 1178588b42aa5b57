"""Generic invariants over methods x model kinds (tiny MLP, tiny BERT, tiny GPT-2 with Conv1D)."""
import copy

import pytest
import torch
from torch.func import functional_call, jacrev, jvp, vjp

import gpart_edu as ge
from gpart_edu.core.adapter import ADAPTER_ATTR
from gpart_edu.errors import ConfigError

from .conftest import METHOD_CASES, MODEL_KINDS, output_of


def _setup(model_kind, method_case, dtype=torch.float64):
    model, inputs, targets = MODEL_KINDS[model_kind](dtype)
    name, cfg = method_case
    return model, inputs, targets, name, cfg


def _random_theta(adapter, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(adapter.num_trainable, generator=g, dtype=adapter.theta.dtype) * scale


def _reference_output(model, adapter, theta, inputs):
    """Model output with W0 + delta_weights(theta) substituted functionally (adapter disabled)."""
    params = {k: v for k, v in model.named_parameters() if not k.startswith(ADAPTER_ATTR)}
    deltas = adapter.delta_weights(theta)
    new = {k: (v + deltas[k] if k in deltas else v) for k, v in params.items()}
    with adapter.disabled():
        return output_of_functional(model, new, inputs)


def output_of_functional(model, params, inputs):
    out = functional_call(model, params, inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def test_efficient_forward_equals_pure_map(model_kind, method_case):
    model, inputs, targets, name, cfg = _setup(model_kind, method_case)
    adapter = ge.attach(model, name, targets=targets, **cfg)
    theta = _random_theta(adapter)
    with torch.no_grad():
        adapter.theta.copy_(theta)
    fast = output_of(model, inputs)
    ref = _reference_output(model, adapter, theta, inputs)
    assert torch.allclose(fast, ref, atol=1e-12, rtol=1e-12)


def test_efficient_gradient_equals_pure_map_gradient(model_kind, method_case):
    model, inputs, targets, name, cfg = _setup(model_kind, method_case)
    adapter = ge.attach(model, name, targets=targets, **cfg)
    with torch.no_grad():
        adapter.theta.copy_(_random_theta(adapter))
    output_of(model, inputs).pow(2).sum().backward()
    fast = adapter.theta.grad.clone()
    theta = adapter.theta.detach().clone().requires_grad_()
    _reference_output(model, adapter, theta, inputs).pow(2).sum().backward()
    assert torch.allclose(fast, theta.grad, atol=1e-10, rtol=1e-10)
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert grads == [f"{ADAPTER_ATTR}.theta"], "gradients reach only theta"


def test_init_is_identity_for_gpart_and_lora(model_kind, method_case):
    model, inputs, targets, name, cfg = _setup(model_kind, method_case)
    base = output_of(model, inputs)
    adapter = ge.attach(model, name, targets=targets, **cfg)
    out = output_of(model, inputs)
    if name == "unilora":  # U(+-0.02) init: not identity, but B A is tiny
        assert not torch.equal(out, base)
        assert all(dw.abs().max() < 1e-2 for dw in adapter.delta_weights().values())
    else:
        assert torch.equal(out, base)
        assert all(torch.count_nonzero(dw) == 0 for dw in adapter.delta_weights().values())


def test_base_weights_frozen_and_theta_only_new_parameter(model_kind, method_case):
    model, inputs, targets, name, cfg = _setup(model_kind, method_case)
    before = {n for n, _ in model.named_parameters()}
    adapter = ge.attach(model, name, targets=targets, trainable=(), **cfg)
    after = {n: p for n, p in model.named_parameters()}
    assert set(after) - before == {f"{ADAPTER_ATTR}.theta"}
    assert [n for n, p in after.items() if p.requires_grad] == [f"{ADAPTER_ATTR}.theta"]
    assert adapter.num_trainable == adapter.theta.numel() == adapter.method.num_params


def test_trainable_counts(model_kind):
    model, inputs, targets = MODEL_KINDS[model_kind](torch.float64)
    ad = ge.attach(model, "lora", r=3, targets=targets)
    assert ad.num_trainable == sum(3 * (t.in_features + t.out_features) for t in ad.targets)
    ad.detach()
    ad = ge.attach(model, "gpart", d=17, targets=targets)
    assert ad.num_trainable == 17 and ad.D == sum(t.numel for t in ad.targets)
    ad.detach()
    ad = ge.attach(model, "unilora", d=11, r=2, targets=targets)
    assert ad.num_trainable == 11


@pytest.mark.parametrize("assignment", ["balanced", "multinomial", "hashed"])
def test_gpart_end_to_end_isometry_float64(model_kind, assignment):
    model, _, targets = MODEL_KINDS[model_kind](torch.float64)
    ad = ge.attach(model, "gpart", d=25, seed=1, assignment=assignment, targets=targets)
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        x, y = (torch.randn(25, generator=g, dtype=torch.float64) * 3 for _ in range(2))
        dx, dy = ad.delta_weights(x), ad.delta_weights(y)
        dist_w = torch.sqrt(sum((dx[k] - dy[k]).pow(2).sum() for k in dx))
        ratio = (dist_w / (x - y).norm()).item()
        assert abs(ratio - 1.0) <= 1e-12


def test_delta_weights_keys_are_original_weight_names(model_kind, method_case):
    model, _, targets, name, cfg = _setup(model_kind, method_case)
    names = dict(model.named_parameters())
    ad = ge.attach(model, name, targets=targets, **cfg)
    for k, v in ad.delta_weights().items():
        assert k in names and v.shape == names[k].shape


def test_delta_weights_work_under_torch_func(method_case):
    model, _, targets, name, cfg = _setup("gpt2", method_case)
    ad = ge.attach(model, name, targets=targets, **cfg)
    theta = _random_theta(ad)

    def flat(t):
        return torch.cat([v.reshape(-1) for v in ad.delta_weights(t).values()])

    J = jacrev(flat)(theta)
    u = torch.randn_like(theta)
    _, jv = jvp(flat, (theta,), (u,))
    out, pullback = vjp(flat, theta)
    w = torch.randn_like(out)
    assert torch.allclose(jv, J @ u, atol=1e-12)
    assert torch.allclose(pullback(w)[0], J.T @ w, atol=1e-12)
    if name == "gpart":  # J = P: orthonormal columns
        assert torch.allclose(J.T @ J, torch.eye(J.shape[1], dtype=J.dtype), atol=1e-12)


def test_model_forward_under_torch_func_uses_pure_path():
    """jvp through the whole model (forward-mode) works with the GPart efficient layer.

    (Hugging Face models need attn_implementation="eager" for forward-mode AD: SDPA has no jvp on CPU.)
    """
    model, inputs, targets, name, cfg = _setup("mlp", METHOD_CASES["gpart-balanced"])
    ad = ge.attach(model, name, targets=targets, **cfg)
    theta = _random_theta(ad)
    key = f"{ADAPTER_ATTR}.theta"

    def f(t):
        return output_of_functional(model, {key: t}, inputs).sum()

    u = torch.randn_like(theta)
    _, jv = jvp(f, (theta,), (u,))
    t = theta.clone().requires_grad_()
    f(t).backward()
    assert torch.allclose(jv, t.grad @ u, atol=1e-10)


def test_double_backward_through_efficient_path():
    """Hessian-vector products by double backward agree with the pure map (GPart custom autograd)."""
    model, inputs, targets, name, cfg = _setup("mlp", METHOD_CASES["gpart-hashed"])
    ad = ge.attach(model, name, targets=targets, **cfg)
    with torch.no_grad():
        ad.theta.copy_(_random_theta(ad))
    v = torch.randn(ad.num_trainable, dtype=torch.float64)
    (g,) = torch.autograd.grad(output_of(model, inputs).pow(2).sum(), ad.theta, create_graph=True)
    (hv_fast,) = torch.autograd.grad(g @ v, ad.theta)
    theta = ad.theta.detach().clone().requires_grad_()
    (g2,) = torch.autograd.grad(_reference_output(model, ad, theta, inputs).pow(2).sum(), theta,
                                create_graph=True)
    (hv_ref,) = torch.autograd.grad(g2 @ v, theta)
    assert torch.allclose(hv_fast, hv_ref, atol=1e-9, rtol=1e-9)


def test_float32_fast_path_tolerance(model_kind):
    model, inputs, targets = MODEL_KINDS[model_kind](torch.float32)
    ad = ge.attach(model, "gpart", d=30, targets=targets)
    with torch.no_grad():
        ad.theta.copy_(_random_theta(ad).float())
    fast = output_of(model, inputs)
    ref = _reference_output(model, ad, ad.theta.detach(), inputs)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5)


def test_lora_init_distribution():
    model, _, targets = MODEL_KINDS["mlp"](torch.float64)
    ad = ge.attach(model, "lora", r=4, targets=targets)
    for t, (a, m, b) in zip(ad.targets, ad.method.offsets):
        A, B = ad.theta[a:m], ad.theta[m:b]
        assert torch.count_nonzero(B) == 0
        assert A.abs().max() <= 1 / t.in_features ** 0.5 and A.abs().max() > 0.5 / t.in_features ** 0.5


def test_unilora_init_scale_configurable():
    model, _, targets = MODEL_KINDS["mlp"](torch.float64)
    ad = ge.attach(model, "unilora", d=10, r=2, init_scale=0.5, targets=targets)
    assert 0.2 < ad.theta.abs().max() <= 0.5
    ad.detach()
    with pytest.raises(ConfigError, match="could never train"):      # A = B = 0: zero gradient for ever
        ge.attach(model, "unilora", d=10, r=2, init_scale=0.0, targets=targets)
    assert ge.get_adapter(model) is None


def test_copy_of_model_with_adapter_is_independent():
    model, inputs, targets = MODEL_KINDS["mlp"](torch.float64)
    ad = ge.attach(model, "gpart", d=12, targets=targets)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        ad.theta.fill_(1.0)
    assert not torch.equal(output_of(model, inputs), output_of(clone, inputs))


@pytest.mark.parametrize("chunk", [7, 64, 1 << 17])
def test_hashed_chunked_fast_path_equals_pure_map(model_kind, chunk, monkeypatch):
    """The hashed fast path generates ids chunk by chunk on a CPU; any chunk size gives the pure map's
    forward values and theta-gradient (chunk boundaries inside and across layers)."""
    monkeypatch.setattr(ge.PartitionProjection, "fused_chunk", chunk)
    model, inputs, targets, name, cfg = _setup(model_kind, METHOD_CASES["gpart-hashed"])
    adapter = ge.attach(model, name, targets=targets, **cfg)
    assert list(adapter.method.P.index_chunks(0, 20, chunk=7))[-1][:2] == (14, 20)
    with torch.no_grad():
        adapter.theta.copy_(_random_theta(adapter))
    out = output_of(model, inputs)
    theta = adapter.theta.detach().clone().requires_grad_()
    ref = _reference_output(model, adapter, theta, inputs)
    assert torch.allclose(out, ref, atol=1e-12, rtol=1e-12)
    out.pow(2).sum().backward()
    ref.pow(2).sum().backward()
    assert torch.allclose(adapter.theta.grad, theta.grad, atol=1e-10, rtol=1e-10)
