"""Toys with known answers: GPart's optimum is the projection of the full-FT update onto range(P);
subspace training (intrinsic dimension) wraps a network without touching it."""
import pytest
import torch

import gpart_edu as ge
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import train
from gpart_edu.lab import intrinsic, toys


@pytest.fixture(scope="module")
def ts():
    return toys.make_teacher_student(in_features=12, out_features=6, n_train=40, noise=0.1, seed=0)


def gpart_P(ts, d, assignment="balanced"):
    model = toys.student(ts)
    return model, ge.attach(model, "gpart", d=d, seed=1, targets=["layer"], trainable=(), assignment=assignment)


def test_design_is_whitened_and_full_ft_optimum_is_ols(ts):
    n = ts.X.shape[0]
    assert torch.allclose(ts.X.T @ ts.X, n * torch.eye(12, dtype=torch.float64), atol=1e-10)
    dW = toys.full_ft_optimum(ts)
    assert torch.allclose(dW + ts.W0, ts.Y.T @ ts.X / n, atol=1e-12)
    assert toys.mse(ts, ts.W0 + dW, "train") < toys.mse(ts, ts.W0, "train")


@pytest.mark.parametrize("assignment, d", [("balanced", 1), ("balanced", 5), ("balanced", 30), ("balanced", 72),
                                           ("hashed", 1), ("hashed", 6)])
def test_gpart_optimum_is_the_projection_onto_range_P(ts, assignment, d):
    """Normal equations in theta == P^T vec(Delta W_full); excess train loss == ||(I - P P^T) v||^2 (fp64)."""
    _, adapter = gpart_P(ts, d, assignment)
    P = adapter.method.P
    v = toys.full_ft_optimum(ts).reshape(-1)
    theta = toys.gpart_optimum(ts, P)
    assert torch.allclose(theta, P.adjoint(v), atol=1e-12, rtol=0)
    W = ts.W0 + adapter.delta_weights(theta)["layer.weight"]
    residual = v - P(P.adjoint(v))
    excess = toys.mse(ts, W, "train") - toys.mse(ts, ts.W0 + v.view(6, 12), "train")
    assert excess == pytest.approx(residual.pow(2).sum().item() / 6, rel=1e-9, abs=1e-13)  # mse: mean over out


def test_at_d_equals_D_gpart_reaches_the_full_ft_optimum(ts):
    _, adapter = gpart_P(ts, ts.D)
    W = ts.W0 + adapter.delta_weights(toys.gpart_optimum(ts, adapter.method.P))["layer.weight"]
    assert toys.mse(ts, W) == pytest.approx(toys.mse(ts, ts.W0 + toys.full_ft_optimum(ts)), rel=1e-12)


def test_training_gpart_converges_to_the_closed_form(ts):
    model, adapter = gpart_P(ts, 20)
    theta_star = toys.gpart_optimum(ts, adapter.method.P)
    cfg = train.TrainConfig(steps=300, batch_size=40, lr=0.05, warmup=0.0, grad_clip=None, progress=False)
    train.fit(model, ts.train, config=cfg, loss_fn=toys.regression_loss)
    rel = ((adapter.theta.detach() - theta_star).norm() / theta_star.norm()).item()
    assert rel < 1e-4, rel


def test_lora_optimum_is_truncated_svd(ts):
    v = toys.full_ft_optimum(ts)
    assert torch.allclose(toys.lora_optimum(ts, 6), v, atol=1e-12)
    r2 = toys.lora_optimum(ts, 2)
    assert torch.linalg.matrix_rank(r2) == 2
    s = torch.linalg.svdvals(v)
    assert (v - r2).norm() ** 2 == pytest.approx((s[2:] ** 2).sum().item(), rel=1e-10)


def test_low_rank_teacher_and_bad_sizes():
    t = toys.make_teacher_student(10, 8, n_train=30, rank=2, noise=0.0)
    assert torch.linalg.matrix_rank(t.W_star - t.W0) == 2
    with pytest.raises(ConfigError, match="n_train"):
        toys.make_teacher_student(10, 8, n_train=5)


def test_task_shift_helpers():
    x = torch.arange(24.).view(6, 4)
    y = torch.tensor([5, 0, 7, 5, 9, 1])
    xs, ys = toys.select_classes(x, y, [5, 7, 9])
    assert ys.tolist() == [0, 1, 0, 2] and torch.equal(xs, x[[0, 2, 3, 4]])
    xp = toys.permute_pixels(x, seed=0)
    assert torch.equal(xp.sort(1).values, x) and not torch.equal(xp, x)
    m = toys.new_head(toys.MLP(4, (3,), 10), 5, seed=0)
    assert m(x).shape == (6, 5)
    adapter = ge.attach(m, "gpart", d=4, targets=["layers.0"])  # "classifier" stays trainable (auto)
    assert adapter.trainable_names == ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("kind", intrinsic.PROJECTIONS)
def test_subspace_model_starts_at_the_network_and_trains_only_theta(kind):
    torch.manual_seed(0)
    net = toys.MLP(5, (7,), 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    D = sum(p.numel() for p in net.parameters())
    sm = intrinsic.SubspaceModel(net, intrinsic.make_projection(kind, D, 9, seed=0))
    x = torch.randn(4, 5)
    assert torch.equal(sm(x), net(x))
    assert [n for n, p in sm.named_parameters() if p.requires_grad] == ["theta"]
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g))
    hist = train.fit(sm, data, data, config=train.TrainConfig(steps=40, batch_size=64, lr=0.1, progress=False))
    assert hist.evals[-1]["loss"] < hist.evals[0]["loss"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # params0 is a copy
    delta = sm.params()["layers.0.weight"] - before["layers.0.weight"]
    assert delta.abs().sum() > 0


def test_dense_gaussian_columns_and_limits():
    M = intrinsic.DenseGaussian(500, 20, seed=0)
    assert torch.allclose(M.M.norm(dim=0), torch.ones(20), atol=1e-6)
    gram = M.M.T @ M.M
    off = (gram - torch.eye(20)).abs().max().item()
    assert 0 < off < 0.3     # approximately, never exactly, orthonormal (partition: exactly)
    with pytest.raises(ConfigError, match="GiB"):
        intrinsic.DenseGaussian(10 ** 6, 10 ** 4)
    with pytest.raises(ConfigError, match="unknown projection"):
        intrinsic.make_projection("fastfood", 10, 2)
    with pytest.raises(ConfigError, match="parameters"):
        intrinsic.SubspaceModel(toys.MLP(5, (7,), 3), intrinsic.make_projection("partition", 11, 2))


def test_d90():
    r = intrinsic.d90([100, 10, 1000], [0.8, 0.5, 0.95], baseline=1.0)
    assert r["d90"] == 1000 and r["threshold"] == pytest.approx(0.9)
    assert 100 < r["d90_interp"] < 1000
    assert intrinsic.d90([10, 100], [0.5, 0.6], baseline=1.0)["d90"] is None
    assert intrinsic.d90([10, 100], [0.95, 0.99], baseline=1.0)["d90"] == 10
