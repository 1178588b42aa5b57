"""Leave gpart_edu with a plain model: merge_and_unload, and model.save_pretrained while an adapter is attached.

    plain = adapter.merge_and_unload()          # W <- W0 + Delta W, adapter removed, trained head kept
    plain.save_pretrained("out")                # any Hugging Face code loads "out" with from_pretrained

``merge_and_unload`` is peft's name for "bake the update in and give me the model back": the opposite of
``detach()``, which restores the *original* weights. ``model.save_pretrained(path)`` with an adapter attached
and not merged saves the weights the model computes with, W0 + Delta W, merged on the fly into the saved
copy (the model itself is unchanged, and the adapter's theta is not written: it is not a weight of the
plain architecture); disabled (``with adapter.disabled():``) it saves W0, merged it saves the merged weights.
Without this guard Hugging Face's save_pretrained would write W0 plus an unexpected ``gpart_edu_adapter.theta``
key, and the reloaded model would silently lose Delta W.
Taught in notebooks/07_bring_your_own_adapter.ipynb, section "Leave gpart_edu with a plain model".
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from ..errors import AttachError

GUARD_ATTR = "save_pretrained"          # the instance attribute the guard occupies while an adapter is attached


def _adapter_prefix(adapter) -> str:
    """The state-dict prefix of ``adapter`` inside its model ("gpart_edu_adapter.")."""
    for name, module in adapter.model.named_modules():
        if module is adapter:
            return name + "."
    raise AttachError("the adapter is not a submodule of its model any more; attach a new one")


def computed_state_dict(adapter) -> dict[str, torch.Tensor]:
    """The model's state dict as its forward computes: adapter entries dropped, W0 + Delta W where active.

    Only the adapted tensors are new (W0 + Delta W in the weight's dtype); every other entry is the model's own
    tensor. Refuses when an adapted weight is tied to another entry (saving W0 + Delta W under one name and W0
    under the other would be a different model).
    """
    model = adapter.model
    if model is None:
        raise AttachError("cannot build the state dict: this adapter was detached")
    prefix = _adapter_prefix(adapter)
    full = model.state_dict()
    out = {k: v for k, v in full.items() if not k.startswith(prefix)}
    if adapter.merged or not adapter.enabled:
        return out
    with torch.no_grad():
        deltas = adapter.method.delta_weights(adapter.theta.detach())
    for name, dw in deltas.items():
        if name not in out:
            raise AttachError(f"adapted tensor {name} is missing from the model's state dict; cannot save it")
        w = out[name]
        tied = [k for k, v in out.items() if k != name and v.data_ptr() == w.data_ptr() and v.numel()]
        if tied:
            raise AttachError(f"{name} is tied to {tied[0]}: saving W0 + Delta W for one and W0 for the other would "
                              f"change the model; untie the weights before attaching, or save the adapter alone "
                              f"with adapter.save(path)")
        out[name] = w.detach() + dw.to(device=w.device, dtype=w.dtype)
    return out


class SavePretrainedGuard:
    """``model.save_pretrained`` while an adapter is attached: the plain architecture with the computed weights.

    A plain object (not a closure) so that deepcopy / pickle of the model keep working.
    """

    def __init__(self, adapter):
        self.adapter = adapter

    def __call__(self, save_directory, *args, **kwargs):
        model = self.adapter.model
        if model is None:
            raise AttachError("this adapter was detached; call save_pretrained on the model again")
        original = type(model).save_pretrained
        bound = inspect.signature(original).bind(model, save_directory, *args, **kwargs)
        if bound.arguments.get("state_dict") is None:
            bound.arguments["state_dict"] = computed_state_dict(self.adapter)
        return original(*bound.args, **bound.kwargs)


def guard_save_pretrained(model: nn.Module, adapter) -> None:
    """Route ``model.save_pretrained`` through ``SavePretrainedGuard`` (only models that have one: HF models)."""
    if callable(getattr(type(model), GUARD_ATTR, None)):
        model.__dict__[GUARD_ATTR] = SavePretrainedGuard(adapter)


def unguard_save_pretrained(model: nn.Module) -> None:
    """Remove the guard again (detach / merge_and_unload / a failed attach)."""
    if isinstance(model.__dict__.get(GUARD_ATTR), SavePretrainedGuard):
        del model.__dict__[GUARD_ATTR]


def merge_and_unload(adapter) -> nn.Module:
    """Bake Delta W into the base weights, remove the adapter, keep the trained head; return the plain model.

    The result is an ordinary model of its class (its ``save_pretrained`` writes a folder that any
    ``from_pretrained`` reproduces). Refuses, leaving everything as it was, if theta is not finite.
    Taught in notebooks/07_bring_your_own_adapter.ipynb, section "Leave gpart_edu with a plain model".
    """
    if adapter.model is None:
        raise AttachError("cannot merge_and_unload: this adapter was detached; attach a new one")
    if not adapter.merged:
        adapter.merge()
    adapter._merged_theta, adapter.merged = None, False      # keep the merged weights: detach must not unmerge
    return adapter.detach()


def trainable_line(adapter) -> str:
    """peft's ``print_trainable_parameters`` line: trainable (theta + head) / all parameters / percent."""
    model = adapter.model
    params = list(model.parameters()) if model is not None else list(adapter.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return (f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}")
