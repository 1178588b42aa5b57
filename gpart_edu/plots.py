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
