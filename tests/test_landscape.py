"""Loss landscapes and curvature in theta-space, checked against independent dense references (float64)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import gpart_edu as ge
from gpart_edu.core.adapter import ADAPTER_ATTR
from gpart_edu.errors import ConfigError
from gpart_edu.lab import curvature as C
from gpart_edu.lab import eigen
from gpart_edu.lab import landscape as L

from .conftest import METHOD_CASES, state_hash, tiny_bert, tiny_gpt2, tiny_mlp


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP hand-off costs that dominate on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def mlp_objective(case, batch_size=3, scale=0.3, seed=0):
    """Tiny MLP (6-9-7-3, float64) with ``case`` attached at a random theta; 8 examples, 3 classes."""
    name, cfg = METHOD_CASES[case]
    model, _, targets = tiny_mlp()
    adapter = ge.attach(model, name, targets=targets, trainable=(), **cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        adapter.theta.add_(scale * torch.randn(adapter.num_trainable, generator=g, dtype=torch.float64))
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    return model, adapter, (x, y), L.Objective(model, (x, y), batch_size=batch_size)


def reference_loss(model, adapter, data):
    """theta -> L via W0 + delta_weights(theta) substituted with the adapter disabled (independent path)."""
    x, y = data
    base = {k: v.detach() for k, v in model.named_parameters() if not k.startswith(ADAPTER_ATTR)}

    def f(theta):
        dw = adapter.delta_weights(theta)
        with adapter.disabled():
            out = functional_call(model, {k: v + dw[k] if k in dw else v for k, v in base.items()}, (x,))
        return F.cross_entropy(out, y)
    return f


# --------------------------------------------------------------------------------- Hessians
@pytest.mark.parametrize("case", list(METHOD_CASES))
@pytest.mark.parametrize("mode", C.MODES)
def test_hvp_equals_dense_hessian(case, mode):
    model, adapter, data, obj = mlp_objective(case)
    H_ref = torch.func.hessian(reference_loss(model, adapter, data))(adapter.theta.detach())
    H = C.hessian(obj, mode=mode)
    assert torch.allclose(H, H_ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("case", ["gpart-balanced", "unilora", "lora"])
def test_lanczos_top_eigenvalues_equal_dense_eigvalsh(case):
    model, adapter, data, obj = mlp_objective(case)
    H_ref = torch.func.hessian(reference_loss(model, adapter, data))(adapter.theta.detach())
    dense = torch.linalg.eigvalsh(H_ref).numpy()
    cur = C.top_eigenvalues(obj, k=4, tol=0)
    np.testing.assert_allclose(cur.eigenvalues, dense[::-1][:4], rtol=1e-6)
    np.testing.assert_allclose(cur.lambda_min, dense[0], rtol=1e-6)
    assert cur.condition == (cur.lambda_max / cur.lambda_min if dense[0] > 0 else float("inf"))
    assert cur.top_k_ratio == pytest.approx(dense[-1] / dense[-4], rel=1e-6)
    v = cur.eigenvectors[:, 0]
    hv = C.hvp(obj)(torch.tensor(v)).numpy()
    np.testing.assert_allclose(hv, cur.eigenvalues[0] * v, atol=1e-8)


@pytest.mark.parametrize("kind,case", [("mlp", "gpart-balanced"), ("mlp", "gpart-hashed"), ("mlp", "gpart-bias"),
                                       ("gpt2", "gpart-bias")])
def test_gpart_theta_hessian_equals_PT_HW_P(kind, case):
    """H_theta = P^T H_W P exactly (float64), with H_W from an independent weight-space Hessian."""
    name, cfg = METHOD_CASES[case]
    model, inputs, targets = (tiny_mlp if kind == "mlp" else tiny_gpt2)()
    if kind == "gpt2":
        targets = ["c_proj"]                                                   # Conv1D layers, D = 512
        model.set_attn_implementation("eager")
        loss_fn = lambda m, b: m(b[0]).last_hidden_state.pow(3).mean()  # noqa: E731  (non-quadratic)
        data = (inputs[0], torch.zeros(len(inputs[0])))
    else:
        g = torch.Generator().manual_seed(2)
        data = (inputs[0], torch.randint(0, 3, (len(inputs[0]),), generator=g))
        loss_fn = None
    adapter = ge.attach(model, name, targets=targets, trainable=(), **cfg)
    with torch.no_grad():
        adapter.theta.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    obj = L.Objective(model, data, loss_fn=loss_fn)
    P = adapter.method.P.to_dense()
    theta = adapter.theta.detach().clone()
    deltas = adapter.delta_weights(theta)
    names = list(deltas)
    params = dict(model.named_parameters())
    W_star = torch.cat([(params[n].detach() + deltas[n]).reshape(-1) for n in names])
    other = {k: v.detach() for k, v in params.items() if k not in names and not k.startswith(ADAPTER_ATTR)}

    def loss_of_weights(w):
        over, pos = dict(other), 0
        for n in names:
            over[n] = w[pos: pos + params[n].numel()].view(params[n].shape)
            pos += params[n].numel()
        with adapter.disabled():
            return obj.loss_fn(_Bound(model, over), data)

    H_W = torch.func.hessian(loss_of_weights)(W_star)
    H_theta = C.hessian(obj)
    assert torch.allclose(H_theta, P.T @ H_W @ P, rtol=1e-9, atol=1e-14)
    hw, D = C.weight_hvp(obj)
    assert D == P.shape[0]
    for vw in torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64):
        assert torch.allclose(hw(vw), H_W @ vw, rtol=1e-9, atol=1e-14)
    assert torch.allclose(C.dense(C.pullback_hvp(obj), obj.d), H_theta, rtol=1e-9, atol=1e-14)
    eig_theta, eig_W = torch.linalg.eigvalsh(H_theta), torch.linalg.eigvalsh(H_W)
    assert eig_theta[-1] <= eig_W[-1] + 1e-12 and eig_theta[0] >= eig_W[0] - 1e-12   # Cauchy interlacing
    if kind == "mlp":                                          # Lanczos on the weight-space operator too
        top_W, _, _ = eigen.eigsh_operator(hw, D, k=2, tol=0)
        np.testing.assert_allclose(top_W, eig_W.numpy()[::-1][:2], rtol=1e-6)


class _Bound(torch.nn.Module):
    """model evaluated with a parameter dict (for the loss_fn(model, batch) interface)."""

    def __init__(self, model, params):
        super().__init__()
        self.m, self.p = model, params

    def forward(self, *args):
        return functional_call(self.m, self.p, args)


@pytest.mark.parametrize("case", ["unilora", "lora"])
def test_bilinear_maps_have_a_second_order_term(case):
    """For LoRA / Uni-LoRA, H_theta != J^T H_W J away from a stationary point (the map's curvature)."""
    _, _, _, obj = mlp_objective(case)
    H, H_gn = C.hessian(obj), C.dense(C.pullback_hvp(obj), obj.d)
    assert (H - H_gn).norm() > 1e-3 * H.norm()


def test_hvp_refuses_sdpa_attention_with_a_fix():
    model, (ids,), targets = tiny_bert()
    assert model.config._attn_implementation == "sdpa"
    ge.attach(model, "gpart", d=20, targets=targets)
    obj = L.Objective(model, (ids, torch.zeros(3)), loss_fn=lambda m, b: m(b[0]).last_hidden_state.mean())
    for mode in C.MODES:
        with pytest.raises(ConfigError, match="attn_implementation='eager'"):
            C.hvp(obj, mode=mode)
    model.set_attn_implementation("eager")
    assert torch.isfinite(C.hvp(obj)(torch.ones(20, dtype=torch.float64))).all()


# ----------------------------------------------------------------------------- landscapes
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_grid_center_equals_plain_loss(case):
    model, adapter, (x, y), obj = mlp_objective(case, batch_size=100)
    plain = F.cross_entropy(model(x), y).item()                      # the model's own forward, one chunk
    u, v = L.random_directions(obj.d, 2, seed=1, dtype=torch.float64)
    surf = L.grid(obj, u, v, span=0.5, n=5, progress=False)
    assert surf.loss.shape == (5, 5) and surf.center_loss == plain
    assert L.line(obj, u, span=0.5, n=3, progress=False).center_loss == plain
    curve = L.interpolate(obj, torch.zeros(obj.d, dtype=torch.float64), adapter.theta, n=4, progress=False)
    assert curve.loss[list(curve.coords[0]).index(1.0)] == plain
    chunked = mlp_objective(case, batch_size=3)[3]
    assert chunked.loss() == pytest.approx(plain, rel=1e-13)
    # the grid is theta* + a u + b v: an off-centre point matches a direct evaluation
    i, j = 4, 1
    point = adapter.theta.detach() + surf.coords[0][i] * u.theta + surf.coords[1][j] * v.theta
    assert surf.loss[i, j] == pytest.approx(reference_loss(model, adapter, (x, y))(point).item(), rel=1e-12)


def test_random_directions_are_orthonormal_seeded_and_shared():
    u, v = L.random_directions(50, 2, seed=3, dtype=torch.float64)
    assert abs(u.theta.norm() - 1) < 1e-12 and abs(v.theta.norm() - 1) < 1e-12 and abs(u.theta @ v.theta) < 1e-12
    again = L.random_directions(50, 2, seed=3, dtype=torch.float64)
    assert torch.equal(again[0].theta, u.theta) and torch.equal(again[1].theta, v.theta)
    assert not torch.equal(L.random_directions(50, 2, seed=4, dtype=torch.float64)[0].theta, u.theta)
    assert u.kind == "random-theta" and "d=50" in u.meaning


def test_filter_normalized_weights_have_the_weights_filter_norms():
    g = torch.Generator().manual_seed(0)
    W = {"a.weight": torch.randn(7, 5, generator=g, dtype=torch.float64), "a.bias": torch.randn(7, generator=g)}
    W["a.weight"][2] = 0.0                                            # a dead filter stays at norm 0
    delta = L.filter_normalized_weights(W, seed=1)
    assert torch.allclose(delta["a.weight"].norm(dim=1), W["a.weight"].norm(dim=1), rtol=1e-12, atol=0)
    assert torch.count_nonzero(delta["a.bias"]) == 0
    assert not torch.allclose(delta["a.weight"], W["a.weight"])      # a random direction, not the weights


@pytest.mark.parametrize("kind", ["mlp", "gpt2"])
def test_filter_direction_gpart_is_the_exact_pullback(kind):
    model, inputs, targets = (tiny_mlp if kind == "mlp" else tiny_gpt2)()
    adapter = ge.attach(model, "gpart", d=30, seed=2, targets=targets, include_bias=True, trainable=())
    with torch.no_grad():
        adapter.theta.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    data = (inputs[0], torch.zeros(len(inputs[0]), dtype=torch.long))
    obj = L.Objective(model, data, loss_fn=lambda m, b: torch.zeros(()))
    u = L.filter_direction(obj, seed=5)
    params, dws = dict(model.named_parameters()), adapter.delta_weights()
    kinds = {t.name + ".weight": t.kind for t in adapter.targets}
    for name, delta in u.weight.items():
        if name.endswith(".bias"):
            assert torch.count_nonzero(delta) == 0
            continue
        w = params[name].detach() + dws[name].detach()
        rows = (lambda m: m.t()) if kinds[name] == "conv1d" else (lambda m: m)   # filters = output units
        assert torch.allclose(rows(delta).norm(dim=1), rows(w).norm(dim=1), rtol=1e-12)
    vec = torch.cat([d.reshape(-1) for d in u.weight.values()])
    P = adapter.method.P
    assert torch.allclose(u.theta, P.adjoint(vec), rtol=1e-12, atol=1e-15)
    residual = vec - P(u.theta)                                       # P u = P P^T delta: a projection
    assert P.adjoint(residual).abs().max() < 1e-12 * vec.norm()
    assert u.info["weight_change_norm"] == pytest.approx(u.theta.norm().item(), rel=1e-12)  # isometry
    assert u.kind == "filter" and "P^T" in u.meaning


def test_filter_direction_for_bilinear_maps_needs_linearize():
    _, _, _, obj = mlp_objective("lora")
    with pytest.raises(ConfigError, match="linearize=True"):
        L.filter_direction(obj)
    u = L.filter_direction(obj, linearize=True)
    assert u.kind == "filter-linearized" and "J(theta*)^T" in u.meaning and u.theta.shape == (obj.d,)


def test_interpolate_endpoints_and_coordinates():
    model, adapter, data, obj = mlp_objective("gpart-balanced")
    a = torch.zeros(obj.d, dtype=torch.float64)
    curve = L.interpolate(obj, a, adapter.theta, n=7, t_range=(-0.5, 1.5), progress=False)
    t = curve.coords[0]
    assert 0.0 in t and 1.0 in t and t.min() == -0.5 and t.max() == 1.5
    assert curve.center_loss == obj.loss(a)
    mid = int(np.flatnonzero(t == 0.5)[0])
    assert curve.loss[mid] == pytest.approx(obj.loss(0.5 * adapter.theta.detach()), rel=1e-14)


# ------------------------------------------------------------------------ spectral density
def test_lanczos_quadrature_reproduces_moments_and_spectrum():
    _, _, _, obj = mlp_objective("gpart-balanced")
    H = C.hessian(obj).numpy()
    v0 = np.random.default_rng(0).choice([-1.0, 1.0], size=obj.d)
    a, b = eigen.lanczos(lambda x: H @ x, v0, m=5)
    T = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
    rho, S = np.linalg.eigh(T)
    w = S[0] ** 2
    q = v0 / np.linalg.norm(v0)
    for p in range(0, 10):                                          # Gauss quadrature: exact for p <= 2m - 1
        assert (w * rho ** p).sum() == pytest.approx(q @ np.linalg.matrix_power(H, p) @ q, rel=1e-7, abs=1e-14)
    nodes, weights = C.spectral_density(obj, m=obj.d, n_probes=2, seed=0)
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    eig = np.linalg.eigvalsh(H)
    assert np.abs(nodes[:, None] - eig[None, :]).min(axis=1).max() < 1e-8  # full Lanczos: nodes = eigenvalues


# --------------------------------------------------------------------------- no mutation
CALLS = {
    "loss": lambda o, u, v: o.loss(),
    "line": lambda o, u, v: L.line(o, u, span=0.3, n=3, progress=False),
    "interpolate": lambda o, u, v: L.interpolate(o, u.theta, o.theta, n=3, progress=False),
    "grid": lambda o, u, v: L.grid(o, u, v, span=0.3, n=3, progress=False),
    "filter_direction": lambda o, u, v: L.filter_direction(o, linearize=True),
    "hvp": lambda o, u, v: C.hvp(o)(u.theta),
    "hvp-double-backward": lambda o, u, v: C.hvp(o, mode="double-backward")(u.theta),
    "gradient": lambda o, u, v: C.gradient(o),
    "top_eigenvalues": lambda o, u, v: C.top_eigenvalues(o, k=2, tol=1e-6),
    "spectral_density": lambda o, u, v: C.spectral_density(o, m=4, n_probes=1),
    "weight_hvp": lambda o, u, v: C.weight_hvp(o)[0](torch.ones(C.weight_hvp(o)[1], dtype=torch.float64)),
    "pullback_hvp": lambda o, u, v: C.pullback_hvp(o)(v.theta),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("case", ["gpart-balanced", "gpart-hashed", "unilora", "lora"])
def test_landscape_calls_leave_model_and_theta_bit_identical(case, call):
    name, cfg = METHOD_CASES[case]
    model, _, targets = tiny_mlp()
    adapter = ge.attach(model, name, targets=targets, **cfg)  # trainable="auto": nothing extra here
    model.head.weight.requires_grad_(True)                      # a trainable non-theta parameter too
    with torch.no_grad():
        adapter.theta.add_(0.1)
    model.train()
    model.layers[0].eval()                                      # mixed train flags must survive
    flags = [m.training for m in model.modules()]
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
    obj = L.Objective(model, data, batch_size=4)
    u, v = L.random_directions(obj.d, 2, seed=0, dtype=torch.float64)
    u_copy, theta_obj = u.theta.clone(), adapter.theta
    before = state_hash(model)
    CALLS[call](obj, u, v)
    assert state_hash(model) == before                          # every parameter and buffer, bit for bit
    assert adapter.theta is theta_obj and torch.equal(u.theta, u_copy)
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == flags


# ---------------------------------------------------------------------------- bad input
def test_bad_input_raises_early_with_a_fix():
    model, adapter, data, obj = mlp_objective("gpart-balanced")
    u, v = L.random_directions(obj.d, 2)
    with pytest.raises(ConfigError, match="odd number"):
        L.grid(obj, u, v, n=4)
    with pytest.raises(ConfigError, match="span"):
        L.grid(obj, u, v, span=0.0, n=5)
    with pytest.raises(ConfigError, match=r"theta must have shape \(40,\)"):
        obj.loss(torch.zeros(3))
    with pytest.raises(ConfigError, match="k < d"):
        C.top_eigenvalues(obj, k=40)
    with pytest.raises(ConfigError, match="unknown HVP mode"):
        C.hvp(obj, mode="finite-differences")
    with pytest.raises(ConfigError, match="k <= d"):
        L.random_directions(3, k=4)
    bare, _, _ = tiny_mlp()
    with pytest.raises(ConfigError, match="attach one first"):
        L.Objective(bare, data)
    with pytest.raises(ConfigError, match="empty"):
        L.Objective(model, (data[0][:0], data[1][:0]))
