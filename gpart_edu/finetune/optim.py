"""What trains and what it costs: the trainable tensors of a model, and the bytes data parallelism all-reduces.

Shared by the notebook loop (``train.fit``), the Trainer engine and its checkpoints (``hf_trainer``), and the
results writer. Taught in notebooks/06_full_scale.ipynb (communication cost).
"""
from __future__ import annotations

import torch


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
