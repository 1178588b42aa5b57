"""Every method's efficient path equals the dense float64 oracle (core.reference), method cases x model kinds.

Three checks per (method case, model kind), at a random non-zero theta: delta_weights, the model's forward
with the adapter attached (GPart: the fused autograd function) against the base model run with W0 + the
reference Delta W (torch.func.functional_call), and d loss / d theta through each. Then the oracle itself is
checked by hand on maps small enough to write down.
"""
import pytest
import torch
from torch.func import functional_call

import gpart_edu as ge
from gpart_edu.core import methods, projections, reference

from .conftest import METHOD_CASES, MODEL_KINDS, output_of

TOL = 1e-12
CASES = [pytest.param(m, k, id=f"{m}-{k}") for m in METHOD_CASES for k in MODEL_KINDS]


def assert_rel(got, want, tol=TOL, what=""):
    """max |got - want| <= tol * max |want| (want not all zero)."""
    scale = want.abs().max().item()
    assert scale > 0, f"{what}: the reference is all zero, the comparison would prove nothing"
    err = (got - want).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:g} x {scale:.3e}"


def setup(case, kind):
    """(adapter model, base model, inputs, adapter, theta): theta random, non-zero, written into the adapter."""
    name, cfg = METHOD_CASES[case]
    model, inputs, targets = MODEL_KINDS[kind](torch.float64)
    base, _, _ = MODEL_KINDS[kind](torch.float64)                 # the same seeded weights, never adapted
    adapter = ge.attach(model, name, targets=targets, **cfg)
    theta = torch.randn(adapter.num_trainable, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        adapter.theta.copy_(0.3 * theta)
    return model, base, inputs, adapter, adapter.theta.detach().clone()


def oracle(adapter, theta):
    m = adapter.method
    ids = m.P.group_ids() if hasattr(m, "P") else None
    return reference.delta_weights(m.name, m.targets, m.config(), theta, ids)


def base_output(base, deltas, inputs):
    """The base model's output with W0 + Delta W substituted (weights and, with include_bias, biases)."""
    params = {k: v + deltas[k] if k in deltas else v for k, v in base.named_parameters()}
    out = functional_call(base, params, inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def loss(out):
    """A fixed random linear functional of the output (a sum of squares is flat after a LayerNorm)."""
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(11), dtype=out.dtype)
    return (out * w).sum()


def graph_names(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            stack += [f for f, _ in fn.next_functions]
    return {type(fn).__name__ for fn in seen}


@pytest.mark.parametrize("case, kind", CASES)
def test_delta_weights_equal_reference(case, kind):
    _, _, _, adapter, theta = setup(case, kind)
    fast, ref = adapter.delta_weights(theta), oracle(adapter, theta)
    assert list(fast) == list(ref)
    if METHOD_CASES[case][1].get("include_bias"):
        assert any(k.endswith(".bias") for k in ref)
    for k in ref:
        assert fast[k].shape == ref[k].shape, k
        assert_rel(fast[k], ref[k], what=k)


@pytest.mark.parametrize("case, kind", CASES)
def test_forward_equals_base_model_with_reference_delta(case, kind):
    model, base, inputs, adapter, theta = setup(case, kind)
    with torch.no_grad():
        assert_rel(output_of(model, inputs), base_output(base, oracle(adapter, theta), inputs), what="output")


@pytest.mark.parametrize("case, kind", CASES)
def test_gradient_equals_gradient_through_reference(case, kind):
    model, base, inputs, adapter, theta = setup(case, kind)
    out = output_of(model, inputs)
    if adapter.method.name == "gpart":
        assert "GPartLinearFnBackward" in graph_names(out)      # the fused autograd function is what is tested
    loss(out).backward()
    theta_ref = theta.clone().requires_grad_()
    loss(base_output(base, oracle(adapter, theta_ref), inputs)).backward()
    assert_rel(adapter.theta.grad, theta_ref.grad, what="d loss / d theta")


# ------------------------------------------------------------------------- the oracle, by hand
LIN = methods.Target("lin", "linear", 3, 2, True)       # W: 2 x 3
CONV = methods.Target("conv", "conv1d", 2, 3, True)     # W stored in x out: 2 x 3


def test_dense_P_is_the_partition_matrix():
    P = reference.dense_P(torch.tensor([0, 1, 0, 2, 1, 0]), 3)
    want = torch.zeros(6, 3, dtype=torch.float64)
    want[[0, 2, 5], 0], want[[1, 4], 1], want[3, 2] = 3 ** -0.5, 2 ** -0.5, 1.0
    assert torch.allclose(P, want, rtol=1e-15, atol=0)
    assert torch.allclose(P.t() @ P, torch.eye(3, dtype=torch.float64), atol=1e-15)


def test_gpart_reference_with_identity_partition_reads_theta_in_stored_order():
    theta = torch.arange(1.0, 16.0, dtype=torch.float64)                    # 6 + (6 + 3 bias) entries
    dw = reference.delta_weights("gpart", [LIN, CONV], {"d": 12, "include_bias": False}, theta[:12],
                                 torch.arange(12))
    assert torch.equal(dw["lin.weight"], theta[:6].view(2, 3))                      # (out, in), row-major
    assert torch.equal(dw["conv.weight"], theta[6:12].view(2, 3))                   # conv1d stored (in, out)
    dw = reference.delta_weights("gpart", [CONV], {"d": 9, "include_bias": True}, theta[:9], torch.arange(9))
    assert torch.equal(dw["conv.bias"], theta[6:9]) and list(dw) == ["conv.weight", "conv.bias"]


def test_lowrank_reference_by_hand():
    g = torch.Generator().manual_seed(0)
    A1, B1 = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)
    A2, B2 = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    theta = torch.cat([A1.flatten(), B1.flatten(), A2.flatten(), B2.flatten()])
    dw = reference.delta_weights("lora", [LIN, CONV], {"r": 2, "alpha": 6.0}, theta)
    assert torch.allclose(dw["lin.weight"], 3.0 * B1 @ A1, atol=1e-15)
    assert torch.allclose(dw["conv.weight"], (3.0 * B2 @ A2).t(), atol=1e-15)       # conv1d: (in, out)
    uni = reference.delta_weights("unilora", [LIN, CONV], {"d": len(theta), "r": 2}, theta, torch.arange(len(theta)))
    assert torch.allclose(uni["lin.weight"], B1 @ A1, atol=1e-15)                    # P = I, no alpha / r


def test_reference_calls_none_of_the_efficient_code(monkeypatch):
    _, _, _, adapter, theta = setup("unilora", "gpt2")
    ids = adapter.method.P.group_ids()

    def boom(*a, **k):
        raise AssertionError("the reference must not use the efficient code")

    for cls, attr in [(projections.PartitionProjection, "forward"), (projections.PartitionProjection, "scaled"),
                      (methods.UniLoRA, "delta_weights"), (methods.UniLoRA, "factors"),
                      (methods.GPart, "delta_weights")]:
        monkeypatch.setattr(cls, attr, boom)
    m = adapter.method
    assert set(reference.delta_weights(m.name, m.targets, m.config(), theta, ids)) == {t.name + ".weight"
                                                                                        for t in m.targets}


def test_reference_rejects_a_mismatched_theta_and_an_unknown_method():
    with pytest.raises(ValueError, match="f has 11"):
        reference.delta_weights("lora", [LIN], {"r": 2, "alpha": 2.0}, torch.zeros(11))
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        reference.delta_weights("dora", [LIN], {}, torch.zeros(1))
