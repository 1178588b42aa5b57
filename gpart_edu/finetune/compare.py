"""Compare fine-tuning methods: run a grid of (method, budget, seed) and tabulate mean +- std.

    rows = run_grid(make_model, [("gpart", [9216, 36864]), ("lora", [1, 4]), ("head", [None])],
                    seeds=[0, 1, 2], train=train_data, eval_data=test_data, config=cfg,
                    targets=["query", "value"], lrs={"gpart": (2e-2, 1e-2), "lora": (5e-3, 1e-2)})
    table = summarize(rows)            # one row per (method, budget): accuracy mean, std, n, ...
    print(table.to_markdown())

Methods: "gpart" / "unilora" (budget = d), "lora" (budget = r), and the baselines "head" (only the task
head trains: a linear probe) and "full" (every weight trains). ``make_model(seed)`` must return a fresh
model whose new task head is initialised with ``seed``; the same seed also fixes the partition / LoRA
init and the batch order, so every (method, budget, seed) run is reproducible on CPU.

Columns of a run row: method, budget, seed, params (what the method trains besides the task head:
len(theta) for adapters, 0 for "head", every non-head weight for "full"), head_params, accuracy (the final
held-out evaluation, never the best one seen), loss, adapter_bytes (bytes you ship besides the base model
and the head: the measured adapter file for adapters, 0 for "head", fp32/dtype bytes of every non-head
weight for "full"), train_time_s, peak_mem_mb, steps, diverged.
Taught in notebooks/04 (section b) and 05 (sections 1-2): grids of methods at equal budgets.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

from ..core import registry
from ..core.adapter import AUTO_HEADS, attach, get_adapter
from ..errors import ConfigError
from .train import TrainConfig, classification_loss, fit, set_trainable

BUDGET_KEY = registry.BUDGET_KEY                # the registry's table (notebook 05 labels budgets with it)
BASELINES = ("head", "full")
METHOD_LABELS = {**registry.LABELS, "head": "head only", "full": "full FT"}
RUN_COLUMNS = ("method", "budget", "seed", "params", "head_params", "accuracy", "loss", "adapter_bytes",
               "train_time_s", "peak_mem_mb", "steps", "diverged")
SUMMARY_COLUMNS = ("method", "budget", "params", "n_seeds", "accuracy_mean", "accuracy_std",
                   "adapter_bytes", "train_time_s", "peak_mem_mb")


def _check_method(method: str, budget) -> str:
    """Return the canonical name of ``method`` (a baseline or a registry method); ConfigError for a bad pair."""
    if method in BASELINES:
        if budget is not None:
            raise ConfigError(f"baseline {method!r} takes no budget; use budget None")
        return method
    try:
        name = registry.canonical(method)
    except ConfigError:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join([*registry.NAMES, *BASELINES])}") \
            from None
    if budget is None:
        raise ConfigError(f"{method!r} needs a budget ({BUDGET_KEY[name]}=...)")
    return name


def prepare(model, method: str, budget=None, *, seed: int = 0, targets="all-linear", heads=AUTO_HEADS,
            **method_kwargs) -> int:
    """Make ``model`` ready to train with ``method`` at ``budget``; returns the method's parameter count.

    Adapters are attached with ``seed`` (the head stays trainable); baselines set requires_grad.
    """
    name = _check_method(method, budget)
    if name in BASELINES:
        set_trainable(model, method, heads=heads)
        if method == "head":
            return 0
        return sum(p.numel() for n, p in model.named_parameters() if not _in_head(n, heads))
    trainable = "auto" if tuple(heads) == AUTO_HEADS else heads
    adapter = attach(model, name, targets=targets, seed=seed, trainable=trainable,
                     **{BUDGET_KEY[name]: budget}, **method_kwargs)
    return adapter.num_trainable


def _in_head(name: str, heads) -> bool:
    parts = name.split(".")[:-1]
    return any(p in heads for p in parts)


def _adapter_bytes(model, method: str, heads) -> int:
    if method == "head":
        return 0
    if method == "full":
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not _in_head(n, heads))
    fd, path = tempfile.mkstemp(suffix=".safetensors", prefix="gpart_edu_cmp_")
    os.close(fd)
    try:
        return get_adapter(model).save(path).stat().st_size
    finally:
        os.remove(path)


def run_one(make_model, method: str, budget, seed: int, train, eval_data, config: TrainConfig, *,
            targets="all-linear", lr=None, head_lr=None, heads=AUTO_HEADS, method_kwargs=None,
            loss_fn=classification_loss, eval_fn=None, metric: str = "accuracy") -> dict:
    """Train one fresh model; return its run row (see the module docstring for the columns)."""
    _check_method(method, budget)
    model = make_model(seed)
    params = prepare(model, method, budget, seed=seed, targets=targets, heads=heads, **(method_kwargs or {}))
    head_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and _in_head(n, heads))
    cfg = dataclasses.replace(config, seed=seed, lr=config.lr if lr is None else lr,
                              head_lr=config.head_lr if head_lr is None else head_lr)
    hist = fit(model, train, eval_data, config=cfg, loss_fn=loss_fn, eval_fn=eval_fn)
    final = hist.final
    return {"method": method, "budget": budget, "seed": seed, "params": params, "head_params": head_params,
            "accuracy": final.get(metric, math.nan), "loss": final.get("loss", math.nan),
            "adapter_bytes": _adapter_bytes(model, method, heads), "train_time_s": hist.wall_time,
            "peak_mem_mb": hist.peak_memory_bytes / 2 ** 20, "steps": hist.steps_done,
            "diverged": hist.diverged, "lr": cfg.lr, "head_lr": cfg.head_lr}


def lr_pair(lrs: dict, method: str, budget) -> tuple:
    """(lr, head_lr) for (method, budget) from ``lrs`` (see ``run_grid``); (None, None) when absent.

    Taught in notebooks/05_transformer_finetuning.ipynb, section "4 · Merge for inference: identical predictions".
    """
    spec = lrs.get(method, (None, None))
    if callable(spec):
        spec = spec(budget)
    elif isinstance(spec, dict):
        if budget not in spec:
            raise ConfigError(f"lrs[{method!r}] has no entry for budget {budget!r}; its budgets: {list(spec)}")
        spec = spec[budget]
    if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
        raise ConfigError(f"lrs[{method!r}] must be (lr, head_lr), {{budget: (lr, head_lr)}} or a function; "
                          f"got {spec!r}")
    return tuple(spec)


def _key(tag, method, budget, seed, cfg: TrainConfig, lr, head_lr, method_kwargs) -> str:
    blob = json.dumps([tag, method, budget, seed, dataclasses.asdict(cfg), lr, head_lr, method_kwargs],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_grid(make_model, grid, seeds, train, eval_data, config: TrainConfig, *, targets="all-linear",
             lrs=None, method_kwargs=None, heads=AUTO_HEADS, cache=None, tag: str = "", verbose: bool = True,
             **run_kwargs) -> list[dict]:
    """Run every (method, budget, seed) of ``grid`` = [(method, [budgets...]), ...]; return the run rows.

    ``lrs[method] = (lr, head_lr)`` overrides the config's learning rates per method, or per budget with
    ``{budget: (lr, head_lr)}`` or a function ``budget -> (lr, head_lr)`` (None keeps the config's value);
    ``method_kwargs[method]`` adds attach options (e.g. {"r": 4} for Uni-LoRA, {"alpha": 8} for LoRA).
    ``cache``: a .jsonl file; runs already there with the same settings (and ``tag``, e.g. the data set
    name) are read back instead of re-run, and new runs are appended, so an interrupted grid resumes.
    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(b) MNIST-5k: pretrain on digits 0–4, fine-tune to digits 5–9".
    """
    grid = [(m, list(bs)) for m, bs in grid]
    for m, bs in grid:
        for b in bs:
            _check_method(m, b)
    lrs, method_kwargs = lrs or {}, method_kwargs or {}
    for m, bs in grid:
        for b in bs:
            lr_pair(lrs, m, b)  # fail early on a missing per-budget learning rate
    done = {}
    if cache is not None and Path(cache).exists():
        for line in Path(cache).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["key"]] = rec["row"]
    rows = []
    for m, bs in grid:
        for b in bs:
            lr, head_lr = lr_pair(lrs, m, b)
            for s in seeds:
                key = _key(tag, m, b, s, config, lr, head_lr, method_kwargs.get(m))
                if key in done:
                    row = done[key]
                else:
                    row = run_one(make_model, m, b, s, train, eval_data, config, targets=targets, lr=lr,
                                  head_lr=head_lr, heads=heads, method_kwargs=method_kwargs.get(m), **run_kwargs)
                    if cache is not None:
                        Path(cache).parent.mkdir(parents=True, exist_ok=True)
                        with open(cache, "a") as f:
                            f.write(json.dumps({"key": key, "tag": tag, "row": row}) + "\n")
                if verbose:
                    print(f"{METHOD_LABELS.get(m, m):>9} budget={b!s:>6} seed={s}: accuracy {row['accuracy']:.4f} "
                          f"({row['train_time_s']:.1f} s{', cached' if key in done else ''})")
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- tables
class Table(list):
    """A list of row dicts with fixed ``columns``; prints as text, Markdown or HTML (no pandas needed)."""

    def __init__(self, rows, columns):
        super().__init__(rows)
        self.columns = list(columns)

    def column(self, name: str) -> list:
        return [r[name] for r in self]

    def _cells(self, fmt=None):
        def cell(k, v):
            if v is None:
                return "—"
            if isinstance(v, float):
                if math.isnan(v):
                    return "—"
                if k.startswith("accuracy") or k.startswith("perplexity"):
                    return f"{v:.4f}"
                return f"{v:.1f}" if abs(v) < 1e4 else f"{v:,.0f}"
            if isinstance(v, int) and not isinstance(v, bool):
                return f"{v:,}"
            return str(v)
        return [[cell(k, r.get(k)) for k in self.columns] for r in self]

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c) + " |" for c in self._cells()]
        return "\n".join(lines)

    def __str__(self):
        cells = [self.columns] + self._cells()
        w = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in cells)

    __repr__ = __str__

    def _repr_html_(self):
        head = "".join(f"<th>{c}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in self._cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def to_pandas(self):
        import pandas as pd  # optional
        return pd.DataFrame(list(self), columns=self.columns)


def _mean(xs):
    xs = [x for x in xs if not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs):
    """Sample standard deviation (n - 1); NaN for fewer than 2 values."""
    xs = [x for x in xs if not (isinstance(x, float) and math.isnan(x))]
    if len(xs) < 2:
        return math.nan
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarize(rows, metric: str = "accuracy") -> Table:
    """One row per (method, budget) in first-seen order: ``metric`` mean and sample std over seeds, etc.

    Taught in notebooks/04_toy_to_small_finetuning.ipynb,
    section "(b) MNIST-5k: pretrain on digits 0–4, fine-tune to digits 5–9".
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (m, b), rs in groups.items():
        vals = [r[metric] for r in rs]
        out.append({"method": m, "budget": b, "params": rs[0]["params"], "n_seeds": len(rs),
                    f"{metric}_mean": _mean(vals), f"{metric}_std": _std(vals),
                    "adapter_bytes": rs[0]["adapter_bytes"], "train_time_s": _mean([r["train_time_s"] for r in rs]),
                    "peak_mem_mb": max(r["peak_mem_mb"] for r in rs),
                    "diverged": sum(bool(r.get("diverged")) for r in rs)})
    cols = [c.replace("accuracy", metric) for c in SUMMARY_COLUMNS]
    if any(r["diverged"] for r in out):
        cols.append("diverged")
    return Table(out, cols)


def budget_to_reach(summary, method: str, target: float, metric: str = "accuracy") -> dict | None:
    """The smallest-parameter row of ``method`` whose mean ``metric`` is >= ``target`` (None if none).

    Taught in notebooks/05_transformer_finetuning.ipynb, section "1 · MiniLM on election tweets".
    """
    ok = [r for r in summary if r["method"] == method and r[f"{metric}_mean"] >= target]
    return min(ok, key=lambda r: r["params"]) if ok else None
