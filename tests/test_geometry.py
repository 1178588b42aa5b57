"""gpart_edu.lab.geometry / gpart_edu.lab.jacobian: Gram residuals, distance ratios, Jacobian spectra, projected step."""
import time

import numpy as np
import pytest
import torch

import gpart_edu as ge
from gpart_edu import ConfigError, PartitionProjection
from gpart_edu.lab import geometry, jacobian, maps
from gpart_edu.lab.random_projections import FastfoodProjection, GaussianProjection

from .conftest import MODEL_KINDS, minilm_or_skip, state_hash

F64 = torch.float64


def _attach(kind, method, **cfg):
    model, inputs, targets = MODEL_KINDS[kind]()
    return model, inputs, ge.attach(model, method, targets=targets, **cfg)


def _moved(adapter, seed=0, scale=0.3):
    """Put theta at a generic (seeded) point so the LoRA/Uni-LoRA Jacobians are not degenerate."""
    with torch.no_grad():
        adapter.theta.add_(scale * torch.randn(adapter.theta.shape, generator=torch.Generator().manual_seed(seed),
                                               dtype=adapter.theta.dtype))
    return adapter


# ------------------------------------------------------------------------------- maps
def test_gpart_delta_weights_concatenate_to_P_theta():
    """GPart's per-target gathers give exactly (bit-for-bit) the flat P theta, biases included."""
    for cfg in ({"d": 40, "seed": 3}, {"d": 40, "seed": 3, "include_bias": True},
                {"d": 40, "seed": 3, "assignment": "hashed"}):
        _, _, ad = _attach("bert", "gpart", **cfg)
        theta = torch.randn(40, dtype=F64)
        assert torch.equal(maps.as_map(ad)(theta), ad.method.P(theta))


def test_as_map_accepts_every_kind_and_rejects_others():
    _, _, ad = _attach("mlp", "unilora", d=20, r=2)
    assert maps.as_map(ad).d == 20 and maps.as_map(ad.method).d == 20
    assert torch.equal(maps.as_map(ad).theta0, ad.theta.detach())
    assert maps.as_map(PartitionProjection(30, 4)).d == 4
    assert maps.as_map(lambda t: 2 * t, d=3)(torch.ones(3)).tolist() == [2, 2, 2]
    with pytest.raises(ConfigError, match="callable theta -> Delta W together with d"):
        maps.as_map(lambda t: t)
    with pytest.raises(ConfigError, match=r"must have shape \(20,\)"):
        maps.as_map(ad).point(torch.zeros(3))


# ----------------------------------------------------------------------------- Gram, groups
@pytest.mark.parametrize("assignment", ["balanced", "multinomial", "hashed"])
def test_gram_from_counts_equals_dense_gram(assignment):
    P = PartitionProjection(3000, 50, seed=2, assignment=assignment)
    dense = geometry.gram_residual(P)
    check = geometry.partition_check(P, recount=True)
    eps = torch.finfo(F64).eps
    assert check["max_abs"] <= 2 * eps            # one product n * (1/sqrt(n))^2 per group
    assert dense["max_abs"] <= 60 * eps           # a sum of n = 60 rounded squares per diagonal entry
    assert dense["fro"] <= 50 * 60 * eps and check["fro"] <= 50 * 2 * eps
    assert check["sums_to_D"] and check["empty"] == 0 and check["d"] == 50 and check["D"] == 3000
    if assignment == "balanced":
        assert (check["min"], check["max"]) == (60, 60) and check["std"] == 0


def test_gram_from_counts_flags_empty_groups():
    res = geometry.gram_from_counts(torch.tensor([3, 0, 5]))
    assert res["max_abs"] == 1.0 and geometry.group_stats(torch.tensor([3, 0, 5]))["empty"] == 1


def test_partition_check_recount_detects_corruption():
    P = PartitionProjection(500, 7, seed=0)
    P.counts[0] += 1
    with pytest.raises(ConfigError, match="recounted group sizes differ"):
        geometry.partition_check(P, recount=True)


def test_check_at_scale_hashed_from_counts_and_streamed_norm():
    P = PartitionProjection(2_000_000, 20_000, seed=1, assignment="hashed")
    res = geometry.partition_check(P, recount=True, chunk=1 << 19)
    assert res["max_abs"] <= 2 * torch.finfo(F64).eps and res["sums_to_D"] and res["empty"] == 0
    theta = torch.randn(20_000, dtype=F64)
    n = geometry.streamed_norm(P, theta, chunk=300_001)
    assert abs(n - P(theta).norm().item()) <= 1e-12 * n
    assert abs(n / theta.norm().item() - 1) <= 1e-12


def test_random_projections_have_nonzero_gram_residual():
    for P in (GaussianProjection(256, 8, seed=0), FastfoodProjection(256, 8, seed=0)):
        res = geometry.gram_residual(P)
        assert 1e-3 < res["max_abs"] < 1.0 and res["fro"] >= res["max_abs"]


# ---------------------------------------------------------------------------- distances
@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_gpart_distance_ratios_are_one_fp64_and_fp32(kind):
    _, _, ad = _attach(kind, "gpart", d=40, seed=3)
    r64 = geometry.distance_ratios(ad, 50, scale=3.0)
    r32 = geometry.distance_ratios(ad, 50, scale=3.0, dtype=torch.float32)
    assert np.abs(r64 - 1).max() <= 1e-12
    assert np.abs(r32 - 1).max() <= 1e-6           # float32 map (eps = 6e-8 per entry), float64 norms


def test_unilora_and_lora_ratios_are_2_homogeneous_and_spread():
    """ratio(s x, s y) = s ratio(x, y) exactly for the bilinear maps; GPart's is 1 at every norm."""
    for method, cfg in (("unilora", {"d": 30, "r": 2}), ("lora", {"r": 2})):
        _, _, ad = _attach("bert", method, **cfg)
        by_norm = geometry.ratio_vs_norm(ad, [0.01, 0.1, 1.0, 10.0], n_pairs=20)
        base = by_norm[1.0]
        for s, r in by_norm.items():
            assert np.allclose(r / s, base, rtol=1e-10, atol=0)
        assert base.max() / base.min() > 1.05           # not an isometry: ratios spread
    _, _, ad = _attach("bert", "gpart", d=30)
    for r in geometry.ratio_vs_norm(ad, [0.01, 100.0], n_pairs=10).values():
        assert np.abs(r - 1).max() <= 1e-12


def test_unilora_jacobian_vanishes_at_zero():
    _, _, ad = _attach("bert", "unilora", d=30, r=2)
    v = torch.randn(30, dtype=F64)
    assert maps.jvp(ad, torch.zeros(30), v).abs().max().item() == 0.0
    assert maps.jvp(ad, None, v).abs().max().item() > 0          # at its U(+-0.02) init it does not


def test_analysis_does_not_mutate_model_or_theta():
    model, _, ad = _attach("bert", "unilora", d=30, r=2)
    before, theta = state_hash(model), ad.theta.detach().clone()
    geometry.distance_ratios(ad, 5)
    jacobian.singular_values(ad, k=3, method="lanczos")
    jacobian.singular_value_sample(ad, m=10)
    geometry.gram_residual(ad)
    assert state_hash(model) == before and torch.equal(ad.theta.detach(), theta)


# ------------------------------------------------------------------------------ Jacobian
@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_gpart_singular_values_all_one_unilora_spread(kind):
    _, _, ad = _attach(kind, "gpart", d=40, seed=3)
    s = jacobian.singular_values(ad, k=40, method="dense")
    assert s.max_error_from(1.0) <= 1e-12 and s.cond <= 1 + 1e-12
    _, _, ad = _attach(kind, "unilora", d=30, r=2, seed=3)
    s = jacobian.singular_values(_moved(ad), k=30, method="dense")
    assert s.cond > 1.2 and s.sigma_min > s.resolution       # full rank, but not an isometry


@pytest.mark.parametrize("method,cfg", [("gpart", {"d": 60}), ("gpart", {"d": 60, "assignment": "hashed"}),
                                        ("unilora", {"d": 60, "r": 3}),
                                        ("lora", {"r": 2})])
def test_lanczos_matches_dense_svd(method, cfg):
    _, _, ad = _attach("bert", method, **cfg)
    _moved(ad, seed=1)
    dense = jacobian.singular_values(ad, k=8, method="dense")
    lanc = jacobian.singular_values(ad, k=8, method="lanczos")
    assert lanc.converged["top"]["count"] == 8 and lanc.n_matvec > 0
    assert np.abs(dense.top - lanc.top).max() <= 1e-8 * dense.sigma_max
    if method == "lora":   # bottom of J is exactly 0 (r^2 null directions per layer, B=0 block at init)
        assert dense.cond == np.inf and lanc.cond == np.inf
        assert lanc.bottom.max() <= lanc.resolution
    else:
        assert np.abs(dense.bottom - lanc.bottom).max() <= 1e-8 * dense.sigma_max


def test_jacobian_operator_is_dense_jacobian():
    _, _, ad = _attach("mlp", "unilora", d=20, r=2)
    J = jacobian.jacobian_dense(ad)
    op = jacobian.jacobian_operator(ad)
    E = np.eye(20)
    assert np.abs(op.matmat(E) - J.numpy()).max() <= 1e-13
    assert np.abs(op.rmatvec(np.ones(J.shape[0])) - J.numpy().T @ np.ones(J.shape[0])).max() <= 1e-13


def test_singular_value_sample_full_and_interlaced():
    _, _, ad = _attach("bert", "unilora", d=40, r=2)
    _moved(ad)
    dense = jacobian.singular_values(ad, k=40, method="dense")
    full = jacobian.singular_value_sample(ad, m=64)
    assert np.abs(full - dense.top).max() <= 1e-7 * dense.sigma_max
    part = jacobian.singular_value_sample(ad, m=10, seed=3)
    assert len(part) == 10
    assert part.max() <= dense.sigma_max * (1 + 1e-10) and part.min() >= dense.sigma_min * (1 - 1e-6)


def test_dense_jacobian_refuses_above_limit_and_bad_k():
    _, _, ad = _attach("bert", "gpart", d=40)
    with pytest.raises(ConfigError, match="to_dense would allocate|matrix"):
        jacobian.jacobian_dense(ad, max_bytes=1000)
    with pytest.raises(ConfigError, match="k must be in 1..d=40"):
        jacobian.singular_values(ad, k=41)
    with pytest.raises(ConfigError, match="Lanczos needs k < d - 1"):
        jacobian.singular_values(ad, k=39, method="lanczos")


# ------------------------------------------------------------------------ projected step
_R = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(5), dtype=F64)


def _bert_loss(model, batch):
    """A loss with a generic gradient (LayerNorm makes sum-of-squares losses flat)."""
    h = model(batch).last_hidden_state
    return (h * _R.to(h.dtype)).sum() + h.pow(3).mean()


def test_gpart_step_is_full_step_projected_onto_range_P():
    model, (ids,), ad = _attach("bert", "gpart", d=40, seed=3)
    _moved(ad)
    before = state_hash(model)
    out = jacobian.projected_step(ad, ids, loss_fn=_bert_loss, lr=0.1)
    for key in ("adjoint", "P_adjoint", "orthogonal", "pythagoras", "idempotent"):
        assert out[key] <= 1e-12, (key, out[key])
    eps = torch.finfo(F64).eps   # f(theta - lr g) - f(theta) cancels: floor eps ||f(theta)|| / ||step||
    assert out["linear"] <= 100 * eps * (1 + out["map_norm"] / out["step_norm"])
    assert 0 < out["captured"] < 1          # a projection keeps part of the full step, never more
    assert state_hash(model) == before and all(p.grad is None for p in model.parameters())


def test_projected_step_float64_on_a_float32_model():
    model, (ids,), ad = _attach("bert", "gpart", d=40, seed=3)
    model.float()
    out = jacobian.projected_step(ad, ids, loss_fn=_bert_loss, dtype=F64)
    assert out["P_adjoint"] <= 1e-12 and out["idempotent"] <= 1e-12
    out32 = jacobian.projected_step(ad, ids, loss_fn=_bert_loss)
    assert out32["P_adjoint"] <= 1e-5 and out32["idempotent"] <= 1e-5


def test_unilora_step_is_not_a_projection():
    _, (x,), ad = _attach("mlp", "unilora", d=30, r=2)
    _moved(ad)
    out = jacobian.projected_step(ad, x, loss_fn=lambda m, b: m(b).pow(2).sum(), lr=0.5)
    assert out["adjoint"] <= 1e-12              # the chain rule still holds ...
    assert out["idempotent"] > 1e-3 and out["linear"] > 1e-6   # ... but J J^T is no projector, f not linear


def test_projected_step_refuses_detached_adapter():
    model, (x,), ad = _attach("mlp", "gpart", d=10)
    ad.detach()
    with pytest.raises(ge.AttachError, match="detached"):
        jacobian.projected_step(ad, x, loss_fn=lambda m, b: m(b).sum())


# ------------------------------------------------------------------------------- LoRA
def test_lora_reparametrization_keeps_delta_w():
    _, _, ad = _attach("bert", "lora", r=3)
    _moved(ad)
    M = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5], [1.0, 0.0, 3.0]], dtype=F64)
    t2 = geometry.lora_reparametrize(ad, ad.theta, M)
    f = maps.as_map(ad)
    assert (t2 - ad.theta.detach()).norm() > 1.0
    assert (f(t2) - f(ad.theta.detach())).abs().max().item() <= 1e-12
    with pytest.raises(ConfigError, match="3 x 3"):
        geometry.lora_reparametrize(ad, ad.theta, torch.eye(2))
    _, _, ad2 = _attach("bert", "gpart", d=10)
    with pytest.raises(ConfigError, match="LoRA"):
        geometry.lora_reparametrize(ad2, ad2.theta, M)


def test_lora_symmetry_tangent_is_a_null_direction_of_J():
    _, _, ad = _attach("bert", "lora", r=3)
    _moved(ad)
    dM = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    v = geometry.lora_null_direction(ad, ad.theta, dM)
    assert v.shape == ad.theta.shape and v.norm() > 0.1
    assert maps.jvp(ad, None, v).norm().item() <= 1e-12 * v.norm().item()
    eps = 1e-6   # and it is the derivative of the reparametrisation at M = I
    fd = (geometry.lora_reparametrize(ad, ad.theta, torch.eye(3, dtype=F64) + eps * dM) - ad.theta.detach()) / eps
    assert torch.allclose(fd, v, atol=1e-5, rtol=0)


def test_isometric_lora_control_is_isometric_low_rank_and_trains_B_only():
    model, (ids,), ad = _attach("bert", "lora", r=2, alpha=4.0)
    fmap, handle = geometry.isometric_lora_control(ad, seed=0)
    s = jacobian.singular_values(fmap, k=fmap.d, method="dense")
    assert s.max_error_from(1.0) <= 1e-12                       # isometric in B
    A_idx = torch.ones(ad.num_trainable, dtype=torch.bool)
    A_idx[geometry.lora_b_index(ad)] = False
    A0 = ad.theta.detach()[A_idx].clone()
    opt = torch.optim.SGD([ad.theta], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        _bert_loss(model, ids).backward()
        opt.step()
    assert torch.equal(ad.theta.detach()[A_idx], A0)            # A never moved
    assert ad.theta.detach()[~A_idx].abs().max() > 0            # B did
    for dw in ad.delta_weights().values():
        assert torch.linalg.matrix_rank(dw.detach()) <= 2
    handle.remove()


# ------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_minilm_gpart_jacobian_singular_values_are_one_matrix_free():
    """Acceptance: MiniLM query+value (D = 1,769,472), float64, top-20 and bottom-20 within 1 +- 1e-10."""
    from gpart_edu import assets
    minilm_or_skip()
    model, _ = assets.load_classifier("minilm", num_labels=2)
    ad = ge.attach(model, "gpart", d=23_040, seed=0, targets=["query", "value"])
    assert ad.D == 1_769_472
    t0 = time.perf_counter()
    s = jacobian.singular_values(ad, k=20, method="lanczos")
    print(f"\nMiniLM GPart matrix-free top/bottom-20: {time.perf_counter() - t0:.1f} s, {s.n_matvec} J^T J products")
    assert s.D == 1_769_472 and s.method == "lanczos"
    assert len(s.top) == 20 and len(s.bottom) == 20
    assert s.max_error_from(1.0) <= 1e-10


def test_lanczos_at_zero_jacobian_and_budget_exhaustion():
    _, _, ad = _attach("bert", "unilora", d=30, r=2)
    s = jacobian.singular_values(ad, torch.zeros(30), k=3, method="lanczos")
    assert s.sigma_max == 0.0 and np.all(s.bottom == 0) and s.converged["bottom"]["solver"] == "J = 0"
    s = jacobian.singular_values(_moved(ad), k=3, method="lanczos", tol=1e-14, maxiter=1)
    assert s.converged["top"]["count"] <= 3    # whatever converged within one restart is kept and counted
    assert len(s.top) == s.converged["top"]["count"]


def test_plots_of_an_exact_isometry_do_not_magnify_rounding_noise():
    """GPart's all-ones spectrum and all-ones distance ratios are drawn as what they are: the spectrum axis spans
    at least a decade around 1 (not 1 +- 1e-16 stretched over the axis) and the ratio spike at 1 sits inside
    the frame."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from gpart_edu import plots
    rng = np.random.default_rng(0)
    fig, (a, b) = plt.subplots(1, 2)
    plots.plot_distance_ratios({"gpart": 1 + 1e-16 * rng.standard_normal(50)}, ax=a)
    plots.plot_singular_values({"gpart": 1 + 1e-16 * rng.standard_normal(66)}, ax=b)
    lo, hi = a.get_xlim()
    assert lo < 0.99 and hi > 1.01
    ylo, yhi = b.get_ylim()
    assert yhi / ylo >= 9 and ylo < 1 < yhi
    plt.close(fig)
