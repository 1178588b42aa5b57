"""What a fine-tuning run leaves in its folder, and loading it back.

    out/results.json         metrics per evaluation, config, versions, wall time, peak memory, costs
    out/adapter.safetensors  theta + seed + method config + target fingerprint (gpart / unilora / lora)
    out/head.safetensors     the trained task head (absent for causal LMs)
    out/trainable.safetensors  head / full baselines: every trained tensor instead of the two above
    out/summary.md           a short human-readable report
    out/checkpoints/         Trainer checkpoints (trainable tensors + optimizer/scheduler/RNG state)

    model, tokenizer, results = engine.load_finetuned("out")   # the base model + the saved adapter and head
Taught in notebooks/06_full_scale.ipynb, sections 4 and 5 (a run's folder, reloading it).
"""
from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..core.adapter import ADAPTER_ATTR
from ..losses import evaluate
from ..runtime import versions as base_versions
from .optim import allreduce_bytes, trainable_state
from .train import History

RESULTS_FORMAT = "gpart_edu.results"
RESULTS_VERSION = 1
_SKIP = ("runtime", "per_second", "epoch", "preparation_time")


def collect_evals(log_history) -> list[dict]:
    """[{step, loss, <metrics>}] from Trainer's log history (one entry per evaluated step, the last wins)."""
    by_step = {}
    for e in log_history:
        if "eval_loss" not in e:
            continue
        row = {"step": int(e.get("step", 0)), "loss": float(e["eval_loss"])}
        for k, v in e.items():
            if k.startswith("eval_") and k != "eval_loss" and not any(s in k for s in _SKIP):
                row[k[5:]] = float(v)
        by_step[row["step"]] = row
    rows = [by_step[s] for s in sorted(by_step)]
    return rows


def train_log(log_history) -> list[dict]:
    """[{step, loss, learning_rate, grad_norm}] of the training-loss log entries."""
    return [{k: (int(e[k]) if k == "step" else float(e[k])) for k in ("step", "loss", "learning_rate", "grad_norm")
             if k in e} for e in log_history if "loss" in e and "eval_loss" not in e]


def as_history(results: dict):
    """A ``train.History`` of a run (per-step losses need ``logging_steps=1``), for ``plots.plot_history``.

    Taught in notebooks/06_full_scale.ipynb, section "4 · The same code path, here".
    """
    return History(config=results["config"], losses=[x["loss"] for x in results["train_log"]],
                   lrs=[x.get("learning_rate", 0.0) for x in results["train_log"]], evals=list(results["evals"]),
                   wall_time=results["train_time_s"], peak_memory_bytes=results["peak_memory_bytes"],
                   peak_memory_kind=results["peak_memory_kind"])


def _finite(x):
    """JSON-safe copy: NaN / inf become None (a valid JSON document, unlike Python's NaN output)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def versions() -> dict:
    out = base_versions()
    for name in ("accelerate", "datasets", "safetensors"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "missing"
    out["platform"] = platform.platform()
    return out


@dataclass
class RunOutcome:
    """Hold what a finished ``engine.run`` hands to ``write_outputs``: the trained model and what was measured.

    Taught in notebooks/06_full_scale.ipynb (the files a run writes).
    """

    model: torch.nn.Module                # the trained model (adapter attached, or the baseline)
    adapter: Any                          # core.adapter.Adapter, or None for the head / full baselines
    spec: Any                             # tasks.TaskSpec
    data: Any                             # tasks.TaskData (train / eval datasets)
    evals: list                           # collect_evals(...) of the Trainer log: [{step, loss, <metrics>}]
    state: Any                            # transformers.TrainerState after training (log history, steps)
    train_time: float                     # seconds in trainer.train
    wall_time: float                      # seconds of the whole run (loading included)
    peak_memory_bytes: int
    peak_memory_kind: str                 # how the peak was measured
    device: str
    bf16: bool
    distributed: dict                     # world size, backend, batch split, all-reduce bytes and calls
    resumed_from: str | None = None       # the checkpoint folder a --resume continued from
    extra_metrics: dict = field(default_factory=dict)   # e.g. GSM8K accuracy; merged into "final"
    command: str = ""                     # the command line recorded in results.json


def write_outputs(out: Path, cfg, run: RunOutcome) -> dict:
    """Write the run's files into ``out`` (rank 0 only) from ``cfg`` (engine.RunConfig) and ``run``; return the
    results dict (what results.json holds). Taught in notebooks/06_full_scale.ipynb."""

    out.mkdir(parents=True, exist_ok=True)
    model, adapter, spec, data = run.model, run.adapter, run.spec, run.data
    state = trainable_state(model)
    files = {"results": "results.json", "summary": "summary.md"}
    if adapter is not None:
        adapter.save(out / "adapter.safetensors")
        files["adapter"] = "adapter.safetensors"
        head = {n: p.detach().cpu().contiguous() for n, p in state.items() if not n.startswith(ADAPTER_ATTR)}
        if head:
            save_file(head, str(out / "head.safetensors"), metadata={"format": "gpart_edu.head"})
            files["head"] = "head.safetensors"
    else:
        save_file({n: p.detach().cpu().contiguous() for n, p in state.items()}, str(out / "trainable.safetensors"),
                  metadata={"format": "gpart_edu.trainable"})
        files["trainable"] = "trainable.safetensors"
    n_model = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(ADAPTER_ATTR))
    n_theta = adapter.num_trainable if adapter is not None else 0
    evals = run.evals
    if spec.kind in ("lm", "math"):
        for e in evals:
            e["perplexity"] = math.exp(e["loss"]) if e["loss"] < 700 else float("inf")
    final = dict(evals[-1]) if evals else {}
    final.update(run.extra_metrics)
    st = run.state
    results = {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION,
        "config": asdict(cfg),
        "task": {"name": spec.name, "kind": spec.kind, "metric": spec.metric, "source": spec.source,
                 "n_train": len(data.train), "n_eval": len(data.eval)},
        "model": {"id": cfg.model, "params": n_model, "method": cfg.method, "theta": n_theta,
                  "D": adapter.D if adapter is not None else None,
                  "adapted_layers": len(adapter.targets) if adapter is not None else 0,
                  "trainable": sum(p.numel() for p in state.values()),
                  "summary": adapter.summary() if adapter is not None else f"{cfg.method} baseline"},
        "evals": evals, "final": final, "train_log": train_log(st.log_history),
        "global_step": int(st.global_step), "max_steps": int(st.max_steps), "epochs_done": float(st.epoch or 0.0),
        "stopped_early": bool(cfg.stop_after_steps) and int(st.global_step) < int(st.max_steps),
        "wall_time_s": run.wall_time, "train_time_s": run.train_time,
        "peak_memory_bytes": int(run.peak_memory_bytes), "peak_memory_kind": run.peak_memory_kind,
        "device": run.device, "bf16": run.bf16,
        "allreduce_bytes_per_step": allreduce_bytes(model), "distributed": run.distributed,
        "resumed_from": run.resumed_from, "versions": versions(), "files": files,
        "command": run.command,
    }
    results = _finite(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(results))
    return results


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_markdown(r: dict) -> str:
    """A short report: what ran, before -> after, cost, files."""
    c, m, ev = r["config"], r["model"], r["evals"]
    keys = [k for k in (ev[-1] if ev else {}) if k != "step"]
    lines = [f"# {c['method']} on {r['task']['name']} ({c['model']})", "",
             f"{m['summary']}", "",
             f"* steps {r['global_step']} (epochs {r['epochs_done']:.2f}), global batch {c['batch_size']}, "
             f"lr {c['lr']}, head lr {c['head_lr']}, seed {c['seed']}",
             f"* device {r['device']}, bf16 {r['bf16']}, processes {r['distributed']['world_size']}, "
             f"wall time {r['wall_time_s']:.1f} s (training {r['train_time_s']:.1f} s), "
             f"peak memory {r['peak_memory_bytes'] / 2**20:.0f} MiB ({r['peak_memory_kind']})",
             f"* trainable tensors {m['trainable']:,} of {m['params']:,} model parameters; data-parallel "
             f"all-reduce {r['allreduce_bytes_per_step']:,} bytes per optimizer step", "",
             "| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {e['step']} | " + " | ".join(_fmt(e.get(k)) for k in keys) + " |" for e in ev]
    extra = {k: v for k, v in r["final"].items() if k.startswith("gsm8k")}
    if extra:
        lines += ["", "GSM8K: " + ", ".join(f"{k} {_fmt(v)}" for k, v in extra.items())]
    lines += ["", "Files: " + ", ".join(f"`{f}`" for f in r["files"].values()),
              "", "Reload: `from gpart_edu.finetune.engine import load_finetuned; "
                  "model, tok, res = load_finetuned(DIR)`", ""]
    return "\n".join(lines)


def evaluate_model(model, data, batch_size: int = 64) -> dict:
    """Return the held-out loss (and accuracy) of ``model`` on ``data.eval`` as the Trainer reports them.

    Batches as the Trainer forms them (a DataLoader with the task's collator), the model's own ``.loss`` (cross-
    entropy, MSE for a regression head, the LM loss), weighted by batch size; accuracy for a classification head
    (logits with more than one column). Goes through ``losses.evaluate``. Notebook: 06_full_scale.
    """
    from transformers import default_data_collator
    loader = torch.utils.data.DataLoader(data.eval, batch_size=batch_size,
                                         collate_fn=data.collator or default_data_collator)
    return evaluate(model, loader, loss_fn="model")
