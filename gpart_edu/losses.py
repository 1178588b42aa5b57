"""Logits, labels and the one cross-entropy, shared by the lab (landscapes, curvature, projected step) and the
fine-tuning wing (``fit``, ``compare``).

A batch is a dict of equal-length tensors (Hugging Face inputs plus ``labels``) or a tuple ``(x, y)``.
``classification_loss`` computes the cross-entropy in at least float32: float16 / bfloat16 logits are
upcast, float64 logits stay float64 (so the float64 exactness checks of the lab are not capped at ~1e-8).
``with_tensors(model, {name: tensor})`` is the model with some tensors replaced (``torch.func.functional_call``):
evaluating at another theta never mutates the caller's model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def forward_logits(model: nn.Module, batch):
    """Logits of a batch: dict -> model(**inputs).logits (HF; the raw output if it has no .logits), tuple -> model(x)."""
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
