"""Matplotlib helpers used by the notebooks (matplotlib is imported lazily, inside each function)."""
from __future__ import annotations


def _plt():
    import matplotlib.pyplot as plt
    return plt


def plot_history(hist, ax=None, label: str | None = None, smooth: int = 5):
    """Training loss per step (raw, faint) and a running mean over ``smooth`` steps; evals as dots."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    steps = list(range(1, len(hist.losses) + 1))
    line, = ax.plot(steps, hist.losses, alpha=0.3, lw=1)
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


# ---- geometry plots
def _ax(ax, size=(6, 3.2)):
    if ax is None:
        _, ax = _plt().subplots(figsize=size)
    return ax


def plot_matrix(M, ax=None, title: str = "", fmt: str = "{:.2f}", cmap: str = "Blues"):
    """A small matrix as an image with every entry written in its cell (e.g. P for D = 12, d = 3)."""
    import numpy as np
    M = np.asarray(M, dtype=float)
    ax = _ax(ax, (0.5 * M.shape[1] + 1.5, 0.3 * M.shape[0] + 1))
    ax.imshow(M, cmap=cmap, aspect="auto")
    for (i, j), v in np.ndenumerate(M):
        if M.size <= 400:
            ax.text(j, i, fmt.format(v) if v else "·", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * np.abs(M).max() else "black")
    ax.set_xticks(range(M.shape[1]))
    ax.set_yticks(range(M.shape[0]))
    ax.set_title(title, fontsize=9)
    return ax


def plot_group_sizes(counts_by_name: dict, ax=None, bins: int = 40):
    """Histogram of partition group sizes n_j, one per assignment."""
    ax = _ax(ax)
    for name, counts in counts_by_name.items():
        c = counts.cpu().numpy() if hasattr(counts, "cpu") else counts
        ax.hist(c, bins=bins, alpha=0.5, label=f"{name} (min {c.min()}, max {c.max()})")
    ax.set_xlabel("group size n_j")
    ax.set_ylabel("number of groups")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_distance_ratios(ratios_by_name: dict, ax=None, bins: int = 40, logx: bool = False):
    """Histogram of ||f(x) - f(y)|| / ||x - y|| per map; the isometry is the vertical line at 1."""
    import numpy as np
    ax = _ax(ax)
    for name, r in ratios_by_name.items():
        r = np.asarray(r)
        if np.ptp(r) < 1e-9:  # an exact isometry: one spike
            ax.axvline(r.mean(), lw=3, alpha=0.7, label=f"{name}: all {r.mean():.12f}")
        else:
            edges = np.geomspace(r.min(), r.max(), bins) if logx and r.min() > 0 else bins
            ax.hist(r, bins=edges, alpha=0.5, label=f"{name}: {r.min():.3g} .. {r.max():.3g}")
    ax.axvline(1.0, color="k", ls=":", lw=1)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("distance ratio ||f(x) - f(y)|| / ||x - y||")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def plot_ratio_vs_norm(ratios_by_name: dict, ax=None):
    """Median distance ratio (5-95 % band) against ||theta||, per map; ``{name: {norm: ratios}}``."""
    import numpy as np
    ax = _ax(ax)
    for name, by_norm in ratios_by_name.items():
        s = np.array(sorted(by_norm))
        q = np.array([np.percentile(by_norm[v], [5, 50, 95]) for v in s])
        line, = ax.plot(s, q[:, 1], "o-", label=name)
        ax.fill_between(s, q[:, 0], q[:, 2], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("||theta||  (both points of each pair)")
    ax.set_ylabel("distance ratio")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_distortion_vs_D(Ds, distortion_by_name: dict, ax=None, ref: float | None = None):
    """Distortion (e.g. std of the distance ratio) against D on log-log axes; ``ref``: c / sqrt(2D) line."""
    import numpy as np
    ax = _ax(ax)
    Ds = np.asarray(Ds, dtype=float)
    for name, vals in distortion_by_name.items():
        ax.plot(Ds, np.maximum(np.asarray(vals, dtype=float), 1e-17), "o-", label=name)
    if ref is not None:
        ax.plot(Ds, ref / np.sqrt(2 * Ds), "k--", lw=1, label=f"{ref:g} / sqrt(2D)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D (output dimension)")
    ax.set_ylabel("distortion")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_singular_values(sv_by_name: dict, ax=None, kind: str = "spectrum", bins: int = 40):
    """Singular values per map: ``kind="spectrum"`` (sorted, log y) or ``"hist"`` (log-spaced bins)."""
    import numpy as np
    ax = _ax(ax)
    spread = {n: np.sort(np.asarray(s, dtype=float))[::-1] for n, s in sv_by_name.items()}
    pos_all = np.concatenate([s[s > 1e-12 * max(s.max(), 1e-300)] for s in spread.values()] or [np.ones(1)])
    edges = np.geomspace(pos_all.min(), pos_all.max() * 1.0001, bins) if pos_all.min() < pos_all.max() else bins
    n_spikes = 0
    for i, (name, s) in enumerate(spread.items()):
        color = f"C{i}"
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
        ax.set_xlabel("index i")
        ax.set_ylabel("singular value sigma_i of J")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("singular value of J")
        ax.set_ylabel("count")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return ax
