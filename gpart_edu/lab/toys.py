"""Toy problems whose answers are known: teacher-student regression, and a small MLP for task shifts.

Teacher-student (linear, whitened design):
    y = W* x + noise,  W* = W0 + Delta W*,  x in R^in,  W in R^{out x in},  D = out * in.
    The training inputs X (n x in) satisfy X^T X = n I exactly, so the squared loss of W is
        L(W) = ||X W^T - Y||^2 / n = ||W - W_ols||_F^2 + const,    W_ols = Y^T X / n.
    Full fine-tuning optimum: Delta W_full = W_ols - W0.
    GPart (vec Delta W = P theta, P^T P = I): L = ||P theta - vec(Delta W_full)||^2 + const, so
        theta* = P^T vec(Delta W_full)   and   vec(Delta W_gpart) = P P^T vec(Delta W_full),
    the orthogonal projection of the full-FT update onto range(P). Its excess loss is
    ||(I - P P^T) vec(Delta W_full)||^2, about (1 - d/D) ||Delta W_full||^2 for an isotropic update,
    and exactly 0 at d = D.
    LoRA (rank r, any factors): the optimum is the best rank-r approximation of Delta W_full (Eckart-Young):
    its truncated SVD.

``gpart_optimum`` solves GPart's least squares directly (normal equations in theta, any design), so the
projection formula above is a checked consequence, not an assumption.
Taught in notebooks/04_toy_to_small_finetuning.ipynb, sections (a) and (b).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.projections import as_positive_int
from ..errors import ConfigError


@dataclass
class TeacherStudent:
    """A linear teacher-student regression problem (float64). Shapes: W0, W_star (out, in); X (n, in)."""

    W0: torch.Tensor
    W_star: torch.Tensor
    X: torch.Tensor
    Y: torch.Tensor
    X_test: torch.Tensor
    Y_test: torch.Tensor
    noise: float

    @property
    def D(self) -> int:
        return self.W0.numel()

    @property
    def train(self):
        return (self.X, self.Y)

    @property
    def test(self):
        return (self.X_test, self.Y_test)


def make_teacher_student(in_features: int = 32, out_features: int = 16, n_train: int = 256,
                         n_test: int = 2048, rank: int | None = None, delta_scale: float = 1.0,
                         noise: float = 0.1, seed: int = 0) -> TeacherStudent:
    """Draw W0 ~ N(0, 1/in), Delta W* (dense, or of rank ``rank``) with E||Delta W*||_F^2 = delta_scale^2 * out,
    a whitened training design (X^T X = n I) and Gaussian test inputs; y = W* x + N(0, noise^2).
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(a) Teacher–student: GPart's optimum is a projection".
    """
    n_in = as_positive_int(in_features, "in_features")
    n_out = as_positive_int(out_features, "out_features")
    n = as_positive_int(n_train, "n_train")
    if n < n_in:
        raise ConfigError(f"n_train={n} < in_features={n_in}: the full-FT optimum would not be unique; "
                          f"use n_train >= in_features")
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    W0 = torch.randn(n_out, n_in, **f64) / n_in ** 0.5
    if rank is None:
        dW = torch.randn(n_out, n_in, **f64) * delta_scale / n_in ** 0.5
    else:
        r = as_positive_int(rank, "rank")
        dW = (torch.randn(n_out, r, **f64) @ torch.randn(r, n_in, **f64)) * delta_scale / (r * n_in) ** 0.5
    W_star = W0 + dW
    Q, _ = torch.linalg.qr(torch.randn(n, n_in, **f64))      # orthonormal columns
    X = Q * n ** 0.5                                          # X^T X = n I
    Y = X @ W_star.T + noise * torch.randn(n, n_out, **f64)
    X_test = torch.randn(n_test, n_in, **f64)
    Y_test = X_test @ W_star.T + noise * torch.randn(n_test, n_out, **f64)
    return TeacherStudent(W0, W_star, X, Y, X_test, Y_test, float(noise))


def student(ts: TeacherStudent, dtype=torch.float64) -> nn.Module:
    """The pretrained student: one bias-free Linear layer holding W0 (as ``model.layer``).

    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(a) Teacher–student: GPart's optimum is a projection".
    """
    model = nn.Sequential()
    model.add_module("layer", nn.Linear(ts.W0.shape[1], ts.W0.shape[0], bias=False))
    with torch.no_grad():
        model.layer.weight.copy_(ts.W0)
    return model.to(dtype)


def mse(ts: TeacherStudent, W: torch.Tensor, split: str = "test") -> float:
    """Mean squared error of weights W on the test (or train) split, per output coordinate.

    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(a) Teacher–student: GPart's optimum is a projection".
    """
    X, Y = (ts.X_test, ts.Y_test) if split == "test" else (ts.X, ts.Y)
    return float(((X @ W.to(X.dtype).T - Y) ** 2).mean())


def full_ft_optimum(ts: TeacherStudent) -> torch.Tensor:
    """Delta W of the least-squares full fine-tuning solution (ordinary least squares minus W0).

    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(a) Teacher–student: GPart's optimum is a projection".
    """
    W_ols = torch.linalg.lstsq(ts.X, ts.Y).solution.T
    return W_ols - ts.W0


def gpart_optimum(ts: TeacherStudent, P) -> torch.Tensor:
    """theta minimising the training loss of vec(Delta W) = P theta, by the normal equations in theta.

    Math: r(theta) = X (W0 + mat(P theta))^T - Y;  H = P^T (I_out (x) X^T X) P;  H theta = P^T vec(X^T R0)^T
    with R0 = Y - X W0^T. Uses P.to_dense(): meant for toy sizes (D up to ~1e5).
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(a) Teacher–student: GPart's optimum is a projection".
    """
    Pd = P.to_dense().to(torch.float64)                       # (D, d), row-major vec of (out, in)
    n_out, n_in = ts.W0.shape
    if Pd.shape[0] != n_out * n_in:
        raise ConfigError(f"P has D={Pd.shape[0]} rows but the student has {n_out * n_in} weights")
    G = ts.X.T @ ts.X                                         # (in, in)
    GP = (Pd.view(n_out, n_in, -1).permute(0, 2, 1) @ G).permute(0, 2, 1).reshape(n_out * n_in, -1)
    H = Pd.T @ GP                                             # P^T (I (x) G) P
    R0 = ts.Y - ts.X @ ts.W0.T                                # (n, out)
    rhs = Pd.T @ (R0.T @ ts.X).reshape(-1)
    return torch.linalg.solve(H, rhs)


def lora_optimum(ts: TeacherStudent, r: int) -> torch.Tensor:
    """Best rank-r Delta W for the whitened design: the truncated SVD of the full-FT update.

    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(a) Teacher–student: GPart's optimum is a projection".
    """
    U, S, Vh = torch.linalg.svd(full_ft_optimum(ts), full_matrices=False)
    r = min(as_positive_int(r, "r"), len(S))
    return (U[:, :r] * S[:r]) @ Vh[:r]


def regression_loss(model, batch):
    """Mean squared error of model(x) against y (for ``train.fit(..., loss_fn=regression_loss)``)."""
    x, y = batch
    return ((model(x) - y) ** 2).mean()


# ------------------------------------------------------------------------- MLP and task shifts
class MLP(nn.Module):
    """x -> [Linear -> ReLU] * len(hidden) -> classifier. Hidden layers are ``layers.i``; the output layer is
    ``classifier`` (so ``attach(..., trainable="auto")`` keeps it trainable).
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(b) MNIST-5k: pretrain on digits 0–4, fine-tune to digits 5–9".
    """

    def __init__(self, in_features: int = 784, hidden=(128, 128), num_classes: int = 10):
        super().__init__()
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.classifier = nn.Linear(sizes[-1], num_classes)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.classifier(x)


def new_head(model: MLP, num_classes: int, seed: int = 0) -> MLP:
    """Replace the classifier with a freshly initialised one (seeded) for a new task; returns the model.

    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(b) MNIST-5k: pretrain on digits 0–4, fine-tune to digits 5–9".
    """
    torch.manual_seed(seed)
    old = model.classifier
    model.classifier = nn.Linear(old.in_features, num_classes).to(old.weight.dtype)
    return model


def select_classes(x: torch.Tensor, y: torch.Tensor, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples of the given classes, relabelled 0..len(classes)-1 in the given order.

    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(b) MNIST-5k: pretrain on digits 0–4, fine-tune to digits 5–9".
    """
    classes = list(classes)
    keep = torch.isin(y, torch.tensor(classes))
    relabel = torch.full((int(y.max()) + 1,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    return x[keep], relabel[y[keep]]


def permute_pixels(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The same fixed random permutation of the input features for every example (a shifted task)."""
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))
    return x[:, perm]
