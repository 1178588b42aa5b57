"""Interactive explorers for the notebooks. Each is a function that *returns* a widget.

ipywidgets and matplotlib are imported inside the functions (no import-time cost). Every explorer keeps
its controls in ``widget.controls`` (name -> ipywidget) and its latest numbers in ``widget.result``, so
tests drive it without a kernel: set ``widget.controls["d"].value = ...`` and read ``widget.result``.
"""
from __future__ import annotations


def _png(fig) -> bytes:
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


# ---- isometry explorer
EXPLORER_METHODS = ("gpart", "gpart-hashed", "unilora", "lora", "gaussian", "fastfood")
EXPLORER_SIZES = (12, 16, 16, 8)  # the built-in MLP's layer widths: D = 12*16 + 16*16 + 16*8 = 576


def _explorer_targets(sizes=EXPLORER_SIZES):
    from .methods import Target
    return [Target(f"layers.{i}", "linear", a, b, True) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


def explorer_map(method: str, d: int, r: int, seed: int, sizes=EXPLORER_SIZES):
    """The map theta -> vec(Delta W) the isometry explorer shows (a FlatMap over a small built-in MLP)."""
    from .errors import ConfigError
    from .geometry import as_map
    from .methods import GPart, LoRA, UniLoRA
    from .random_projections import FastfoodProjection, GaussianProjection
    targets = _explorer_targets(sizes)
    D = sum(t.numel for t in targets)
    if method in ("gpart", "gpart-hashed"):
        return as_map(GPart(targets, d=d, seed=seed, assignment="hashed" if method == "gpart-hashed"
                            else "balanced"), name=method)
    if method == "unilora":
        return as_map(UniLoRA(targets, d=d, r=r, seed=seed), name=f"unilora (r={r})")
    if method == "lora":
        return as_map(LoRA(targets, r=r, alpha=float(r), seed=seed), name=f"lora (r={r}, alpha=r)")
    if method == "gaussian":
        return as_map(GaussianProjection(D, d, seed=seed), name="gaussian")
    if method == "fastfood":
        return as_map(FastfoodProjection(D, d, seed=seed), name="fastfood")
    raise ConfigError(f"unknown explorer method {method!r}; choose one of {', '.join(EXPLORER_METHODS)}")


def explorer_measure(method: str, d: int, r: int, seed: int, scale: float, n_pairs: int = 150) -> dict:
    """Distance ratios at ||theta|| = scale and the full Jacobian spectrum at a point of norm ``scale``."""
    import torch
    from .geometry import _directions, distance_ratios
    from .jacobian import singular_values
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
    """
    import ipywidgets as W
    from matplotlib.figure import Figure
    from .plots import plot_distance_ratios, plot_singular_values
    D = sum(t.numel for t in _explorer_targets())
    controls = {
        "method": W.Dropdown(options=list(EXPLORER_METHODS), value="gpart", description="method"),
        "d": W.IntSlider(value=64, min=1, max=D, description="d"),
        "r": W.IntSlider(value=2, min=1, max=8, description="r"),
        "seed": W.IntSlider(value=0, min=0, max=20, description="seed"),
        "scale": W.FloatLogSlider(value=1.0, base=10, min=-3, max=1, step=0.25, description="||theta||"),
    }
    image, summary = W.Image(format="png"), W.HTML()
    box = W.VBox([W.HBox([controls["method"], controls["seed"]]),
                  W.HBox([controls["d"], controls["r"]]), controls["scale"], summary, image])
    box.controls, box.result = controls, None

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
        ax1.set_title(f"distance ratios, ||x|| = ||y|| = {v['scale']:.3g}", fontsize=9)
        plot_singular_values({res["method"]: res["singular_values"]}, ax=ax2)
        ax2.set_title("singular values of J = d vec(dW) / d theta", fontsize=9)
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.9, wspace=0.22)
        image.value = _png(fig)
        rr = res["ratios"]
        summary.value = (f"{res['method']}: d = {res['d']}, D = {res['D']}; distance ratio "
                         f"{rr.min():.4g} .. {rr.max():.4g}; sigma in [{res['sigma_min']:.4g}, "
                         f"{res['sigma_max']:.4g}], condition number {res['cond']:.4g}")
        box.result = res

    for c in controls.values():
        c.observe(update, names="value")
    update()
    return box
