"""Interactive explorers for the notebooks. Each function *returns* a widget (ipywidgets imported inside),
so a test can drive it from plain pytest by setting ``.value`` on its controls."""
from __future__ import annotations


# ---- landscape explorer
def _digits_problem(seed: int = 0, n_eval: int = 360):
    """A small, fast problem: an MLP 64 -> 32 -> 10 (random, frozen base) on scikit-learn's 8x8 digits."""
    import torch
    from torch import nn

    from . import assets
    try:
        (x_tr, y_tr), (x_te, y_te) = assets.load_digits(seed=seed)
    except assets.AssetMissing:  # no scikit-learn: a seeded synthetic 10-class problem of the same shape
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(10, 64, generator=g)
        y = torch.randint(0, 10, (1797,), generator=g)
        x = centers[y] + 0.8 * torch.randn(1797, 64, generator=g)
        (x_tr, y_tr), (x_te, y_te) = (x[360:], y[360:]), (x[:360], y[:360])

    def factory():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))

    return factory, (x_tr, y_tr), (x_te[:n_eval], y_te[:n_eval])


def _method_config(method: str, d: int, layer_sizes) -> dict:
    """Config giving ``method`` about d trainable parameters (LoRA: the r whose count is closest to d)."""
    per_r = sum(i + o for i, o in layer_sizes)
    if method == "lora":
        return {"r": max(1, round(d / per_r)), "alpha": 8.0, "seed": 0}
    if method == "unilora":
        return {"d": d, "r": max(4, -(-d // per_r)), "seed": 0}
    return {"d": d, "seed": 0}


def landscape_explorer(problem=None, methods=("gpart", "unilora", "lora"), d_values=(32, 64, 128, 256, 512),
                       steps: int = 150, lr: dict | None = None, draw: bool = True):
    """Return a widget: pick method, d, span, resolution and direction type; it trains theta (cached per
    (method, d)), recomputes the 2-D landscape around the trained theta* and redraws the contour plot.

    ``problem``: (model_factory, train_data, eval_data) (default: an MLP on 8x8 digits, a second per redraw).
    Every adaptable layer is targeted; only theta trains. ``box.state`` holds the last ``landscape``,
    ``figure``, ``message`` and trained ``model``; ``box.controls`` the controls; ``box.refresh()`` recomputes by hand.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from . import landscape, plots, train
    from .adapter import attach
    from .targets import describe, find_targets

    factory, train_data, eval_data = problem or _digits_problem()
    lr = {"gpart": 5e-2, "unilora": 1e-1, "lora": 5e-2, **(lr or {})}  # a short sweep on the default problem
    sizes = [(t.in_features, t.out_features) for t in (describe(n, m) for n, m in find_targets(factory()))]
    controls = {
        "method": W.Dropdown(options=list(methods), value=methods[0], description="method"),
        "d": W.SelectionSlider(options=list(d_values), value=d_values[len(d_values) // 2], description="d",
                               continuous_update=False),
        "span": W.FloatLogSlider(value=5.0, base=10, min=-1, max=1.3, step=0.1, description="span",
                                 continuous_update=False),
        "resolution": W.IntSlider(value=11, min=5, max=31, step=2, description="resolution",
                                  continuous_update=False),
        "direction": W.ToggleButtons(options=[("random θ", "random-theta"), ("filter-normalised", "filter")],
                                     value="random-theta", description="direction"),
    }
    output = W.Output()
    status = W.HTML()
    cache = {}
    box = W.VBox([W.HBox([controls["method"], controls["d"]]), W.HBox([controls["span"], controls["resolution"]]),
                  controls["direction"], status, output])
    box.controls, box.output = controls, output
    box.state = {"landscape": None, "figure": None, "message": "", "model": None}

    def trained(method, d):
        key = (method, d)
        if key not in cache:
            model = factory()
            adapter = attach(model, method, targets="all-linear", trainable=(), **_method_config(method, d, sizes))
            cfg = train.TrainConfig(steps=steps, batch_size=64, lr=lr[method], warmup=0.1, progress=False, seed=0,
                                    device=str(adapter.theta.device))
            hist = train.fit(model, train_data, eval_data, config=cfg)
            cache[key] = (model, hist.final.get("accuracy", float("nan")))
        return cache[key]

    def refresh(_=None):
        c = {k: w.value for k, w in controls.items()}
        model, acc = trained(c["method"], c["d"])
        obj = landscape.Objective(model, eval_data)
        if c["direction"] == "filter":
            u, v = (landscape.filter_direction(obj, seed=s, linearize=True) for s in (0, 1))
        else:
            u, v = landscape.random_directions(obj.d, 2, seed=0, dtype=obj.theta.dtype)
        surf = landscape.grid(obj, u, v, span=c["span"], n=c["resolution"], progress=False)
        msg = (f"{c['method']}: {obj.d} trainable, held-out accuracy {acc:.3f}, loss at θ* {surf.center_loss:.4f}, "
               f"on the plane {surf.loss.min():.4f} … {surf.loss.max():.4f}; "
               f"grid {c['resolution']}×{c['resolution']} in {surf.meta['seconds']:.2f} s")
        if u.kind == "filter-linearized":
            msg += " — the map is bilinear: the filter direction is pulled back with J(θ*)ᵀ (first order only)"
        fig = plots.plot_landscape_contours({f"{c['method']} (θ-count {obj.d})": surf}) if draw else None
        box.state.update(landscape=surf, figure=fig, message=msg, model=model)
        status.value = msg
        if fig is not None:
            if _in_kernel():  # outside a kernel (pytest) there is nothing to display into
                from IPython.display import display
                with output:
                    output.clear_output(wait=True)
                    display(fig)
            plt.close(fig)  # shown once, inside the widget; the object stays in box.state

    for w in controls.values():
        w.observe(refresh, names="value")
    box.refresh = refresh
    refresh()
    return box


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
