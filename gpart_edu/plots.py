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


# ---- training plots
_METHOD_STYLE = {"gpart": ("GPart", "C0", "o"), "unilora": ("Uni-LoRA", "C1", "s"), "lora": ("LoRA", "C2", "^"),
                 "head": ("head only", "0.4", None), "full": ("full FT", "k", None)}


def _training_ax(ax, size=(6, 3.6)):
    if ax is None:
        _, ax = _plt().subplots(figsize=size)
    return ax


def plot_accuracy_vs_params(summary, ax=None, metric: str = "accuracy", title: str | None = None):
    """Mean +- std of ``metric`` against trainable parameters (log x) per method, from ``compare.summarize``.

    Baselines without a parameter sweep ("head", "full") are drawn as horizontal reference lines with a
    +- std band; full FT also gets its own point at its parameter count.
    """
    ax = _training_ax(ax)
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
    ``(params, errors, style_kwargs)``; ``references[label] = value`` are horizontal lines."""
    ax = _training_ax(ax)
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
    ``(dims, acc_means, acc_stds)``; the direct-training baseline and the fraction * baseline threshold."""
    ax = _training_ax(ax)
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
        csum = [0.0]
        for v in hist.losses:
            csum.append(csum[-1] + v)
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
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("loss")
    ax_m.set_xlabel("step")
    ax_m.set_ylabel(f"eval {metric}")
    for a in (ax_l, ax_m):
        a.grid(alpha=0.3)
    if title:
        ax_l.set_title(title, fontsize=9, loc="left")
    return axes


def plot_bars(values: dict, ax=None, ylabel: str = "", errors: dict | None = None, title: str | None = None,
              fmt: str = "{:.2f}"):
    """A labelled bar chart of ``values[label]`` (optional ``errors[label]``), each bar annotated."""
    ax = _training_ax(ax, size=(6, 3.2))
    labels = list(values)
    ys = [values[k] for k in labels]
    es = [errors.get(k, 0.0) for k in labels] if errors else None
    bars = ax.bar(range(len(labels)), ys, yerr=es, capsize=3, color=[f"C{i}" for i in range(len(labels))])
    for b, y in zip(bars, ys):
        ax.annotate(fmt.format(y), (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return ax
