"""transformers' Trainer, adapted for gpart_edu: two AdamW groups, theta-sized checkpoints, an all-reduce counter.

Used by ``gpart_edu.engine.run``. ``trainer_class()`` returns a Trainer subclass (transformers is imported
lazily), constructed as ``GPartTrainer(gpart_cfg=run_config, model=..., args=..., ...)``, that
* builds AdamW with theta at ``lr`` and every other trainable tensor (the head) at ``head_lr``
  (``optim.build_optimizer``), and the learning-rate schedule of ``train.fit`` (``optim.build_scheduler``, a
  LambdaLR over ``optim.lr_factor``) instead of Trainer's ``get_scheduler``;
* saves checkpoints as ``trainable.safetensors`` -- theta + head only, not the frozen base model -- and loads
  them back on ``--resume`` (Trainer adds optimizer, scheduler, RNG and its own state next to it);
``monitor()`` is a callback that registers a counting DDP communication hook (bytes all-reduced per step),
prints each evaluation, and stops (with a checkpoint) at ``stop_after_steps``; ``rank_spread()`` measures
how far theta differs between processes at the end (0.0 when data parallelism worked).
Taught in notebooks/06_full_scale.ipynb, sections 4 and 6 (the engine, data parallel).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from ..core.adapter import get_adapter
from ..errors import ConfigError
from .optim import OptimConfig, build_optimizer, build_scheduler, trainable_state

TRAINABLE_FILE = "trainable.safetensors"


def trainer_class():
    """Return the ``GPartTrainer`` class (a transformers ``Trainer`` subclass; transformers loads here).

    Build it as ``GPartTrainer(gpart_cfg=cfg, model=..., args=..., ...)`` with ``cfg`` an ``optim.OptimConfig``
    (``engine.RunConfig``). Taught in notebooks/06_full_scale.ipynb.
    """
    from transformers import Trainer

    class GPartTrainer(Trainer):
        """Run Trainer with gpart_edu's optimisation (the AdamW groups and learning-rate schedule of
        ``optim``, as in ``train.fit``) and theta-sized checkpoints."""

        def __init__(self, *args, gpart_cfg: OptimConfig, **kwargs):
            if not isinstance(gpart_cfg, OptimConfig):
                raise ConfigError(f"GPartTrainer(gpart_cfg=...) takes an OptimConfig such as engine.RunConfig, "
                                  f"got {type(gpart_cfg).__name__}")
            self.gpart_cfg = gpart_cfg
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model=None):
            """Build AdamW over ``optim.param_groups``: theta at lr / weight_decay, the head at head_lr /
            head_weight_decay."""
            if self.optimizer is None:
                self.optimizer = build_optimizer(self.model, self.gpart_cfg)   # the unwrapped model: its adapter
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            """Install ``optim.build_scheduler`` (LambdaLR over ``optim.lr_factor``) for ``num_training_steps``
            optimizer steps: the per-step learning rates of ``train.fit``. Trainer saves and restores its state."""
            if self.lr_scheduler is None:
                self.lr_scheduler = build_scheduler(optimizer or self.optimizer, self.gpart_cfg, num_training_steps)
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def _save(self, output_dir=None, state_dict=None):
            if not self.args.should_save:
                return
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            model = self.accelerator.unwrap_model(self.model)
            save_file({n: p.detach().cpu().contiguous() for n, p in trainable_state(model).items()},
                      os.path.join(output_dir, TRAINABLE_FILE), metadata={"format": "gpart_edu.trainable"})

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            path = os.path.join(resume_from_checkpoint, TRAINABLE_FILE)
            if not os.path.isfile(path):
                raise ConfigError(f"{resume_from_checkpoint} has no {TRAINABLE_FILE}: not a gpart-edu checkpoint")
            model = self.accelerator.unwrap_model(model if model is not None else self.model)
            saved, mine = load_file(path), trainable_state(model)
            if set(saved) != set(mine):
                raise ConfigError(f"checkpoint {resume_from_checkpoint} holds {sorted(saved)[:4]}..., this run "
                                  f"trains {sorted(mine)[:4]}...: resume with the same model, method and d")
            with torch.no_grad():
                for n, p in mine.items():
                    p.copy_(saved[n].to(p.device, p.dtype))

    return GPartTrainer


def monitor(trainer, cfg):
    from transformers import TrainerCallback

    class Monitor(TrainerCallback):
        """Counts all-reduced bytes (DDP comm hook), prints evals, stops early on request."""

        def __init__(self):
            self.comm = {"bytes": 0, "calls": 0, "hooked": False}
            self.first_step = None

        def on_train_begin(self, args, state, control, **kw):
            self.first_step = state.global_step
            wrapped = trainer.model_wrapped
            if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):

                def counting_hook(comm, bucket):
                    buf = bucket.buffer()
                    comm["bytes"] += buf.numel() * buf.element_size()
                    comm["calls"] += 1
                    return default_hooks.allreduce_hook(None, bucket)
                wrapped.register_comm_hook(self.comm, counting_hook)
                self.comm["hooked"] = True

        def on_step_end(self, args, state, control, **kw):
            if cfg.stop_after_steps and state.global_step >= cfg.stop_after_steps:
                control.should_save = True
                control.should_training_stop = True

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if state.is_world_process_zero and metrics:
                shown = ", ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items()
                                  if k.startswith("eval_") and isinstance(v, float) and "runtime" not in k
                                  and "per_second" not in k)
                print(f"step {state.global_step}: {shown}", flush=True)

    return Monitor()


def rank_spread(model) -> dict:
    """max |x_rank - x_rank'| over processes of theta and of all trainable tensors (0.0 = identical)."""
    if not (dist.is_available() and dist.is_initialized()):
        return {}
    out = {}
    for key, tensors in (("theta", [get_adapter(model).theta] if get_adapter(model) else []),
                         ("trainable", list(trainable_state(model).values()))):
        worst = 0.0
        for t in tensors:
            hi, lo = t.detach().clone(), t.detach().clone()
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            worst = max(worst, float((hi - lo).abs().max()))
        out[f"{key}_max_abs_diff_across_ranks"] = worst if tensors else None
    return out
