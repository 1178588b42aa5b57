"""Matplotlib helpers used by the notebooks (matplotlib is imported lazily, inside each function)."""
from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib.pyplot as plt
    return plt


# One colour per method in every figure (key: a method name or the start of a label, case and "-" ignored).
METHOD_COLORS = {"unilora": "C1", "lora": "C2", "gpart": "C0", "partition": "C0", "control": "C4", "gaussian": "C3",
                 "fastfood": "C5", "head": "0.4", "full": "k"}


def method_color(name, i: int = 0) -> str:
    """The fixed colour of the method that ``name`` names ("gpart", "Uni-LoRA", "lora (r=2)", ...), else C{6+i}."""
    key = str(name).lower().replace("-", "").replace(" ", "")
    return next((c for k, c in METHOD_COLORS.items() if key.startswith(k)), f"C{(6 + i) % 10}")


def plot_history(hist, ax=None, label: str | None = None, smooth: int = 5):
    """Training loss per step (raw, faint) and a running mean over ``smooth`` steps; evals as dots.

    Taught in notebooks/00_quickstart.ipynb, section "4 · Train for a few steps".
    """
    ax = _ax(ax, (6, 3.2))
    steps = list(range(1, len(hist.losses) + 1))
    line, = ax.plot(steps, hist.losses, alpha=0.3, lw=1, color=method_color(label, len(ax.lines)) if label else None)
    k = max(1, min(smooth, len(hist.losses)))
    run = [sum(hist.losses[max(0, i - k + 1): i + 1]) / (i - max(0, i - k + 1) + 1) for i in range(len(hist.losses))]
    ax.plot(steps, run, color=line.get_color(), lw=2, label=(label or "train") + f" (mean of {k})")
    if hist.evals:
        ax.plot([e["step"] for e in hist.evals], [e["loss"] for e in hist.evals], "o", color=line.get_color(),
                label=(label or "") + " eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


# ---- landscape plots
def landscape_levels(landscapes, n: int = 21, log: bool = False, vmax: float | None = None):
    """Contour levels shared by several ``landscape.Landscape`` grids (one colour scale for all).

    ``log``: levels of log10(loss). ``vmax``: cap the scale (losses above it share the top colour).
    """
    vals = np.concatenate([np.asarray(s.loss, dtype=float).ravel() for s in landscapes])
    vals = vals[np.isfinite(vals)]
    lo, hi = float(vals.min()), float(vals.max() if vmax is None else min(vmax, vals.max()))
    if log:
        lo, hi = np.log10(max(lo, 1e-12)), np.log10(max(hi, 1e-12))
    if hi <= lo:
        hi = lo + 1e-9
    return np.linspace(lo, hi, n)


def _surface_values(s, log: bool):
    z = np.asarray(s.loss, dtype=float)
    return np.log10(np.maximum(z, 1e-12)) if log else z


def _direction_label(info: dict) -> str:
    names = {"random-theta": "random θ-direction", "filter": "filter-normalised (Pᵀδ)",
             "filter-linearized": "filter-normalised (J(θ*)ᵀδ, linearised)"}
    return names.get(info.get("kind"), info.get("kind", ""))


def plot_landscape_contours(surfaces: dict, levels=None, log: bool = False, vmax: float | None = None,
                            ncols: int | None = None, size: float = 3.6, cmap: str = "viridis"):
    """Filled contours of several 2-D landscapes on ONE colour scale; x marks theta*, * the grid minimum.

    ``surfaces``: {label: Landscape} (kind "grid"). Returns the figure (one colour bar for all panels).
    Taught in notebooks/03_loss_landscapes.ipynb, section "1 · Ground truth: a 2-parameter quadratic".
    """
    plt = _plt()
    items = list(surfaces.items())
    if not items:
        raise ValueError("plot_landscape_contours needs at least one landscape")
    lv = landscape_levels([s for _, s in items], log=log, vmax=vmax) if levels is None else np.asarray(levels)
    ncols = ncols or len(items)
    nrows = -(-len(items) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.8, size * nrows), squeeze=False,
                             constrained_layout=True)
    cs = None
    for ax, (label, s) in zip(axes.ravel(), items):
        a, b = s.coords
        z = np.clip(_surface_values(s, log), lv[0], lv[-1])
        cs = ax.contourf(a, b, z.T, levels=lv, cmap=cmap, extend="neither")  # loss[i, j] at (a_i, b_j)
        ax.contour(a, b, z.T, levels=lv, colors="k", linewidths=0.3, alpha=0.4)
        ax.plot(0, 0, "x", color="red", ms=9, mew=2, label="θ* (trained)")
        ma, mb = s.argmin()
        ax.plot(ma, mb, "*", color="white", mec="k", ms=12, label="grid minimum")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("a  (" + _direction_label(s.meta.get("direction", {})) + " u)", fontsize=8)
        ax.set_ylabel("b  (v)", fontsize=8)
        ax.set_aspect("equal")
    for ax in axes.ravel()[len(items):]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize=7, loc="upper left")
    fig.colorbar(cs, ax=axes.ravel().tolist(), label="log10 loss" if log else "loss", shrink=0.9)
    return fig


def plot_landscape_lines(curves: dict, ax=None, log: bool = False, xlabel: str | None = None):
    """Loss along 1-D landscapes (interpolations or lines) on one axis; dots mark t = 0 (and t = 1).

    Taught in notebooks/03_loss_landscapes.ipynb, section "2 · An MLP on real MNIST digits".
    """
    ax = _ax(ax, (6, 3.4))
    for i, (label, c) in enumerate(curves.items()):
        t, z = c.coords[0], np.asarray(c.loss, dtype=float)
        line_, = ax.plot(t, z, lw=2, label=label, color=method_color(label, i))
        ends = [0.0, 1.0] if c.meta.get("kind") == "interpolation" else [0.0]
        for e in ends:
            i = int(np.flatnonzero(t == e)[0])
            ax.plot(t[i], z[i], "o", color=line_.get_color(), mec="k")
    if log:
        ax.set_yscale("log")
    kind = next(iter(curves.values())).meta.get("kind") if curves else ""
    default = "t   (θ = (1 − t)·θ_init + t·θ_trained)" if kind == "interpolation" else "t   (θ* + t·u)"
    ax.set_xlabel(xlabel or default)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_landscape_surface(surface, ax=None, log: bool = False, levels=None, cmap: str = "viridis"):
    """3-D surface of one 2-D landscape (colour scale from ``levels``, e.g. ``landscape_levels`` of all).

    Taught in notebooks/03_loss_landscapes.ipynb, section "1 · Ground truth: a 2-parameter quadratic".
    """
    plt = _plt()
    if ax is None:
        fig = plt.figure(figsize=(5, 4))
        ax = fig.add_subplot(projection="3d")
    a, b = surface.coords
    A, B = np.meshgrid(a, b, indexing="ij")
    z = _surface_values(surface, log)
    lv = landscape_levels([surface], log=log) if levels is None else np.asarray(levels)
    ax.plot_surface(A, B, np.clip(z, lv[0], lv[-1]), cmap=cmap, vmin=lv[0], vmax=lv[-1], linewidth=0,
                    antialiased=True, alpha=0.9)
    ax.scatter([0], [0], [_surface_values(surface, log)[len(a) // 2, len(b) // 2]], color="red", s=40,
               label="θ*")
    ax.set(xlabel="a", ylabel="b", title="loss surface around θ*")
    ax.set_zlabel("log10 loss" if log else "loss")
    return ax


def plot_spectral_density(densities: dict, ax=None, sigma: float | None = None, n: int = 400):
    """Gaussian-smoothed eigenvalue densities from ``curvature.spectral_density`` ({label: (nodes, weights)}).

    Taught in notebooks/03_loss_landscapes.ipynb, section 2 ("Curvature of the MLP").
    """
    ax = _ax(ax, (6, 3.2))
    allnodes = np.concatenate([nw[0] for nw in densities.values()])
    lo, hi = float(allnodes.min()), float(allnodes.max())
    width = max(hi - lo, 1e-12)
    s = sigma or width / 60
    x = np.linspace(lo - 3 * s, hi + 3 * s, n)
    top = 0.0
    for label, (nodes, weights) in densities.items():
        dens = (weights[None, :] * np.exp(-(x[:, None] - nodes[None, :]) ** 2 / (2 * s * s))).sum(1)
        dens = dens / (s * np.sqrt(2 * np.pi))
        top = max(top, float(dens.max()))
        ax.plot(x, dens, label=label)
    ax.set_yscale("log")
    ax.set_ylim(top * 1e-6, top * 3)
    ax.set_xlabel("eigenvalue of H_θ")
    ax.set_ylabel("density (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


# ---- geometry plots
def _ax(ax, size=(6, 3.2)):
    if ax is None:
        _, ax = _plt().subplots(figsize=size)
    return ax


def plot_matrix(M, ax=None, title: str = "", fmt: str = "{:.2f}", cmap: str = "Blues"):
    """A small matrix as an image with every entry written in its cell (e.g. P for D = 12, d = 3).

    Taught in notebooks/01_isometric_partition.ipynb, section "1 · Ground truth: D = 12 weights, d = 3 parameters".
    """
    M = np.asarray(M, dtype=float)
    ax = _ax(ax, (0.5 * M.shape[1] + 1.5, 0.3 * M.shape[0] + 1))
    ax.imshow(M, cmap=cmap, aspect="auto")
    for (i, j), v in np.ndenumerate(M):
        if M.size <= 400:
            ax.text(j, i, fmt.format(v) if v else "·", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * np.abs(M).max() else "black")
    ax.set(xticks=range(M.shape[1]), yticks=range(M.shape[0]), xlabel="column index j", ylabel="row index i")
    ax.set_title(title, fontsize=9)
    return ax


def plot_group_sizes(counts_by_name: dict, ax=None, bins: int = 40):
    """Histogram of partition group sizes nⱼ, one per assignment.

    Taught in notebooks/01_isometric_partition.ipynb, section "2 · Three ways to choose the groups".
    """
    ax = _ax(ax)
    for name, counts in counts_by_name.items():
        c = counts.cpu().numpy() if hasattr(counts, "cpu") else counts
        ax.hist(c, bins=bins, alpha=0.5, label=f"{name} (min {c.min()}, max {c.max()})")
    ax.set(xlabel="group size nⱼ", ylabel="number of groups")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_distance_ratios(ratios_by_name: dict, ax=None, bins: int = 40, logx: bool = False):
    """Histogram of ‖f(x) − f(y)‖ / ‖x − y‖ per map (fixed method colours); the isometry is the line at 1.

    Taught in notebooks/01_isometric_partition.ipynb, section "4 · Random projections: isometric only in expectation".
    """
    ax = _ax(ax)
    for i, (name, r) in enumerate(ratios_by_name.items()):
        r, color = np.asarray(r), method_color(name, i)
        if np.ptp(r) < 1e-9:  # an exact isometry: one spike
            ax.axvline(r.mean(), lw=3, alpha=0.7, color=color, label=f"{name}: all {r.mean():.12f}")
        else:
            edges = np.geomspace(r.min(), r.max(), bins) if logx and r.min() > 0 else bins
            ax.hist(r, bins=edges, alpha=0.5, color=color, label=f"{name}: {r.min():.3g} .. {r.max():.3g}")
    ax.axvline(1.0, color="k", ls=":", lw=1)
    if logx:
        ax.set_xscale("log")
    else:  # show 1 and every ratio with a margin (a spike at 1 must not sit on the frame)
        vals = np.concatenate([np.asarray(r, dtype=float).ravel() for r in ratios_by_name.values()] + [[1.0]])
        lo, hi = vals.min(), vals.max()
        pad = max(0.05 * (hi - lo), 0.05)
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
    ax.set_xlabel("distance ratio ‖f(x) − f(y)‖ / ‖x − y‖")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def plot_ratio_vs_norm(ratios_by_name: dict, ax=None):
    """Median distance ratio (5–95 % band) against ‖θ‖ per map, in method colours; ``{name: {norm: ratios}}``.

    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "3 · Distance ratios against ‖θ‖".
    """
    ax = _ax(ax)
    for i, (name, by_norm) in enumerate(ratios_by_name.items()):
        s = np.array(sorted(by_norm))
        q = np.array([np.percentile(by_norm[v], [5, 50, 95]) for v in s])
        line, = ax.plot(s, q[:, 1], "o-", label=name, color=method_color(name, i))
        ax.fill_between(s, q[:, 0], q[:, 2], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="‖θ‖  (both points of each pair)", ylabel="distance ratio")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_distortion_vs_D(Ds, distortion_by_name: dict, ax=None, ref: float | None = None):
    """Distortion (e.g. std of the distance ratio) against D on log-log axes; ``ref``: c / √(2D) line.

    Taught in notebooks/01_isometric_partition.ipynb, section "4 · Random projections: isometric only in expectation".
    """
    ax = _ax(ax)
    Ds = np.asarray(Ds, dtype=float)
    for i, (name, vals) in enumerate(distortion_by_name.items()):
        ax.plot(Ds, np.maximum(np.asarray(vals, dtype=float), 1e-17), "o-", label=name, color=method_color(name, i))
    if ref is not None:
        ax.plot(Ds, ref / np.sqrt(2 * Ds), "k--", lw=1, label=f"{ref:g} / √(2D)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D (output dimension)")
    ax.set_ylabel("distortion")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_singular_values(sv_by_name: dict, ax=None, kind: str = "spectrum", bins: int = 40):
    """Singular values per map: ``kind="spectrum"`` (sorted, log y) or ``"hist"`` (log-spaced bins).

    Taught in notebooks/02_lora_unilora_geometry.ipynb, section "5 · Jacobian singular values, matrix-free".
    """
    ax = _ax(ax)
    spread = {n: np.sort(np.asarray(s, dtype=float))[::-1] for n, s in sv_by_name.items()}
    pos_all = np.concatenate([s[s > 1e-12 * max(s.max(), 1e-300)] for s in spread.values()] or [np.ones(1)])
    edges = np.geomspace(pos_all.min(), pos_all.max() * 1.0001, bins) if pos_all.min() < pos_all.max() else bins
    n_spikes = 0
    for i, (name, s) in enumerate(spread.items()):
        color = method_color(name, i)
        if kind == "spectrum":
            ax.plot(np.arange(1, len(s) + 1), np.maximum(s, 1e-17), ".-", ms=3, label=name, color=color)
            continue
        pos = s[s > 1e-12 * max(s.max(), 1e-300)]  # exact zeros cannot sit on a log axis: counted in the label
        zeros = f", {len(s) - len(pos)} zero" if len(pos) < len(s) else ""
        if len(pos) and np.ptp(pos) < 1e-6 * pos.max():  # (numerically) one value: a spike
            ax.axvline(pos.mean(), lw=3, alpha=0.7, color=color, ls=("-", "--", ":")[n_spikes % 3],
                       label=f"{name}: all {pos.mean():.7f}{zeros}")
            n_spikes += 1
        elif len(pos):
            ax.hist(pos, bins=edges, alpha=0.55, color=color,
                    label=f"{name}: {pos.min():.3g} .. {pos.max():.3g}{zeros}")
    if kind == "spectrum":
        ax.set_yscale("log")
        if pos_all.max() < 10 * pos_all.min():
            # a (near-)constant spectrum, e.g. GPart's all-ones: autoscaling would stretch 1e-16 rounding noise
            # over the whole axis; show at least a decade around it
            ax.set_ylim(pos_all.min() / 3, pos_all.max() * 3)
        ax.set_xlabel("index i")
        ax.set_ylabel("singular value σᵢ of J")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("singular value of J")
        ax.set_ylabel("count")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return ax


# ---- full scale (notebook 06)
def plot_allreduce(costs: list, ax=None):
    """Bytes all-reduced per optimizer step (log scale) for each recipe's method, next to full fine-tuning.

    ``costs``: dicts from ``recipes.cost`` (keys recipe, method, allreduce_bytes, full_ft_allreduce_bytes).
    Taught in notebooks/06_full_scale.ipynb, section "2 · What a recipe costs".
    """
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.32 * len(costs) + 1.2))
    colors = {m: METHOD_COLORS[m] for m in ("gpart", "unilora", "lora")}
    labels = [c["recipe"] for c in costs]
    y = list(range(len(costs)))
    ax.barh(y, [c["allreduce_bytes"] for c in costs], color=[method_color(c["method"]) for c in costs])
    ax.scatter([c["full_ft_allreduce_bytes"] for c in costs], y, marker="|", s=120, color="k")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set(xlabel="bytes all-reduced per optimizer step (fp32 gradients)", ylabel="recipe")
    from matplotlib.patches import Patch
    handles = [Patch(color=col, label=name) for name, col in colors.items()]
    handles.append(ax.scatter([], [], marker="|", s=120, color="k", label="full fine-tuning"))
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)
    ax.grid(alpha=0.3, axis="x")
    return ax


# ---- training plots
_METHOD_STYLE = {m: (label, METHOD_COLORS[m], marker) for m, label, marker in (
    ("gpart", "GPart", "o"), ("unilora", "Uni-LoRA", "s"), ("lora", "LoRA", "^"), ("head", "head only", None),
    ("full", "full FT", None))}


def plot_accuracy_vs_params(summary, ax=None, metric: str = "accuracy", title: str | None = None):
    """Mean +- std of ``metric`` against trainable parameters (log x) per method, from ``compare.summarize``.

    Baselines without a parameter sweep ("head", "full") are drawn as horizontal reference lines with a
    +- std band; full FT also gets its own point at its parameter count.
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(b) MNIST-5k: pretrain on digits 0–4, fine-tune to digits 5–9".
    """
    ax = _ax(ax, (6, 3.6))
    mean, std = f"{metric}_mean", f"{metric}_std"
    methods = list(dict.fromkeys(r["method"] for r in summary))
    for m in methods:
        rows = sorted((r for r in summary if r["method"] == m), key=lambda r: r["params"])
        label, color, marker = _METHOD_STYLE.get(m, (m, None, "o"))
        ys = [r[mean] for r in rows]
        es = [0.0 if r[std] != r[std] else r[std] for r in rows]  # NaN std (one seed) -> no bar
        if m in ("head", "full"):
            y, e = ys[0], es[0]
            ax.axhline(y, color=color, ls="--", lw=1, label=f"{label}: {y:.3f}")
            ax.axhspan(y - e, y + e, color=color, alpha=0.08)
            if m == "full":
                ax.errorbar([rows[0]["params"]], [y], yerr=[e], color=color, marker="*", ms=9, capsize=3)
            continue
        ax.errorbar([r["params"] for r in rows], ys, yerr=es, color=color, marker=marker, capsize=3,
                    label=label)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (task head not counted)")
    ax.set_ylabel(f"held-out {metric}")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax


def plot_error_vs_params(curves: dict, references: dict | None = None, ax=None, ylabel: str = "test MSE",
                         logy: bool = True, title: str | None = None):
    """Lines of error against trainable parameters (log x): ``curves[label] = (params, errors)`` or
    ``(params, errors, style_kwargs)``; ``references[label] = value`` are horizontal lines.
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(a) Teacher–student: GPart's optimum is a projection".
    """
    ax = _ax(ax, (6, 3.6))
    for label, c in curves.items():
        xs, ys = c[0], c[1]
        kw = {"marker": "o", "ms": 4, **(c[2] if len(c) > 2 else {})}
        ax.plot(xs, ys, label=label, **kw)
    for i, (label, v) in enumerate((references or {}).items()):
        ax.axhline(v, color=f"{0.1 + 0.3 * i:.1f}", ls="--", lw=1, label=f"{label}: {v:.4g}")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax


def plot_intrinsic_dimension(results: dict, baseline: float, fraction: float = 0.9, ax=None,
                             title: str | None = None):
    """Held-out accuracy against subspace dimension d (log x): ``results[label] = (dims, accs)`` or
    ``(dims, acc_means, acc_stds)``; the direct-training baseline and the fraction * baseline threshold.
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(c) Intrinsic dimension: training from scratch in a random subspace".
    """
    ax = _ax(ax, (6, 3.6))
    for label, r in results.items():
        if len(r) > 2:
            ax.errorbar(r[0], r[1], yerr=r[2], marker="o", ms=4, capsize=3, label=label)
        else:
            ax.plot(r[0], r[1], marker="o", ms=4, label=label)
    ax.axhline(baseline, color="k", lw=1, label=f"direct training: {baseline:.3f}")
    ax.axhline(fraction * baseline, color="k", ls="--", lw=1,
               label=f"{fraction:.0%} of it: {fraction * baseline:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel("held-out accuracy")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax


def plot_training_curves(hist, axes=None, metric: str = "accuracy", title: str | None = None):
    """Two panels: training loss per step (with a running mean) and the evaluation ``metric`` per step.

    ``axes``: two matplotlib axes (e.g. from a plain ``matplotlib.figure.Figure``, as the live widget does).
    """
    if axes is None:
        _, axes = _plt().subplots(1, 2, figsize=(9, 3.2))
    ax_l, ax_m = axes
    ax_l.clear()
    ax_m.clear()
    if hist is not None and hist.losses:
        steps = list(range(1, len(hist.losses) + 1))
        k = max(1, min(10, len(hist.losses)))
        csum = np.concatenate([[0.0], np.cumsum(hist.losses)])
        run = [(csum[i + 1] - csum[max(0, i - k + 1)]) / (i + 1 - max(0, i - k + 1)) for i in range(len(steps))]
        ax_l.plot(steps, hist.losses, alpha=0.3, lw=1, color="C0")
        ax_l.plot(steps, run, lw=2, color="C0", label=f"train (mean of {k})")
        xs, ys = hist.curve("loss")
        if xs:
            ax_l.plot(xs, ys, "o-", color="C3", ms=4, label="eval")
        ax_l.legend(fontsize=8)
        xs, ys = hist.curve(metric)
        if xs:
            ax_m.plot(xs, ys, "o-", color="C2", ms=4)
    ax_l.set(xlabel="step", ylabel="loss")
    ax_m.set(xlabel="step", ylabel=f"eval {metric}")
    for a in (ax_l, ax_m):
        a.grid(alpha=0.3)
    if title:
        ax_l.set_title(title, fontsize=9, loc="left")
    return axes


def plot_bars(values: dict, ax=None, ylabel: str = "", errors: dict | None = None, title: str | None = None,
              fmt: str = "{:.2f}", xlabel: str = "method"):
    """A labelled bar chart of ``values[label]`` (optional ``errors[label]``), each bar annotated.

    Taught in notebooks/05_transformer_finetuning.ipynb,
    section "5 · SmolLM2-135M on Grimm tales: held-out perplexity".
    """
    ax = _ax(ax)
    labels = list(values)
    ys = [values[k] for k in labels]
    es = [errors.get(k, 0.0) for k in labels] if errors else None
    bars = ax.bar(range(len(labels)), ys, yerr=es, capsize=3, color=[method_color(k, i) for i, k in enumerate(labels)])
    for b, y in zip(bars, ys):
        ax.annotate(fmt.format(y), (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return ax
