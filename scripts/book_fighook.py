"""Kernel-side figure export for `make figures` (loaded by scripts/book_exec.py in a cell it prepends).

Every matplotlib figure a cell leaves behind is saved as PNG and SVG before anyone can close it: at
``plt.show()`` (matplotlib-inline closes the figure there), at ``plt.close()``, and after the cell (a
post_execute hook registered before matplotlib-inline's own, which flushes and closes). For each figure one
JSON line goes to <out>/<stem>/figures.jsonl: which cell drew it (``cell_seq``: the n-th cell run after the
hook's own), the files, and what the
matplotlib objects say of its labels (per axes: title, x/y label, number of labelled series, legend).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

_state: dict = {}


def _series(ax) -> tuple[int, list[str]]:
    """How many distinct data series ``ax`` draws (lines, scatter/collections, bar containers, labelled
    patches), and the labels of those that have one."""
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1 or ln.get_marker() not in ("None", None, "")]
    lines = [ln for ln in lines if not _is_reference(ln)]
    bars = list(getattr(ax, "containers", []))
    patches_in_bars = {id(p) for c in bars for p in c}
    loose_patches = [p for p in ax.patches if id(p) not in patches_in_bars and p.get_label()
                     and not p.get_label().startswith("_")]
    colls = [c for c in ax.collections if c.get_label() and not c.get_label().startswith("_")]
    labels = [a.get_label() for a in lines + bars + loose_patches + colls
              if a.get_label() and not str(a.get_label()).startswith("_")]
    return len(lines) + len(bars) + len(loose_patches) + len(colls), labels


def _is_reference(line) -> bool:
    """axhline / axvline style guides (two points spanning the axes in one coordinate) are not data series."""
    x, y = line.get_xdata(), line.get_ydata()
    return len(x) == 2 and (x[0] == x[1] or y[0] == y[1]) and line.get_label().startswith("_")


def describe(fig) -> dict:
    """Title, axis labels and legend of every data axes of ``fig`` (colorbars and empty axes skipped)."""
    axes = []
    suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    for ax in fig.get_axes():
        if ax.get_label() == "<colorbar>" or not ax.get_visible() or not ax.has_data() and not ax.texts:
            continue
        three_d = hasattr(ax, "get_zlabel")
        n, labels = _series(ax)
        legend = ax.get_legend()
        axes.append({"title": ax.get_title() or ax.get_title("left") or ax.get_title("right"),
                     "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                     "zlabel": ax.get_zlabel() if three_d else None,
                     "series": n, "labels": labels, "legend": legend is not None or bool(fig.legends),
                     "legend_labels": [t.get_text() for t in legend.get_texts()] if legend is not None else [],
                     "has_data": bool(ax.has_data())})
    return {"suptitle": suptitle, "axes": axes}


def problems(info: dict) -> list[str]:
    """What a figure lacks: a title (its own or the figure's), x and y labels, a legend for > 1 series."""
    out = []
    shared = {t for ax in info["axes"] for t in ax.get("legend_labels", [])}   # one legend for all panels
    for i, ax in enumerate(info["axes"]):
        if not ax["has_data"]:
            continue
        where = f"axes {i}"
        if not (ax["title"] or info["suptitle"]):
            out.append(f"{where}: no title")
        if not ax["xlabel"]:
            out.append(f"{where}: no x label")
        if not ax["ylabel"]:
            out.append(f"{where}: no y label")
        explained = ax["legend"] or (ax.get("labels") and set(ax["labels"]) <= shared)
        if ax["series"] > 1 and not explained:
            out.append(f"{where}: {ax['series']} series but no legend")
    return out


def _export(fig):
    if id(fig) in _state["done"] or not fig.get_axes():
        return
    _state["done"].add(id(fig))
    _state["keep"].append(fig)               # keep it alive so its id() is not reused by a later figure
    count = _state["seq"]
    k = sum(1 for r in _state["records"] if r["cell_seq"] == count)
    stem = f"c{count:03d}-{k}"
    for ext in ("png", "svg"):
        fig.savefig(_state["dir"] / f"{stem}.{ext}", dpi=150 if ext == "png" else None, bbox_inches="tight")
    info = describe(fig)
    rec = {"cell_seq": count, "index": k, "png": f"{stem}.png", "svg": f"{stem}.svg", **info,
           "problems": problems(info)}
    _state["records"].append(rec)
    with open(_state["dir"] / "figures.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def _export_open():
    import matplotlib.pyplot as plt
    for num in plt.get_fignums():
        _export(plt.figure(num))


def install(out_dir: str, stem: str) -> None:
    """Start exporting into out_dir/stem (emptied first). Call before matplotlib.pyplot is first imported."""
    from IPython import get_ipython
    ip = get_ipython()
    d = Path(out_dir) / stem
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    _state.update(dir=d, done=set(), keep=[], records=[], seq=0)

    def pre_run_cell(info=None):
        _state["seq"] += 1     # the n-th cell run after this one (IPython versions differ in when they count up)

    ip.events.register("pre_run_cell", pre_run_cell)
    ip.events.register("post_execute", _export_open)       # before matplotlib-inline's flush_figures
    import matplotlib.pyplot as plt
    real_show, real_close = plt.show, plt.close

    def show(*args, **kwargs):
        _export_open()
        return real_show(*args, **kwargs)

    def close(fig=None):
        import matplotlib.figure
        if isinstance(fig, matplotlib.figure.Figure):
            _export(fig)
        elif fig is None and plt.get_fignums():
            _export(plt.gcf())
        elif fig == "all":
            _export_open()
        return real_close(fig)

    plt.show, plt.close = show, close
