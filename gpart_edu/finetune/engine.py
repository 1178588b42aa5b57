"""Train at full scale through transformers' Trainer: data parallel, bf16, accumulation, checkpoint + resume.

    results = engine.run(engine.RunConfig(model="minilm", task="tweets", method="gpart", d=23_040, steps=30),
                         out="runs/tweets")

The same code runs on one CPU, one GPU, or N processes: ``torchrun --nproc_per_node N --no-python gpart-edu
finetune ...`` (or, on GPUs, ``accelerate launch --multi_gpu -m gpart_edu.cli finetune ...``) makes Trainer
wrap the model in DistributedDataParallel. The adapter is the registered submodule ``gpart_edu_adapter``, so theta is an
ordinary parameter: DDP all-reduces its gradient (and the head's) and nothing else -- 4 (d + head) bytes per
optimizer step (fp32 gradients), measured with a counting communication hook and written to results.json.
Buffers (the partition's counts / ids) are regenerated from the seed on every process and never broadcast.
Checkpoints (``out/checkpoints/checkpoint-N``) hold only the trainable tensors (theta + head) plus the
optimizer, scheduler, RNG and Trainer state, so ``--resume`` continues the step count exactly.
Optimisation (``RunConfig``'s lr, head_lr, weight decays, warm-up, schedule, clipping) is ``optim.OptimConfig``,
the notebooks' ``train.fit`` settings: the same AdamW groups and the same learning rate at every step.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import assets
from ..core import registry
from ..core.adapter import attach, load_adapter
from ..core.storage import fingerprint
from ..core.targets import resolve_targets
from ..errors import ConfigError
from . import recipes, train
from . import tasks as tasklib
from .gsm8k import gsm8k_accuracy
from .hf_trainer import monitor, rank_spread, trainer_class
from .optim import OptimConfig, allreduce_bytes
from .results import RunOutcome, collect_evals, write_outputs

ADAPTER_METHODS = registry.NAMES
METHODS = ADAPTER_METHODS + ("head", "full")


@dataclass(kw_only=True)
class RunConfig(OptimConfig):
    """Describe one fine-tuning run; ``from_recipe`` fills it with a recipe's values. Taught in 06_full_scale.

    The optimisation fields (lr, head_lr, weight_decay, head_weight_decay, warmup, schedule, grad_clip) are
    ``optim.OptimConfig``'s, shared with the notebooks' ``train.TrainConfig``: the same AdamW groups and the
    same per-step learning rates (``optim.lr_factor``). ``head_weight_decay`` None decays the head like theta
    (``weight_decay``). Keyword-only.
    """

    model: str = "minilm"
    task: str = "tweets"
    method: str = "gpart"
    d: int | None = None
    r: int | None = None
    alpha: float | None = None
    assignment: str = "balanced"
    targets: tuple | str = ("query", "value")
    seed: int = 0
    batch_size: int = 16                     # global batch (all processes, all accumulation steps)
    per_device_batch_size: int | None = None  # None: batch_size / processes, no accumulation
    grad_accum: int | None = None            # or: accumulation steps (per-device batch follows)
    eval_batch_size: int = 64
    epochs: float | None = None
    steps: int | None = None
    dropout: float | None = None
    max_length: int | None = 128
    bf16: bool | None = None                 # None: on when CUDA supports it
    device: str = "auto"                     # auto | cpu | cuda
    max_train: int | None = None
    max_eval: int | None = None
    eval_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int = 10
    resume: bool = False
    dataset_path: str | None = None
    progress: bool = True
    stop_after_steps: int | None = None      # stop (and checkpoint) early: a time budget / interruption
    gsm8k_max_new_tokens: int = 256
    workers: int = 0                         # DataLoader worker processes (images: decode/resize off the GPU loop)
    recipe: str | None = None

    @classmethod
    def from_recipe(cls, name: str, **overrides) -> "RunConfig":
        """Build the RunConfig of recipe ``name`` (``recipes.get``); non-None ``overrides`` replace its values."""
        r = recipes.get(name)
        base = dict(model=r.model, task=r.task, method=r.method, targets=tuple(r.targets), lr=r.lr,
                    head_lr=r.head_lr, weight_decay=r.weight_decay, batch_size=r.batch_size,
                    per_device_batch_size=r.per_device_batch_size, warmup=r.warmup, schedule=r.schedule,
                    epochs=r.epochs, dropout=r.dropout, max_length=r.max_length, bf16=r.bf16 or None,
                    recipe=r.name, **{k: v for k, v in r.method_config.items() if k in ("d", "r", "alpha")})
        base.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("steps") is not None:
            base["epochs"] = None
        if overrides.get("grad_accum") is not None:
            base["per_device_batch_size"] = None
        return cls(**base)

    def method_options(self) -> dict:
        """Return the adapter options this config sets for its method (None and other methods' options left out).

        What ``prepare`` attaches with, through the method registry (runs of notebooks/06_full_scale.ipynb)."""
        return registry.accepted(self.method, d=self.d, r=self.r, alpha=self.alpha, assignment=self.assignment,
                                 seed=self.seed)

    def validate(self) -> None:
        """Raise ConfigError naming the field and the fix when the run cannot work as configured."""
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r}; choose one of {', '.join(METHODS)}")
        tasklib.get(self.task)
        if self.method in ADAPTER_METHODS:
            registry.resolve(self.method, **self.method_options())  # names a missing budget (d)
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of steps (optimizer steps) or epochs")
        super().validate()
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device {self.device!r}; choose auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
        for name in ("batch_size", "eval_batch_size", "logging_steps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")


def split_batch(batch_size: int, per_device: int | None, world: int, accum: int | None = None) -> tuple[int, int]:
    """(per-device batch, accumulation steps) with per_device * world * accumulation == batch_size.

    Give per_device (accumulation follows) or accum (per_device follows) or neither (no accumulation)."""
    if per_device is not None and accum is not None:
        raise ConfigError("give the per-device batch or the accumulation steps, not both")
    if accum is not None:
        per_device, rest = divmod(batch_size, accum * world)
        if rest or per_device < 1:
            raise ConfigError(f"global batch {batch_size} is not a multiple of {accum} accumulation steps x "
                              f"{world} processes; change --batch-size or --grad-accum")
        return per_device, accum
    if per_device is None:
        per_device = max(1, batch_size // world)
    per_device = min(per_device, max(1, batch_size // world))
    accum, rest = divmod(batch_size, per_device * world)
    if rest or accum < 1:
        raise ConfigError(f"global batch {batch_size} is not a multiple of {per_device} per device x {world} "
                          f"processes; change --batch-size or --per-device-batch-size")
    return per_device, accum


# ------------------------------------------------------------------------------------ model
def load_model(cfg: RunConfig, spec):
    """(model, tokenizer or None, image settings) for the task kind; the head is seeded with cfg.seed."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    torch.manual_seed(cfg.seed)
    with assets._quiet_transformers():
        if cfg.model == assets.SMOLLM2:
            model, tok = assets.load_causal_lm(assets.SMOLLM2)
        else:
            path = assets.resolve_model(cfg.model)
            hf = AutoConfig.from_pretrained(path)
            kw = {}
            if cfg.dropout is not None:
                kw = {k: cfg.dropout for k in ("hidden_dropout_prob", "attention_probs_dropout_prob",
                                               "attention_dropout") if hasattr(hf, k)}
            if spec.kind == "text":
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=spec.num_labels, ignore_mismatched_sizes=True, dtype=torch.float32, **kw)
            elif spec.kind == "image":
                model = AutoModelForImageClassification.from_pretrained(
                    path, num_labels=spec.num_labels, ignore_mismatched_sizes=True, dtype=torch.float32, **kw)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
            tok = AutoTokenizer.from_pretrained(path) if spec.kind != "image" else None
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    image = {}
    if spec.kind == "image":
        c = model.config
        image = {"image_size": int(getattr(c, "image_size", 224)), "channels": int(getattr(c, "num_channels", 3)),
                 "mean": (0.5,) * 3, "std": (0.5,) * 3}
        try:
            from transformers import AutoImageProcessor
            proc = AutoImageProcessor.from_pretrained(assets.resolve_model(cfg.model))
            image.update(mean=tuple(proc.image_mean), std=tuple(proc.image_std))
        except Exception:  # noqa: BLE001 -- no processor config saved with the model: ViT's 0.5 / 0.5
            pass
    return model, tok, image


def prepare(model, cfg: RunConfig):
    """Attach the adapter (gpart / unilora / lora) or set the baseline's trainable set (head / full)."""
    if cfg.method in ADAPTER_METHODS:
        names = [n for n, _ in resolve_targets(model, cfg.targets)]
        return attach(model, cfg.method, targets=names, **cfg.method_options())
    train.set_trainable(model, cfg.method)
    return None


RUN_FILE = "gpart_edu_run.json"       # in out, beside checkpoints/: what the checkpoints' theta means


def run_identity(cfg: RunConfig, adapter) -> dict:
    """What a checkpoint's trainable tensors depend on: model, task, method, the map's config and its layers."""
    ident = {"model": cfg.model, "task": cfg.task, "method": cfg.method}
    if adapter is not None:
        ident.update(config=adapter.method.config(), targets=fingerprint(adapter.targets))
    return json.loads(json.dumps(ident))


def check_resume(ckpt_dir: Path, ident: dict) -> None:
    """Refuse to resume checkpoints made with another model, task, method, config (seed, d, r ...) or layers."""
    path = ckpt_dir.parent / RUN_FILE
    if not path.is_file():
        warnings.warn(f"--resume: {ckpt_dir.parent} has no {RUN_FILE} (written by an older gpart-edu): its method, "
                      f"config and layers cannot be checked against this run's", stacklevel=2)
        return
    saved = json.loads(path.read_text())
    diff = []
    for key in ("model", "task", "method", "targets"):
        if saved.get(key) != ident.get(key):
            diff.append(f"{key}: checkpoint {saved.get(key)!r}, this run {ident.get(key)!r}")
    a, b = saved.get("config") or {}, ident.get("config") or {}
    diff += [f"{k}: checkpoint {a.get(k)!r}, this run {b.get(k)!r}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    if diff:
        raise ConfigError(f"--resume: the checkpoints in {ckpt_dir} were made with other settings ({'; '.join(diff)}); "
                          f"their theta means something else under this run's map: resume with the settings they "
                          f"were made with, or start a new run in another --out")


def run(cfg: RunConfig, out, extra: dict | None = None) -> dict:
    """Fine-tune per ``cfg``; write results.json, the adapter (+ head) and summary.md into ``out``.

    Trainer runs the loop (data parallel, accumulation, bf16, checkpoints); ``GPartTrainer`` installs the AdamW
    groups and the learning-rate schedule of ``optim`` (the same per-step rates as ``train.fit``). Taught in
    notebooks/06_full_scale.ipynb.
    """
    from transformers import TrainingArguments
    cfg.validate()
    out = Path(out)
    spec = tasklib.get(cfg.task)
    t_start = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    bf16 = bool(cfg.bf16) if cfg.bf16 is not None else (not use_cpu and torch.cuda.is_bf16_supported())
    per_device, accum = split_batch(cfg.batch_size, cfg.per_device_batch_size, world, cfg.grad_accum)
    ckpt_dir = out / "checkpoints"
    resume_from = None
    if cfg.resume:
        from transformers.trainer_utils import get_last_checkpoint
        resume_from = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint-N folder in {ckpt_dir}; run once with --save-steps first")

    model, tok, image = load_model(cfg, spec)
    adapter = prepare(model, cfg)
    ident = run_identity(cfg, adapter)
    if resume_from is not None:
        check_resume(ckpt_dir, ident)
    elif int(os.environ.get("RANK", "0")) == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_FILE).write_text(json.dumps(ident, indent=2) + "\n")
    data = tasklib.load(cfg.task, tokenizer=tok, max_length=cfg.max_length, max_train=cfg.max_train,
                        max_eval=cfg.max_eval, seed=cfg.seed, dataset_path=cfg.dataset_path,
                        **({"image_size": image["image_size"], "channels": image["channels"],
                            "mean": image["mean"], "std": image["std"]} if image else {}))
    by_epoch = cfg.epochs is not None and cfg.epochs >= 1
    # evaluate at step 0 (eval_on_start, kept in checkpoints' log history), every eval_steps / epoch, and last
    eval_strategy = "epoch" if by_epoch and not cfg.eval_steps else "steps"
    eval_steps = cfg.eval_steps or (None if by_epoch else 10 ** 12)
    save_strategy = "steps" if cfg.save_steps else ("epoch" if by_epoch else "no")
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=per_device, gradient_accumulation_steps=accum,
        # AdamW groups and the learning-rate schedule are GPartTrainer's, from cfg (optim): learning_rate and
        # weight_decay are recorded here only; Trainer's own lr_scheduler_type / warmup_steps are not used
        per_device_eval_batch_size=cfg.eval_batch_size, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        max_steps=cfg.steps or -1,
        num_train_epochs=cfg.epochs or 1.0, max_grad_norm=cfg.grad_clip or 0.0, bf16=bf16, use_cpu=use_cpu,
        ddp_backend=("gloo" if use_cpu else None) if world > 1 else None,
        ddp_find_unused_parameters=cfg.method == "full",
        ddp_broadcast_buffers=False, eval_strategy=eval_strategy, eval_steps=eval_steps,
        eval_on_start=resume_from is None, save_strategy=save_strategy,
        save_steps=cfg.save_steps, save_total_limit=2, logging_steps=cfg.logging_steps, report_to="none",
        seed=cfg.seed, disable_tqdm=not cfg.progress, remove_unused_columns=False, label_names=["labels"],
        dataloader_num_workers=cfg.workers, prediction_loss_only=spec.kind in ("lm", "math"))
    trainer = trainer_class()(gpart_cfg=cfg, model=model, args=args, train_dataset=data.train,
                              eval_dataset=data.eval, data_collator=data.collator,
                              compute_metrics=tasklib.compute_metrics(spec))
    if spec.kind not in ("lm", "math"):
        # Classification heads return a per-batch mean loss and ignore Trainer's num_items_in_batch; left on,
        # Trainer would multiply it by the number of processes and skip the accumulation division.
        trainer.model_accepts_loss_kwargs = False
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)
    mon = monitor(trainer, cfg)
    trainer.add_callback(mon)
    if args.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    t_train = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_time = time.perf_counter() - t_train
    evals = collect_evals(trainer.state.log_history)
    if not evals or evals[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()
        evals = collect_evals(trainer.state.log_history)
    steps_run = trainer.state.global_step - (mon.first_step or 0)
    dist_info = {"world_size": world, "backend": str(args.ddp_backend or ("nccl" if not use_cpu else "gloo"))
                 if world > 1 else None, "per_device_batch_size": per_device, "gradient_accumulation_steps": accum,
                 "allreduce_bytes_per_step_expected": allreduce_bytes(model) if world > 1 else 0,
                 "allreduce_bytes_per_step_measured": (mon.comm["bytes"] / steps_run)
                 if mon.comm["hooked"] and steps_run else None,
                 "allreduce_calls": mon.comm["calls"], **rank_spread(model)}
    if not trainer.is_world_process_zero():
        return {"rank": int(os.environ.get("RANK", 0)), "evals": evals}
    extra_metrics = {}
    if spec.kind == "math" and data.gsm8k:          # generation on rank 0 only (--max-eval limits it)
        extra_metrics = gsm8k_accuracy(trainer.model, tok, data.gsm8k, cfg.gsm8k_max_new_tokens)
    if args.device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(args.device), "cuda max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (CPU, lifetime)"
    outcome = RunOutcome(model=model, adapter=adapter, spec=spec, data=data, evals=evals,
                         extra_metrics=extra_metrics, state=trainer.state, train_time=train_time,
                         wall_time=time.perf_counter() - t_start, peak_memory_bytes=int(peak), peak_memory_kind=kind,
                         device=str(args.device), bf16=bf16, distributed=dist_info, resumed_from=resume_from,
                         command=(extra or {}).get("command", " ".join(sys.argv)))
    return write_outputs(out, cfg, outcome)


def load_finetuned(out, device: str | None = None):
    """(model, tokenizer, results): the run's base model rebuilt as in training, with its adapter and head.

    Taught in notebooks/06_full_scale.ipynb, section "5 · Reload: base model + adapter + head = the same numbers".
    """
    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    known = {f for f in RunConfig.__dataclass_fields__}
    cfg = RunConfig(**{k: v for k, v in results["config"].items() if k in known})
    if isinstance(cfg.targets, list):
        cfg.targets = tuple(cfg.targets)
    model, tok, _ = load_model(cfg, tasklib.get(cfg.task))
    files = results["files"]
    if "adapter" in files:
        load_adapter(out / files["adapter"], model)
    tensors = load_file(str(out / files["head"])) if "head" in files else \
        load_file(str(out / files["trainable"])) if "trainable" in files else {}
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(f"{out}: saved tensors {unknown[:3]} do not exist in {cfg.model}; wrong base model?")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].dtype))
    model.eval()
    if device is not None:
        model.to(device)
    return model, tok, results


def config_fields() -> list[str]:
    return [f.name for f in fields(RunConfig)]


__all__ = ["RunConfig", "run", "load_model", "prepare", "split_batch", "load_finetuned", "config_fields", "METHODS",
           "ADAPTER_METHODS"]
