"""Interactive widgets for the notebooks. Each function *returns* its widget (ipywidgets is imported
inside the function), so plain pytest can drive it by setting ``.value`` on its controls."""
from __future__ import annotations


# ---- live training
def _budget_label(method: str, budget) -> str:
    from .compare import BUDGET_KEY
    return "—" if budget is None else f"{BUDGET_KEY.get(method, 'budget')}={budget:,}"


def _render_png(hist, title: str, metric: str) -> bytes:
    """PNG of the loss / metric curves, drawn on a plain Agg figure (thread-safe: no pyplot)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plots import plot_training_curves
    fig = Figure(figsize=(9, 3.2), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    plot_training_curves(hist, axes=axes, metric=metric, title=title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


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
    """
    import dataclasses
    import threading
    import types

    import ipywidgets as W

    from .compare import METHOD_LABELS, lr_pair, prepare
    from .train import TrainConfig, fit

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
