"""Interactive explorers for the notebooks. Each function *returns* its widget (ipywidgets is imported
inside the function), so plain pytest can drive it by setting ``.value`` on its controls."""
from __future__ import annotations

import dataclasses
import html
import io
import math
import threading
import types

import torch
from torch import nn

from . import assets, losses, plots
from .core import registry
from .core.adapter import attach
from .core.methods import Target
from .core.targets import describe, find_targets
from .errors import ConfigError
from .finetune import train
from .finetune.compare import METHOD_LABELS, lr_pair, prepare
from .finetune.train import TrainConfig, fit
from .lab import landscape
from .lab.geometry import _directions, distance_ratios
from .lab.jacobian import singular_values
from .lab.maps import as_map
from .lab.random_projections import FastfoodProjection, GaussianProjection
from .plots import plot_distance_ratios, plot_singular_values, plot_training_curves

BUSY_HTML = "<i>computing …</i>"


def _guarded(fn, status, on_error=None):
    """An observer running ``fn``: ``status`` shows a busy line meanwhile, and any error in the widget itself
    (a callback's exception would otherwise go to JupyterLab's log console, where a learner never looks)."""
    def observer(change=None):
        status.value = BUSY_HTML
        try:
            fn()
        except Exception as e:  # noqa: BLE001 -- shown to the learner instead of lost in the log console
            status.value = f"<b style='color:#b00020'>error:</b> {html.escape(f'{type(e).__name__}: {e}')}"
            if on_error is not None:
                on_error(e)
    return observer


# ---- quickstart explorer
EXPLORER_CLASS = "gpart-explorer"            # CSS classes the browser test (tests/test_browser.py) looks for
READOUT_CLASS = "gpart-explorer-readout"


def theta_scale_explorer(adapter, data=None, t_min: float = -1.0, t_max: float = 2.0, step: float = 0.25,
                         t: float = 1.0, max_examples: int = 128, batch_size: int = 64):
    """Return a slider over t that shows ‖ΔW(t·θ)‖ against |t|·‖θ‖ and the model's loss at t·θ.

    θ is a snapshot of ``adapter.theta`` taken now (the adapter and its model are never modified).
    t = 0 is the pretrained weights (with whatever head was trained), t = 1 the trained adapter.
    For GPart ΔW is linear and isometric, so ‖ΔW(t·θ)‖ = |t|·‖θ‖ exactly (computed in float64);
    for LoRA / Uni-LoRA ΔW is bilinear in θ and the ratio grows like |t|.
    ``data`` (optional, at most ``max_examples`` used): held-out examples for loss / accuracy at t·θ, from
    ``losses.evaluate(model, data, theta=t·θ)`` (functional_call: θ swapped for the call only).
    Notebook: 00_quickstart.

    The returned ``VBox`` has ``.slider`` (FloatSlider), ``.readout`` (HTML) and ``.results``
    ({t: {"t", "norm_dw", "predicted", "ratio", "loss", "accuracy"}}, filled as t values are visited).
    """
    import ipywidgets as widgets


    if not (math.isfinite(t_min) and math.isfinite(t_max) and t_min < t_max):
        raise ValueError(f"need finite t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    if not (step > 0 and t_min <= t <= t_max):
        raise ValueError(f"need step > 0 and t_min <= t <= t_max, got step={step!r}, t={t!r}")
    if getattr(adapter, "model", None) is None:
        raise ValueError("the adapter is detached (or not an Adapter); pass ge.get_adapter(model) of a model")
    if adapter.merged:
        raise ValueError("the adapter is merged, so changing θ has no effect; call adapter.unmerge() first")
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples!r}")
    model = adapter.model
    theta = adapter.theta.detach().clone()
    theta64 = theta.double()
    theta_norm = float(theta64.norm())
    if data is not None:
        data = ({k: v[:max_examples] for k, v in data.items()} if isinstance(data, dict)
                else tuple(v[:max_examples] for v in data))

    results: dict = {}

    def measure(tv: float) -> dict:
        if tv not in results:
            dw = adapter.delta_weights(tv * theta64)
            norm_dw = math.sqrt(sum(float(v.pow(2).sum()) for v in dw.values()))
            predicted = abs(tv) * theta_norm
            row = {"t": tv, "norm_dw": norm_dw, "predicted": predicted,
                   "ratio": norm_dw / predicted if predicted > 0 else None}
            if data is not None:
                row.update(losses.evaluate(model, data, batch_size, theta=tv * theta))
            results[tv] = row
        return results[tv]

    def render(row: dict) -> str:
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.12f}"
        lines = [f"<b>t = {row['t']:+.2f}</b> &nbsp; (t = 0: pretrained weights, t = 1: trained θ)",
                 f"‖ΔW(t·θ)‖ measured (float64) = <b>{row['norm_dw']:.6f}</b>",
                 f"|t|·‖θ‖ (isometry predicts) = <b>{row['predicted']:.6f}</b> &nbsp; ratio {ratio}"]
        if "loss" in row:
            n = len(data["labels"] if isinstance(data, dict) else data[1])
            lines.append(f"held-out loss at t·θ = <b>{row['loss']:.4f}</b>, accuracy <b>{row['accuracy']:.3f}</b>"
                         f" (n = {n})")
        return "<br>".join(lines)

    slider = widgets.FloatSlider(value=t, min=t_min, max=t_max, step=step, description="t",
                                 continuous_update=False, readout_format="+.2f",
                                 layout=widgets.Layout(width="420px"))
    readout = widgets.HTML()
    readout.add_class(READOUT_CLASS)

    def on_change(change=None):
        readout.value = render(measure(float(slider.value)))

    slider.observe(_guarded(on_change, readout), names="value")
    on_change()
    box = widgets.VBox([widgets.HTML(f"<b>Scale the trained θ</b> (d = {theta.numel():,}, "
                                     f"‖θ‖ = {theta_norm:.4f}): ΔW(t·θ)"), slider, readout])
    box.add_class(EXPLORER_CLASS)
    box.slider, box.readout, box.results = slider, readout, results
    return box

# ---- landscape explorer
def _digits_problem(seed: int = 0, n_eval: int = 360):
    """A small, fast problem: an MLP 64 -> 32 -> 10 (random, frozen base) on scikit-learn's 8x8 digits."""

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


def landscape_explorer(problem=None, methods=("gpart", "unilora", "lora"), d_values=(32, 64, 128, 256, 512),
                       steps: int = 150, lr: dict | None = None, draw: bool = True):
    """Return a widget: pick method, d, span, resolution and direction type; it trains theta (cached per
    (method, d)), recomputes the 2-D landscape around the trained theta* and redraws the contour plot.

    ``problem``: (model_factory, train_data, eval_data) (default: an MLP on 8x8 digits, a second per redraw).
    Every adaptable layer is targeted; only theta trains. ``box.state`` holds the last ``landscape``,
    ``figure``, ``message`` and trained ``model``; ``box.controls`` the controls; ``box.refresh()`` recomputes by hand.
    Taught in notebooks/03_loss_landscapes.ipynb, section "What the numbers say — and what they do not".
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt


    factory, train_data, eval_data = problem or _digits_problem()
    lr = {"gpart": 5e-2, "unilora": 1e-1, "lora": 5e-2, **(lr or {})}  # a short sweep on the default problem
    tlist = [describe(n, m) for n, m in find_targets(factory())]
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
    box.state = {"landscape": None, "figure": None, "message": "", "model": None, "error": None}
    box.add_class(EXPLORER_CLASS)      # stable selectors for the browser test
    status.add_class(READOUT_CLASS)

    def trained(method, d):
        key = (method, d)
        if key not in cache:
            model = factory()
            adapter = attach(model, method, targets="all-linear", trainable=(),
                             **registry.config_for_size(method, tlist, d))
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
        box.state.update(landscape=surf, figure=fig, message=msg, model=model, error=None)
        status.value = msg
        if fig is not None:
            if _in_kernel():  # outside a kernel (pytest) there is nothing to display into
                from IPython.display import display
                with output:
                    output.clear_output(wait=True)
                    display(fig)
            plt.close(fig)  # shown once, inside the widget; the object stays in box.state

    on_error = lambda e: box.state.update(error=e, message=f"{type(e).__name__}: {e}")  # noqa: E731
    for w in controls.values():
        w.observe(_guarded(refresh, status, on_error), names="value")
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


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


# ---- isometry explorer
EXPLORER_METHODS = ("gpart", "gpart-hashed", "unilora", "lora", "gaussian", "fastfood")
EXPLORER_SIZES = (12, 16, 16, 8)  # the built-in MLP's layer widths: D = 12*16 + 16*16 + 16*8 = 576


def _explorer_targets(sizes=EXPLORER_SIZES):
    return [Target(f"layers.{i}", "linear", a, b, True) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


def explorer_map(method: str, d: int, r: int, seed: int, sizes=EXPLORER_SIZES):
    """The map theta -> vec(Delta W) the isometry explorer shows (a FlatMap over a small built-in MLP)."""
    targets = _explorer_targets(sizes)
    D = sum(t.numel for t in targets)
    if method in ("gpart", "gpart-hashed"):
        return as_map(registry.build("gpart", targets, d, seed=seed,
                                     assignment="hashed" if method == "gpart-hashed" else "balanced"), name=method)
    if method == "unilora":
        return as_map(registry.build("unilora", targets, d, r=r, seed=seed), name=f"unilora (r={r})")
    if method == "lora":
        return as_map(registry.build("lora", targets, r, alpha=float(r), seed=seed), name=f"lora (r={r}, alpha=r)")
    if method == "gaussian":
        return as_map(GaussianProjection(D, d, seed=seed), name="gaussian")
    if method == "fastfood":
        return as_map(FastfoodProjection(D, d, seed=seed), name="fastfood")
    raise ConfigError(f"unknown explorer method {method!r}; choose one of {', '.join(EXPLORER_METHODS)}")


def explorer_measure(method: str, d: int, r: int, seed: int, scale: float, n_pairs: int = 150) -> dict:
    """Distance ratios at ||theta|| = scale and the full Jacobian spectrum at a point of norm ``scale``."""
    f = explorer_map(method, d, r, seed)
    ratios = distance_ratios(f, n_pairs=n_pairs, scale=scale, seed=seed)
    point = _directions(f.d, 1, seed + 10_000, torch.float64)[0] * scale
    spec = singular_values(f, point, k=f.d, method="dense")
    return {"method": f.name, "d": f.d, "D": spec.D, "scale": scale, "ratios": ratios,
            "singular_values": spec.top, "sigma_min": spec.sigma_min, "sigma_max": spec.sigma_max,
            "cond": spec.cond}


def isometry_explorer(n_pairs: int = 150):
    """Return a widget: pick method, d, r, seed and ||theta||; see distance ratios and the J spectrum.

    The map acts on a built-in MLP (widths 12-16-16-8, D = 576 adapted weights), so every update is a
    dense Jacobian SVD plus ``n_pairs`` distance ratios (well under a second). LoRA ignores d (its theta
    has r (in + out) entries per layer); GPart / Gaussian / Fastfood ignore r.
    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "7 · Explore".
    """
    import ipywidgets as W
    from matplotlib.figure import Figure
    D = sum(t.numel for t in _explorer_targets())
    controls = {
        "method": W.Dropdown(options=list(EXPLORER_METHODS), value="gpart", description="method"),
        "d": W.IntSlider(value=64, min=1, max=D, description="d", continuous_update=False),
        "r": W.IntSlider(value=2, min=1, max=8, description="r", continuous_update=False),
        "seed": W.IntSlider(value=0, min=0, max=20, description="seed", continuous_update=False),
        "scale": W.FloatLogSlider(value=1.0, base=10, min=-3, max=1, step=0.25, description="‖θ‖",
                                   continuous_update=False),     # a drag recomputes once, on release
    }
    image, summary = W.Image(format="png"), W.HTML()
    box = W.VBox([W.HBox([controls["method"], controls["seed"]]),
                  W.HBox([controls["d"], controls["r"]]), controls["scale"], summary, image])
    box.controls, box.result = controls, None
    box.add_class(EXPLORER_CLASS)      # stable selectors for the browser test
    summary.add_class(READOUT_CLASS)

    def update(_=None):
        v = {k: c.value for k, c in controls.items()}
        try:
            res = explorer_measure(v["method"], v["d"], v["r"], v["seed"], v["scale"], n_pairs)
        except ValueError as e:  # a ConfigError (e.g. empty hashed groups): say it, keep the old picture
            summary.value = f"<b>cannot build this map:</b> {e}"
            box.result = {"error": str(e), **v}
            return
        fig = Figure(figsize=(10, 3.2))
        ax1, ax2 = fig.subplots(1, 2)
        plot_distance_ratios({res["method"]: res["ratios"]}, ax=ax1)
        ax1.set_title(f"distance ratios, ‖x‖ = ‖y‖ = {v['scale']:.3g}", fontsize=9)
        plot_singular_values({res["method"]: res["singular_values"]}, ax=ax2)
        ax2.set_title("singular values of J = ∂vec(ΔW)/∂θ", fontsize=9)
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.9, wspace=0.22)
        image.value = _png(fig)
        rr = res["ratios"]
        summary.value = (f"{res['method']}: d = {res['d']}, D = {res['D']}; distance ratio "
                         f"{rr.min():.4g} .. {rr.max():.4g}; σ in [{res['sigma_min']:.4g}, "
                         f"{res['sigma_max']:.4g}], condition number {res['cond']:.4g}")
        box.result = res

    def on_error(e):
        box.result = {"error": f"{type(e).__name__}: {e}"}
    for c in controls.values():
        c.observe(_guarded(update, summary, on_error), names="value")
    update()
    return box


# ---- live training
def _budget_label(method: str, budget) -> str:
    return "—" if budget is None else f"{registry.BUDGET_KEY.get(method, 'budget')}={budget:,}"


def _render_png(hist, title: str, metric: str) -> bytes:
    """PNG of the loss / metric curves, drawn on a plain Agg figure (thread-safe: no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    plot_training_curves(hist, axes=axes, metric=metric, title=title)
    fig.tight_layout()
    return _png(fig)


def live_training(make_model, train, eval_data, *, methods: dict, config=None, targets="all-linear",
                  lrs: dict | None = None, method_kwargs: dict | None = None, seed: int = 0,
                  update_every: int = 5, background: bool = True, metric: str = "accuracy", **fit_kwargs):
    """Return a widget to train one (method, budget) live: pick, Start, watch the curves, Stop.

    ``methods[name] = [budgets]`` ("gpart"/"unilora": d, "lora": r, "head"/"full": [None]);
    ``make_model(seed)`` returns a fresh model; ``config`` a ``train.TrainConfig`` (set ``eval_every`` to see
    the metric curve grow); ``lrs[name] = (lr, head_lr)``. Training runs in a background thread (so the Stop
    button is heard while it trains) unless ``background=False``. Stop works through ``fit``'s callback.

    The returned VBox carries ``.controls`` (method, budget, start, stop, image, status), ``.state``
    (history, model, running) and ``.wait(timeout)`` (join the training thread; for tests and scripts).
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(b) MNIST-5k: pretrain on digits 0–4, fine-tune to digits 5–9".
    """

    import ipywidgets as W


    if not methods:
        raise ValueError("live_training needs methods={name: [budgets]}, e.g. {'gpart': [4096], 'head': [None]}")
    cfg0 = config or TrainConfig(steps=100, eval_every=20)
    lrs, method_kwargs = lrs or {}, method_kwargs or {}
    names = list(methods)
    method_dd = W.Dropdown(options=[(METHOD_LABELS.get(m, m), m) for m in names], value=names[0],
                           description="method")
    budget_dd = W.Dropdown(description="budget")
    start = W.Button(description="Start", button_style="success", icon="play")
    stop = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
    image = W.Image(format="png", layout=W.Layout(width="720px"))
    status = W.HTML("ready: pick a method and a budget, then Start")
    state = {"history": None, "model": None, "running": False, "stop": False, "thread": None, "error": None}

    def set_budgets(change=None):
        m = method_dd.value
        budget_dd.options = [(_budget_label(m, b), b) for b in methods[m]]
        budget_dd.value = methods[m][0]

    set_budgets()
    method_dd.observe(set_budgets, names="value")

    def run(m, b):
        title = f"{METHOD_LABELS.get(m, m)} {_budget_label(m, b)}"
        try:
            model = make_model(seed)
            n = prepare(model, m, b, seed=seed, targets=targets, **method_kwargs.get(m, {}))
            lr, head_lr = lr_pair(lrs, m, b)
            cfg = dataclasses.replace(cfg0, seed=seed, progress=False, lr=cfg0.lr if lr is None else lr,
                                      head_lr=cfg0.head_lr if head_lr is None else head_lr)
            state["model"] = model
            status.value = f"training {title} ({n:,} parameters besides the head) ..."

            def callback(hist, step):
                state["history"] = hist
                if step % update_every == 0 or step == cfg.steps:
                    image.value = _render_png(hist, f"{title}: step {step}/{cfg.steps}", metric)
                return state["stop"]

            hist = fit(model, train, eval_data, config=cfg, callback=callback, **fit_kwargs)
            state["history"] = hist
            image.value = _render_png(hist, title, metric)
            final = hist.final
            what = "stopped" if hist.stopped_early else "done"
            score = f"{metric} {final[metric]:.4f}" if metric in final else "no evaluation"
            status.value = (f"{what}: {title}, {hist.steps_done} steps in {hist.wall_time:.1f} s, "
                            f"final eval {score}")
        except Exception as e:  # shown in the widget; also kept for scripts and tests
            state["error"] = e
            status.value = f"<b>error</b>: {type(e).__name__}: {e}"
        finally:
            state["running"] = False
            start.disabled, stop.disabled = False, True
            method_dd.disabled = budget_dd.disabled = False

    def on_start(_=None):
        if state["running"]:
            return
        state.update(running=True, stop=False, history=None, error=None)
        start.disabled, stop.disabled = True, False
        method_dd.disabled = budget_dd.disabled = True
        args = (method_dd.value, budget_dd.value)
        if background:
            state["thread"] = threading.Thread(target=run, args=args, daemon=True)
            state["thread"].start()
        else:
            run(*args)

    def on_stop(_=None):
        state["stop"] = True
        status.value = "stopping after the current step ..."

    start.on_click(on_start)
    stop.on_click(on_stop)

    def wait(timeout: float | None = None) -> bool:
        """Join the training thread; True when no training is running afterwards."""
        t = state["thread"]
        if t is not None:
            t.join(timeout)
        return not state["running"]

    box = W.VBox([W.HBox([method_dd, budget_dd, start, stop]), status, image])
    box.controls = types.SimpleNamespace(method=method_dd, budget=budget_dd, start=start, stop=stop, image=image,
                                         status=status)
    box.state, box.wait = state, wait
    return box


# ---- static snapshots (gpart_edu/snapshot.py): each explorer's widget also offers a PNG of its current state,
# which pages without a kernel (the book) show in place of the live widget
from . import snapshot as _snapshot  # noqa: E402

theta_scale_explorer, landscape_explorer, isometry_explorer, live_training = map(
    _snapshot.with_snapshot, (theta_scale_explorer, landscape_explorer, isometry_explorer, live_training))
