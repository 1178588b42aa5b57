"""A small, readable training loop used by every notebook, test and the CLI.

    hist = fit(model, train_batch_source, eval_data, config=TrainConfig(steps=300, lr=5e-3, head_lr=5e-3))

* Optimisation as in ``optim`` (shared with the Trainer engine): two AdamW groups, the adapter's theta (``lr``)
  and every other trainable parameter, i.e. a task head or, for full fine-tuning, the whole model (``head_lr``,
  default ``lr``); warm-up (fraction of steps) then linear / cosine decay or constant (``optim.lr_factor``);
  gradient clipping. Evaluation every N steps.
* Weight decay on theta: for GPart ||Delta W|| = ||theta||, so decaying theta decays Delta W towards the
  pretrained weights.
* Seeded, deterministic on CPU (same seed -> bit-identical theta); CUDA when available; optional bf16
  autocast on GPU.
* Baselines: ``set_trainable(model, "head")`` (linear probe) and ``set_trainable(model, "full")``.
* Causal LM: ``lm_data(blocks)``, ``causal_lm_loss`` and ``evaluate_lm`` (token-mean NLL, perplexity).
Data: a dict of equal-length tensors (``labels`` is the target; the rest are model inputs) or a tuple
(x, y). Batches come from a seeded permutation per epoch. Padding columns that a whole batch masks out
(``attention_mask`` == 0) are dropped before the forward (``trim_padding``): same result, less work.
"""
from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import losses
from ..core.adapter import AUTO_HEADS, get_adapter
from ..errors import ConfigError
from ..losses import classification_loss, cross_entropy, forward_logits, labels, n_examples, take
from ..runtime import device as pick_device
from .optim import OptimConfig, build_optimizer, build_scheduler


@dataclass(kw_only=True)
class TrainConfig(OptimConfig):
    """Configure one ``fit`` run: the shared optimisation settings (``optim.OptimConfig``: lr, head_lr,
    weight_decay, head_weight_decay, warmup, schedule, grad_clip) plus the loop's own (steps, batches,
    evaluation, device). Taught in notebooks 00_quickstart, 04 and 05.

    Keyword-only. The head's weight decay defaults to 0.0 here (decay theta, i.e. Delta W, not the head);
    ``engine.RunConfig`` leaves it None (= weight_decay).
    """

    head_weight_decay: float | None = 0.0
    steps: int = 100
    batch_size: int = 16
    eval_every: int = 0              # 0: evaluate only before and after training
    eval_batch_size: int = 64
    seed: int = 0
    device: str | None = None        # None: CUDA if available, else CPU
    bf16: bool = False               # autocast to bfloat16 (GPU only; ignored on CPU)
    progress: bool = True
    eval_at_start: bool = True       # evaluate before the first step (the "before" number)
    trim_padding: bool = True        # drop columns every sequence of a batch masks out

    def validate(self) -> None:
        """Raise ConfigError naming the field and the fix when a setting is out of range."""
        for name in ("steps", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"TrainConfig.{name} must be an integer >= 1, got {v!r}")
        super().validate()
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
    diverged: bool = False                           # stopped because the loss became NaN / inf
    num_trainable: int = 0                           # trainable parameters (theta + head, or all)

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}

    @property
    def steps_done(self) -> int:
        return len(self.losses)

    def curve(self, metric: str = "accuracy") -> tuple[list, list]:
        """(steps, values) of an evaluation metric, for plotting."""
        pts = [(e["step"], e[metric]) for e in self.evals if metric in e]
        return [p[0] for p in pts], [p[1] for p in pts]


# ----------------------------------------------------------------------------------- evaluation
def evaluate(model: nn.Module, data, batch_size: int = 64, loss_fn=classification_loss, dev=None,
             trim_padding: bool = True) -> dict:
    """Return the mean loss and accuracy of ``model`` as it is over ``data``: what ``fit`` reports.

    ``losses.evaluate`` (the one evaluator): every module in eval mode, its own train flag restored afterwards;
    batches in order of sequence length when there is an attention mask (same sums, less padding). With a
    custom ``loss_fn`` only {"loss"} is returned (example-weighted mean of the batch means).
    Notebook: 00_quickstart.
    """
    return losses.evaluate(model, data, batch_size, loss_fn=loss_fn, device=dev, trim_padding=trim_padding)


# ------------------------------------------------------------------------------- causal LM
def lm_data(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training data for a causal LM from (n, T) token blocks: inputs and labels are the same ids.

    Taught in notebooks/05_transformer_finetuning.ipynb,
    section "5 · SmolLM2-135M on Grimm tales: held-out perplexity".
    """
    if blocks.dim() != 2 or torch.is_floating_point(blocks):
        raise ConfigError(f"lm_data expects (n, T) integer token blocks, got {tuple(blocks.shape)} "
                          f"{blocks.dtype}; build them with assets.lm_blocks(tokenizer, texts, block)")
    return {"input_ids": blocks, "labels": blocks.clone()}


def _lm_nll(model, batch, reduction: str):
    logits = forward_logits(model, batch)  # (B, T, V)
    y = labels(batch)
    return cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1), reduction=reduction)


def causal_lm_loss(model, batch):
    """Next-token cross-entropy, mean over the predicted tokens (labels -100 are ignored)."""
    return _lm_nll(model, batch, "mean")


@torch.no_grad()
def evaluate_lm(model: nn.Module, data, batch_size: int = 8, dev=None) -> dict:
    """Token-mean negative log-likelihood over ``data`` and its perplexity exp(NLL).

    Taught in notebooks/05_transformer_finetuning.ipynb,
    section "5 · SmolLM2-135M on Grimm tales: held-out perplexity".
    """
    dev = dev or next(model.parameters()).device
    was_training = model.training
    model.eval()
    n, tot, count = n_examples(data), 0.0, 0
    try:
        for a in range(0, n, batch_size):
            batch = take(data, torch.arange(a, min(n, a + batch_size)), dev)
            tot += float(_lm_nll(model, batch, "sum"))
            count += int((labels(batch)[:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    return {"loss": tot / count, "perplexity": math.exp(tot / count)}


# ------------------------------------------------------------------------------- baselines
BASELINE_MODES = ("head", "full", "none")


def set_trainable(model: nn.Module, mode: str, heads=AUTO_HEADS) -> dict[str, bool]:
    """Set requires_grad for a baseline; returns the previous flags (restore with ``restore_trainable``).

    "head": only modules whose last name is in ``heads`` train (a linear probe on frozen features);
    "full": every parameter trains (full fine-tuning); "none": nothing trains.
    """
    if mode not in BASELINE_MODES:
        raise ConfigError(f"set_trainable mode {mode!r}; choose one of {', '.join(BASELINE_MODES)}")
    if get_adapter(model) is not None:
        raise ConfigError("set_trainable is for baselines without an adapter; call adapter.detach() first")
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    head_names = [n for n, _ in model.named_modules() if n and n.rsplit(".", 1)[-1] in heads]
    if mode == "head" and not head_names:
        raise ConfigError(f"no head module named {' / '.join(heads)} in {type(model).__name__}; "
                          f"pass heads=<the name of the output layer>")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        in_head = any(n.startswith(h + ".") for h in head_names)
        p.requires_grad_(mode == "full" or (mode == "head" and in_head))
    return before


def restore_trainable(model: nn.Module, flags: dict[str, bool]) -> None:
    """Put back the requires_grad flags returned by ``set_trainable``."""
    for n, p in model.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with requires_grad (theta and heads included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; else the lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_memory(dev, sampled: int) -> tuple[int, str]:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    return sampled, "process RSS, max over this run's steps (CPU)"


def fit(model: nn.Module, train, eval_data=None, *, config: TrainConfig | None = None,
        loss_fn=classification_loss, eval_fn=None, callback=None) -> History:
    """Train ``model``'s trainable parameters on ``train``; returns a History.

    ``callback(history, step)`` runs after every step; returning True stops training (live widgets).
    ``eval_fn(model) -> dict`` replaces the default ``evaluate(model, eval_data)``; with a custom
    ``loss_fn`` and no ``eval_fn``, evaluation reports that loss only. A NaN / inf loss stops the run
    (``history.diverged``) before the optimizer step, so the parameters stay finite. AdamW groups and the
    learning-rate schedule come from ``optim`` (the Trainer engine's too). Taught in notebooks 00_quickstart,
    04 and 05.
    """

    cfg = config or TrainConfig()
    cfg.validate()
    dev = pick_device(cfg.device)
    model.to(dev)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, cfg.steps)
    params = [p for grp in opt.param_groups for p in grp["params"]]
    hist = History(config=asdict(cfg), num_trainable=sum(p.numel() for p in params))
    peak_rss = _rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def run_eval(step):
        if eval_data is None and eval_fn is None:
            return
        metrics = eval_fn(model) if eval_fn is not None else evaluate(
            model, eval_data, cfg.eval_batch_size, loss_fn=loss_fn, dev=dev, trim_padding=cfg.trim_padding)
        hist.evals.append({"step": step, **metrics})

    n = n_examples(train)
    order, pos = torch.randperm(n, generator=g), 0
    t0 = time.perf_counter()
    if cfg.eval_at_start:
        run_eval(0)
    model.train()
    bar = tqdm(range(cfg.steps), desc="train", disable=not cfg.progress, leave=False)
    for step in bar:
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx, pos = order[pos: pos + cfg.batch_size], pos + cfg.batch_size
        batch = take(train, idx, dev, cfg.trim_padding)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16 and dev.type == "cuda"):
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss.detach()):
            hist.losses.append(loss.item())
            hist.diverged = hist.stopped_early = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        hist.losses.append(loss.item())
        hist.lrs.append(opt.param_groups[0]["lr"])
        sched.step()
        bar.set_postfix(loss=f"{hist.losses[-1]:.4f}")
        if dev.type != "cuda":
            peak_rss = max(peak_rss, _rss_bytes())
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            run_eval(step + 1)
        if callback is not None and callback(hist, step + 1) and step + 1 < cfg.steps:
            hist.stopped_early = True
            break
    bar.close()
    if not hist.diverged:
        run_eval(len(hist.losses))
    hist.wall_time = time.perf_counter() - t0
    hist.peak_memory_bytes, hist.peak_memory_kind = _peak_memory(dev, peak_rss)
    return hist
