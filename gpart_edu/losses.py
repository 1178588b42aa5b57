"""Logits, labels, the one cross-entropy and the one evaluator, shared by the lab (landscapes, curvature,
projected step), the fine-tuning wing (``fit``, ``compare``, ``results``) and the widgets.

A batch is a dict of equal-length tensors (Hugging Face inputs plus ``labels``) or a tuple ``(x, y)``.
``classification_loss`` computes the cross-entropy in at least float32: float16 / bfloat16 logits are
upcast, float64 logits stay float64 (so the float64 exactness checks of the lab are not capped at ~1e-8).
``with_tensors(model, {name: tensor})`` is the model with some tensors replaced (``torch.func.functional_call``):
evaluating at another theta never mutates the caller's model.

    evaluate(model, data)                      # {"loss", "accuracy"} of the model as it is
    evaluate(model, data, theta=t)             # ... with the adapter's theta replaced by t (model untouched)
    evaluate(model, loader, loss_fn="model")   # ready batches (a DataLoader), the model's own .loss (HF)

The loss is the example-weighted mean of the batch means, sum_b L_b * n_b / n: with a single batch it is the
model's own forward loss bit for bit (``landscape`` checks its grid centre this way).
Taught in notebooks/03_loss_landscapes.ipynb (the loss in θ-space) and 00_quickstart (evaluation).
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .core.adapter import ADAPTER_ATTR, get_adapter
from .errors import ConfigError

THETA_KEY = ADAPTER_ATTR + ".theta"   # the adapter's theta among model.named_parameters()


def forward_logits(model: nn.Module, batch):
    """Logits of a batch: dict -> model(**inputs).logits (HF; the raw output if it has no .logits), tuple -> model(x).

    Taught in notebooks/03_loss_landscapes.ipynb,
    section "2-D: the same random θ-plane around each trained point, one colour scale".
    """
    if isinstance(batch, dict):
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        return out.logits if hasattr(out, "logits") else out
    return model(batch[0])


def labels(batch) -> torch.Tensor:
    """The targets of a batch: ``batch["labels"]`` or ``batch[1]``."""
    return batch["labels"] if isinstance(batch, dict) else batch[1]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
                  ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy with logits upcast to at least float32 (float64 stays float64); targets equal to
    ``ignore_index`` are skipped (padding, prompt tokens)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.cross_entropy(logits, y, reduction=reduction, ignore_index=ignore_index)


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    """Mean cross-entropy of the model's logits against the batch's labels."""
    return cross_entropy(forward_logits(model, batch), labels(batch))


class with_tensors:  # noqa: N801 -- reads as a function: with_tensors(model, tensors)(inputs)
    """``model`` evaluated with some parameters / buffers replaced by ``tensors`` ({qualified name: tensor}).

    A callable stand-in for the model (``torch.func.functional_call``): the model itself is never modified.
    """

    def __init__(self, model: nn.Module, tensors: dict):
        self.model, self.tensors = model, tensors

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.model, self.tensors, args, kwargs)


class _Bound(nn.Module):
    """``fn(model, *args)`` as a module, so that functional_call swaps tensors for the whole of ``fn``."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


def call_with(model: nn.Module, tensors: dict, fn, *args):
    """Return ``fn(model, *args)`` computed with ``tensors`` ({qualified name: tensor}) in place of the model's own.

    Unlike ``with_tensors`` (a stand-in that only forwards calls), ``fn`` receives the real module (its
    ``.config``, submodules, ...) while the replacement lasts; afterwards the model is bit-for-bit as before.
    Differentiable in ``tensors`` (torch.func.grad / jvp work through it).
    """
    return torch.func.functional_call(_Bound(model, fn), {"model." + k: v for k, v in tensors.items()}, args)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put every module of ``model`` in eval mode (dropout off) inside the block; restore each module's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


# ------------------------------------------------------------------------------------------- data
def n_examples(data) -> int:
    """Return the number of examples of a dict of equal-length tensors or a tuple (x, y); ConfigError otherwise."""
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        sizes = {k: len(v) for k, v in data.items()}
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(v, torch.Tensor) for v in data):
        sizes = {"x": len(data[0]), "y": len(data[1])}
    else:
        raise ConfigError(f"data must be a dict of equal-length tensors (with 'labels') or a tuple (x, y) of "
                          f"tensors, got {type(data).__name__}")
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"data tensors have different lengths {sizes}; every tensor holds one row per example")
    return next(iter(sizes.values()))


def take(data, idx, device, trim: bool = False):
    """Return the batch ``data[idx]`` on ``device`` (idx: index tensor or slice).

    ``trim``: drop the padding columns that every row of the batch masks out (``attention_mask`` == 0, right
    padding): the same result with less work.
    """
    if isinstance(data, dict):
        batch = {k: v[idx] for k, v in data.items()}
        mask = batch.get("attention_mask")
        if trim and mask is not None and mask.dim() == 2:
            used = mask.any(0).nonzero()
            keep = int(used.max()) + 1 if len(used) else 1
            if keep < mask.shape[1]:  # right padding only: columns >= keep are masked for every row
                batch = {k: (v[:, :keep] if v.dim() == 2 and v.shape[1] == mask.shape[1]
                             else v) for k, v in batch.items()}
        return {k: v.to(device) for k, v in batch.items()}
    return tuple(v[idx].to(device) for v in data)


def _eval_order(data) -> torch.Tensor:
    """Evaluation order: by sequence length when there is an attention mask (less padding per batch)."""
    mask = data.get("attention_mask") if isinstance(data, dict) else None
    if mask is not None and mask.dim() == 2:
        return torch.argsort(mask.sum(1), stable=True)
    return torch.arange(n_examples(data))


def _is_table(data) -> bool:
    """A whole data set (dict of tensors / (x, y)) rather than an iterable of ready batches."""
    return isinstance(data, dict) or (isinstance(data, (tuple, list)) and len(data) == 2
                                      and all(isinstance(v, torch.Tensor) for v in data))


def _batches(data, batch_size: int, device, trim_padding: bool):
    """Ready batches on ``device``: a table is cut in length order (trimmed); an iterable is taken as it is."""
    if _is_table(data):
        n = n_examples(data)
        order = _eval_order(data)
        for a in range(0, n, batch_size):
            yield take(data, order[a: a + batch_size], device, trim_padding)
        return
    if isinstance(data, torch.Tensor) or not hasattr(data, "__iter__"):
        raise ConfigError(f"data must be a dict of equal-length tensors (with 'labels'), a tuple (x, y) or an "
                          f"iterable of such batches (a DataLoader), got {type(data).__name__}")
    for batch in data:
        if isinstance(batch, Mapping):            # a dict, or a Hugging Face collator's BatchEncoding
            yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            yield tuple(v.to(device) for v in batch)
        else:
            raise ConfigError(f"a batch must be a dict of tensors or a tuple (x, y), got {type(batch).__name__}; "
                              f"pass the data set itself or a DataLoader with a collator that builds such batches")


def _size(batch) -> int:
    """Examples in a ready batch (the length of its labels, else of its first tensor)."""
    if isinstance(batch, dict):
        return len(batch["labels"] if "labels" in batch else next(iter(batch.values())))
    return len(batch[0])


# ------------------------------------------------------------------------------------- evaluator
def _check_theta(model: nn.Module, theta) -> torch.Tensor:
    adapter = get_adapter(model)
    if adapter is None:
        raise ConfigError("theta= replaces the adapter's theta, but the model has no gpart_edu adapter; attach one "
                          "(ge.attach(model, 'gpart', d=...)) or leave theta=None")
    if adapter.merged or not adapter.enabled:
        raise ConfigError("the adapter is merged or disabled, so theta= would have no effect; call "
                          "adapter.unmerge() (or leave the adapter.disabled() block) first")
    t = torch.as_tensor(theta)
    if t.shape != adapter.theta.shape:
        raise ConfigError(f"theta must have shape {tuple(adapter.theta.shape)} (d={adapter.num_trainable}), got "
                          f"{tuple(t.shape)}")
    return t.detach().to(dtype=adapter.theta.dtype, device=adapter.theta.device)


def _pass(model: nn.Module, batches, loss_fn) -> tuple[list, list, list]:
    """One pass over the batches: per-batch mean losses, sizes and correct counts (tensors: no host sync)."""
    losses, sizes, correct = [], [], []
    for batch in batches:
        sizes.append(_size(batch))
        if loss_fn is None:                           # cross-entropy of the logits, and accuracy
            logits, y = forward_logits(model, batch), labels(batch)
            losses.append(cross_entropy(logits, y))
            correct.append((logits.argmax(-1) == y).sum())
        elif loss_fn == "model":                      # the model's own loss (HF: labels in the batch)
            if not isinstance(batch, dict) or "labels" not in batch:
                raise ConfigError("loss_fn='model' needs dict batches with 'labels' (a Hugging Face model "
                                  "computes its own loss from them); pass loss_fn=None for (x, y) data")
            out = model(**batch)
            losses.append(out.loss)
            if out.logits.dim() == 2 and out.logits.shape[-1] > 1:   # a classification head
                correct.append((out.logits.argmax(-1) == batch["labels"]).sum())
        else:
            losses.append(loss_fn(model, batch))
    return losses, sizes, correct


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 64, *, theta=None, loss_fn=None, device=None,
             trim_padding: bool = True) -> dict:
    """Return {"loss", "accuracy"} of ``model`` over ``data`` (at ``theta`` if given), never changing the model.

    data: a dict of equal-length tensors with "labels" or a tuple (x, y), cut into batches of ``batch_size``
    in order of sequence length when there is an attention mask (less padding; ``trim_padding`` drops the
    columns a whole batch masks out); or an iterable of ready batches (a DataLoader, a list), taken as they are.
    theta: replaces the adapter's theta (``functional_call`` on "gpart_edu_adapter.theta"; the model and its
    theta are untouched). Every module runs in eval mode and gets its own train flag back afterwards.
    loss_fn: None (cross-entropy of the logits, plus accuracy), "model" (the model's own ``.loss`` of a
    Hugging Face model; accuracy when its logits are (batch, classes > 1)), or ``loss_fn(model, batch)`` ->
    mean loss of a batch (loss only). Loss: sum_b L_b * n_b / n over batches b of n_b examples.
    Notebooks: 00_quickstart (train.evaluate, the theta-scale explorer), 03_loss_landscapes (landscape),
    06_full_scale (results.evaluate_model).
    """
    if loss_fn is classification_loss:
        loss_fn = None
    if isinstance(data, Mapping) and not isinstance(data, dict):   # e.g. a tokenizer's BatchEncoding
        data = dict(data)
    if not (loss_fn is None or loss_fn == "model" or callable(loss_fn)):
        raise ConfigError(f"loss_fn must be None (cross-entropy + accuracy), 'model' (the model's own .loss) or "
                          f"a function loss_fn(model, batch) -> mean loss, got {loss_fn!r}")
    if _is_table(data) and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    t = None if theta is None else _check_theta(model, theta)
    device = device or next(model.parameters()).device
    batches = _batches(data, batch_size, device, trim_padding)
    with eval_mode(model):
        if t is None:
            losses, sizes, correct = _pass(model, batches, loss_fn)
        else:
            losses, sizes, correct = call_with(model, {THETA_KEY: t}, _pass, batches, loss_fn)
    n = sum(sizes)
    if n == 0:
        raise ConfigError("evaluation data is empty; pass at least one example")
    losses = [torch.as_tensor(x, device=device).detach() for x in losses]
    if any(x.numel() != 1 for x in losses):
        raise ConfigError(f"loss_fn must return the batch's mean loss (one number), got shape "
                          f"{next(tuple(x.shape) for x in losses if x.numel() != 1)}")
    values = torch.stack([x.reshape(()) for x in losses]).tolist()   # one device -> host copy per evaluation
    out = {"loss": sum(v * (m / n) for v, m in zip(values, sizes))}
    if correct and len(correct) == len(losses):
        out["accuracy"] = int(torch.stack(correct).sum()) / n
    return out
