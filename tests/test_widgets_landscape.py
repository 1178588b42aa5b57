"""The landscape explorer, driven from plain pytest (no kernel) by setting .value on its controls."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from gpart_edu import widgets  # noqa: E402


def small_problem():
    """A 10-feature, 3-class problem and an MLP 10 -> 8 -> 3: each redraw takes well under a second."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=g) * 2
    y = torch.randint(0, 3, (240,), generator=g)
    x = centers[y] + torch.randn(240, 10, generator=g)

    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))
    return factory, (x[:180], y[:180]), (x[180:], y[180:])


@pytest.fixture
def explorer():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield widgets.landscape_explorer(problem=small_problem(), d_values=(8, 16, 32), steps=30)
    torch.set_num_threads(old)


def test_explorer_draws_on_creation(explorer):
    st = explorer.state
    assert set(explorer.controls) == {"method", "d", "span", "resolution", "direction"}
    surf = st["landscape"]
    assert surf.loss.shape == (11, 11) and np.isfinite(surf.loss).all()
    assert surf.meta["method"] == "gpart" and surf.meta["d"] == 16
    assert surf.meta["direction"]["kind"] == "random-theta"
    assert st["figure"] is not None and st["figure"].axes[0].collections        # a contour was drawn
    assert "gpart: 16 trainable" in st["message"]


def test_explorer_recomputes_on_every_control(explorer):
    c, st = explorer.controls, explorer.state
    first = st["landscape"]
    c["resolution"].value = 7
    assert st["landscape"].loss.shape == (7, 7) and st["landscape"] is not first
    c["span"].value = 3.0
    assert st["landscape"].coords[0][-1] == pytest.approx(3.0) and st["landscape"].meta["span"] == pytest.approx(3.0)
    c["d"].value = 32
    assert st["landscape"].meta["d"] == 32
    c["direction"].value = "filter"
    assert st["landscape"].meta["direction"]["kind"] == "filter"                 # GPart: exact P^T pull-back
    c["method"].value = "lora"
    lora = st["landscape"]
    assert lora.meta["method"] == "lora" and lora.meta["direction"]["kind"] == "filter-linearized"
    assert "J(θ*)ᵀ" in st["message"]                                            # the caveat is shown
    assert lora.meta["d"] == (10 + 8) + (8 + 3)                                   # r = round(32 / 29) = 1
    c["method"].value = "unilora"
    assert st["landscape"].meta["method"] == "unilora" and st["landscape"].meta["d"] == 32


def test_explorer_center_is_the_trained_models_own_loss(explorer):
    """The drawn centre equals the loss of the trained model run through its ordinary forward."""
    explorer.controls["method"].value = "unilora"
    surf, model = explorer.state["landscape"], explorer.state["model"]
    x, y = small_problem()[2]
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(model(x), y).item()
    assert surf.center_loss == pytest.approx(plain, rel=1e-6) and surf.center_loss == surf.loss[5, 5]
    assert surf.meta["n_examples"] == len(y)
