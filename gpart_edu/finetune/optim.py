"""How the trainable tensors are optimised, once for both training paths: the one optimisation config, its AdamW
groups and its learning-rate schedule; plus what trains and what data parallelism all-reduces.

    opt = build_optimizer(model, cfg)          # AdamW: theta at lr / weight_decay, the rest at head_lr / head_wd
    sched = build_scheduler(opt, cfg, total)   # LambdaLR over lr_factor: the lr of step s is base * lr_factor(s)

``OptimConfig`` is the base of ``train.TrainConfig`` (the notebooks' ``fit`` loop: notebooks 00_quickstart,
04 and 05) and of ``engine.RunConfig`` (the CLI / Trainer engine: notebook 06_full_scale), so both paths share
the fields, their validation, the parameter groups, AdamW's settings and the learning-rate sequence (a test pins
that ``fit`` and the Trainer engine record the same per-step learning rates). Shared as well by the Trainer's
checkpoints (``hf_trainer``) and the results writer. Taught in notebooks/06_full_scale.ipynb (communication cost).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..core.adapter import ADAPTER_ATTR, get_adapter
from ..errors import ConfigError

SCHEDULES = ("linear", "cosine", "constant")
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8


@dataclass(kw_only=True)
class OptimConfig:
    """Hold the optimisation settings both training paths share (``TrainConfig`` and ``RunConfig`` inherit them).

    ``head_lr`` / ``head_weight_decay`` apply to every trainable tensor outside the adapter (a task head); None
    means "the same as ``lr``" / "the same as ``weight_decay``". ``TrainConfig`` overrides the head's weight
    decay default to 0.0 (the notebook loop decays theta, i.e. Delta W, and leaves the head alone);
    ``RunConfig`` keeps None, so the engine decays the head like theta, as it always has. Without an adapter
    (head / full baselines) every trainable tensor is one group at ``lr`` / ``weight_decay``. Taught in
    notebooks 00_quickstart (``TrainConfig``) and 06_full_scale (``RunConfig``).
    """

    lr: float = 5e-3                        # theta (or, without an adapter, every trainable parameter)
    head_lr: float | None = None            # other trainable parameters (task head); None -> lr
    weight_decay: float = 0.0               # on theta
    head_weight_decay: float | None = None  # on the other trainable parameters; None -> weight_decay
    warmup: float = 0.06                    # fraction of the steps with linear warm-up ((step + 1) / w)
    schedule: str = "linear"                # after warm-up: linear decay to 0, cosine decay to 0, or constant
    grad_clip: float | None = 1.0           # max global gradient norm; None or 0: no clipping

    def validate(self) -> None:
        """Raise ConfigError naming the field and the fix when an optimisation setting is out of range."""
        who = type(self).__name__
        if not (_number(self.lr) and self.lr > 0):
            raise ConfigError(f"{who}.lr must be a finite number > 0, got {self.lr!r}")
        if self.head_lr is not None and not (_number(self.head_lr) and self.head_lr > 0):
            raise ConfigError(f"{who}.head_lr must be a finite number > 0 or None (= lr), got {self.head_lr!r}")
        if not (_number(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"{who}.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.head_weight_decay is not None and not (_number(self.head_weight_decay) and self.head_weight_decay >= 0):
            raise ConfigError(f"{who}.head_weight_decay must be a finite number >= 0 or None (= weight_decay), "
                              f"got {self.head_weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"{who}.schedule={self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (_number(self.warmup) and 0 <= self.warmup < 1):
            raise ConfigError(f"{who}.warmup is a fraction of the steps in [0, 1), got {self.warmup!r}")
        if self.grad_clip is not None and not (_number(self.grad_clip) and self.grad_clip >= 0):
            raise ConfigError(f"{who}.grad_clip must be a finite number >= 0 or None (no clipping), "
                              f"got {self.grad_clip!r}")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    """Return the multiplier of the base learning rate at ``step`` (0-based) of ``total`` optimizer steps.

    Warm-up over w = round(warmup * total) steps rises linearly to 1 and never starts at 0 ((step + 1) / w);
    then "linear" decays to 0, "cosine" follows half a cosine to 0, "constant" stays at 1. The one schedule of
    ``train.fit`` (notebooks 00_quickstart, 04, 05) and of the Trainer engine (06_full_scale).
    """
    w = int(round(warmup * total))
    if step < w:
        return (step + 1) / w
    if schedule == "constant":
        return 1.0
    frac = (step - w) / max(1, total - w)
    return 1.0 - frac if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split the trainable tensors into AdamW groups: theta (lr, weight_decay) and every other trainable tensor
    (head_lr, head_weight_decay); without a trainable theta, one group "model" at lr / weight_decay."""
    adapter = get_adapter(model)
    theta = [adapter.theta] if adapter is not None and adapter.theta.requires_grad else []
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(ADAPTER_ATTR)]
    if not theta and not others:
        raise ConfigError("nothing to train: no parameter requires grad; attach an adapter or unfreeze a head")
    head_lr = cfg.lr if cfg.head_lr is None else cfg.head_lr
    head_wd = cfg.weight_decay if cfg.head_weight_decay is None else cfg.head_weight_decay
    groups = []
    if theta:
        groups.append({"params": theta, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "theta"})
    if others:
        lr, wd = (head_lr, head_wd) if theta else (cfg.lr, cfg.weight_decay)
        groups.append({"params": others, "lr": lr, "weight_decay": wd, "name": "head" if theta else "model"})
    return groups


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Build AdamW (betas (0.9, 0.999), eps 1e-8) over ``param_groups(model, cfg)``; used by ``train.fit`` and
    by the Trainer engine's ``GPartTrainer``."""
    return torch.optim.AdamW(param_groups(model, cfg), betas=ADAMW_BETAS, eps=ADAMW_EPS)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Build the learning-rate schedule of ``total`` optimizer steps: a LambdaLR over ``lr_factor``.

    Step s (0-based) runs at base_lr * lr_factor(s) in every group; call ``scheduler.step()`` after each
    ``optimizer.step()``. Its state (the step count) is what Trainer checkpoints save and restore.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ConfigError(f"the schedule needs the number of optimizer steps as an integer >= 1, got {total!r}")
    factor = functools.partial(lr_factor, total=total, warmup=cfg.warmup, schedule=cfg.schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def allreduce_bytes(model: torch.nn.Module) -> int:
    """Bytes data-parallel training all-reduces per optimizer step: every trainable tensor's gradient
    (DDP reduces in the parameter dtype). For a GPart classifier: 4 (d + head) with fp32 parameters."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.requires_grad and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def trainable_state(model: torch.nn.Module) -> dict:
    """{name: tensor} of the trainable parameters (shared storage once): what a checkpoint holds."""
    seen, out = set(), {}
    for n, p in model.named_parameters():
        if p.requires_grad and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            out[n] = p
    return out
