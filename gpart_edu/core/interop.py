"""Bring your own adapter: ``load_peft(path, model)`` turns a peft folder into a gpart_edu Adapter on ``model``.

    adapter = ge.load_peft("my-lora", model)      # peft LoRA / Uni-LoRA, or the official GPart fork's checkpoint
    adapter.delta_weights(); ge.lab.jacobian...    # the whole lab works on it
    adapter.save_peft("back")                      # and back to a peft folder (core.peft_format)

The folder is translated and checked first (``peft_format.plan``); only then is the method attached and theta
and the saved head copied in, so a folder that does not fit leaves the model untouched. Note the argument
order: ``load_peft(path, model)`` like ``load_adapter(path, model)``, whereas peft's
``PeftModel.from_pretrained(model, path)`` takes the model first.
Taught in notebooks/07_bring_your_own_adapter.ipynb (import a peft LoRA; the fork's checkpoints).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import AdapterFileError
from . import lifecycle, peft_format, registry
from .adapter import Adapter, attach


def load_peft(path, model: nn.Module) -> Adapter:
    """Attach the peft adapter saved in folder ``path`` to ``model``; returns the gpart_edu Adapter.

    Reads peft LoRA (r, lora_alpha, use_rslora), peft Uni-LoRA (peft's index assignment) and the official GPart
    fork (materialized / stateless, bias none / gpart_only); heads saved via modules_to_save are copied into the
    model and left trainable. Options gpart_edu cannot reproduce are a ConfigError naming the option. A fork
    checkpoint whose partition has empty groups loads (as the fork runs it) with a warning: those theta entries
    never reach the model. Taught in notebooks/07_bring_your_own_adapter.ipynb.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__} (note the order: "
                        f"load_peft(path, model))")
    folder = peft_format.read_folder(path)
    p = peft_format.plan(folder, model)
    # theta and the head as saved must fit the map and be finite, checked before the model is touched
    lifecycle.check_theta(p.theta, registry.num_params(p.method, p.targets, **p.options), str(path))
    lifecycle.check_head(p.head, str(path))
    adapter = attach(model, p.method, targets=[t.name for t in p.targets], trainable=p.head_modules, **p.options)
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in p.head}
    try:
        if adapter.num_trainable != p.theta.numel():
            raise AdapterFileError(f"{path}: theta has {p.theta.numel()} entries, the {p.method} map on this model "
                                   f"needs {adapter.num_trainable}")
        with torch.no_grad():
            adapter.theta.copy_(p.theta.to(adapter.theta.dtype))
            for n, t in p.head.items():
                params[n].copy_(t.to(params[n].dtype))
    except BaseException:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
        adapter.detach()
        raise
    if p.empty_groups:
        warnings.warn(f"{path}: {p.empty_groups:,} of d={p.options['d']:,} groups of the fork's partition are empty "
                      f"(the fork keeps them): those theta entries never reach the model, and P^T P = I fails on "
                      f"them (gpart-edu verify reports it)", stacklevel=2)
    return adapter
