"""A small, readable training loop used by every notebook, test and the CLI.

    hist = fit(model, train_batch_source, eval_data, config=TrainConfig(steps=300, lr=5e-3, head_lr=5e-3))

* Two parameter groups: the adapter's theta (``lr``) and every other trainable parameter, i.e. a task
  head or, for full fine-tuning, the whole model (``head_lr``, default ``lr``). AdamW.
* Warm-up (fraction of steps) then linear / cosine decay or constant; gradient clipping; eval every N.
* Weight decay on theta: for GPart ||Delta W|| = ||theta||, so decaying theta decays Delta W towards the
  pretrained weights.
* Seeded, deterministic on CPU; CUDA when available; optional bf16 autocast on GPU.
Data: a dict of equal-length tensors (``labels`` is the target; the rest are model inputs) or a tuple
(x, y). Batches come from a seeded permutation per epoch.
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import ADAPTER_ATTR, get_adapter
from .errors import ConfigError
from .runtime import device as pick_device

SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 16
    lr: float = 5e-3                 # theta (or, without an adapter, every trainable parameter)
    head_lr: float | None = None     # other trainable parameters (task head); None -> lr
    weight_decay: float = 0.0        # on theta
    head_weight_decay: float = 0.0
    warmup: float = 0.06             # fraction of steps with linear warm-up
    schedule: str = "linear"
    grad_clip: float | None = 1.0
    eval_every: int = 0              # 0: evaluate only before and after training
    eval_batch_size: int = 64
    seed: int = 0
    device: str | None = None        # None: CUDA if available, else CPU
    bf16: bool = False               # autocast to bfloat16 (GPU only; ignored on CPU)
    progress: bool = True

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"TrainConfig.{name} must be an integer >= 1, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if self.head_lr is not None and not (self.head_lr > 0 and math.isfinite(self.head_lr)):
            raise ConfigError(f"TrainConfig.head_lr must be > 0 or None, got {self.head_lr!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"TrainConfig.schedule={self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"TrainConfig.warmup is a fraction of steps in [0, 1), got {self.warmup!r}")
        if self.eval_every < 0:
            raise ConfigError(f"TrainConfig.eval_every must be >= 0, got {self.eval_every!r}")


@dataclass
class History:
    """What a run produced: per-step losses, evaluations, wall time, peak memory, the config."""

    config: dict
    losses: list = field(default_factory=list)       # training loss per step
    lrs: list = field(default_factory=list)          # theta learning rate per step
    evals: list = field(default_factory=list)        # [{"step": s, "loss": ..., "accuracy": ...}]
    wall_time: float = 0.0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    stopped_early: bool = False

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}


# -------------------------------------------------------------------------------------- batches
def _n_examples(data) -> int:
    if isinstance(data, dict):
        return len(data["labels"])
    return len(data[0])


def _take(data, idx, dev):
    if isinstance(data, dict):
        return {k: v[idx].to(dev) for k, v in data.items()}
    return tuple(v[idx].to(dev) for v in data)


def forward_logits(model: nn.Module, batch):
    """Logits of a batch: dict -> model(**inputs).logits (HF), tuple -> model(x)."""
    if isinstance(batch, dict):
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        return out.logits if hasattr(out, "logits") else out
    return model(batch[0])


def _labels(batch):
    return batch["labels"] if isinstance(batch, dict) else batch[1]


def classification_loss(model, batch):
    """Cross-entropy of the logits against the labels (mean over the batch)."""
    return F.cross_entropy(forward_logits(model, batch).float(), _labels(batch))


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 64, loss_fn=classification_loss, dev=None) -> dict:
    """Mean loss and accuracy over ``data`` (model put in eval mode, restored afterwards)."""
    dev = dev or next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = _n_examples(data)
    tot_loss, correct = 0.0, 0
    try:
        for a in range(0, n, batch_size):
            batch = _take(data, torch.arange(a, min(n, a + batch_size)), dev)
            logits = forward_logits(model, batch).float()
            y = _labels(batch)
            tot_loss += float(F.cross_entropy(logits, y, reduction="sum")) if loss_fn is classification_loss \
                else float(loss_fn(model, batch)) * len(y)
            if logits.dim() == 2 and y.dim() == 1 and not torch.is_floating_point(y):
                correct += int((logits.argmax(-1) == y).sum())
    finally:
        model.train(was_training)
    return {"loss": tot_loss / n, "accuracy": correct / n}


def lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    w = int(round(warmup * total))
    if step < w:
        return (step + 1) / w
    if schedule == "constant":
        return 1.0
    frac = (step - w) / max(1, total - w)
    return 1.0 - frac if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: theta (lr, weight_decay) and all other trainable parameters (head_lr, head_weight_decay)."""
    adapter = get_adapter(model)
    theta = [adapter.theta] if adapter is not None and adapter.theta.requires_grad else []
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(ADAPTER_ATTR)]
    if not theta and not others:
        raise ConfigError("nothing to train: no parameter requires grad; attach an adapter or unfreeze a head")
    head_lr = cfg.lr if cfg.head_lr is None else cfg.head_lr
    groups = []
    if theta:
        groups.append({"params": theta, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "theta"})
    if others:
        lr = head_lr if theta else cfg.lr
        wd = cfg.head_weight_decay if theta else cfg.weight_decay
        groups.append({"params": others, "lr": lr, "weight_decay": wd, "name": "head" if theta else "model"})
    return groups


def _peak_memory(dev) -> tuple[int, str]:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (CPU)"


def fit(model: nn.Module, train, eval_data=None, *, config: TrainConfig | None = None,
        loss_fn=classification_loss, eval_fn=None, callback=None) -> History:
    """Train ``model``'s trainable parameters on ``train``; returns a History.

    ``callback(history, step)`` runs after every step; returning True stops training (live widgets).
    ``eval_fn(model) -> dict`` replaces the default ``evaluate(model, eval_data)``.
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    cfg.validate()
    dev = pick_device(cfg.device)
    model.to(dev)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    groups = param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    base_lrs = [grp["lr"] for grp in opt.param_groups]
    params = [p for grp in groups for p in grp["params"]]
    hist = History(config=asdict(cfg))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def run_eval(step):
        if eval_data is None and eval_fn is None:
            return
        metrics = eval_fn(model) if eval_fn is not None else evaluate(model, eval_data, cfg.eval_batch_size,
                                                                       dev=dev)
        hist.evals.append({"step": step, **metrics})

    n = _n_examples(train)
    order, pos = torch.randperm(n, generator=g), 0
    t0 = time.perf_counter()
    run_eval(0)
    model.train()
    bar = tqdm(range(cfg.steps), desc="train", disable=not cfg.progress, leave=False)
    for step in bar:
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx, pos = order[pos: pos + cfg.batch_size], pos + cfg.batch_size
        batch = _take(train, idx, dev)
        factor = lr_factor(step, cfg.steps, cfg.warmup, cfg.schedule)
        for grp, base in zip(opt.param_groups, base_lrs):
            grp["lr"] = base * factor
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16 and dev.type == "cuda"):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        hist.losses.append(loss.item())
        hist.lrs.append(opt.param_groups[0]["lr"])
        bar.set_postfix(loss=f"{hist.losses[-1]:.4f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            run_eval(step + 1)
        if callback is not None and callback(hist, step + 1):
            hist.stopped_early = True
            break
    bar.close()
    run_eval(len(hist.losses))
    hist.wall_time = time.perf_counter() - t0
    hist.peak_memory_bytes, hist.peak_memory_kind = _peak_memory(dev)
    return hist
