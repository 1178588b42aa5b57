"""Attach a method to a model: W_l = W0_l + Delta W_l(theta), theta the only new trainable tensor.

    adapter = attach(model, "gpart", d=4096, targets=["query", "value"])
    adapter.theta, adapter.num_trainable, adapter.delta_weights(theta=None)
    adapter.merge() / unmerge() / detach() / save(path);  load_adapter(path, model)

The adapter is registered as the submodule ``model.gpart_edu_adapter`` (so ``model.to(...)`` moves theta
and the projection state, and ``model.parameters()`` yields theta); the targeted layers keep their names
and parameters, and only their ``forward`` is redirected. ``detach`` undoes all of it.
Taught in notebooks/00_quickstart.ipynb (sections 2, 5 and 6) and 05 (section 4, merge).
"""
from __future__ import annotations

import contextlib
import math
import re

import torch
from torch import nn

from ..errors import AttachError, ConfigError
from . import export, lifecycle, peft_format, registry
from .methods import Method
from .storage import read_adapter_file, write_adapter
from .targets import describe, find_targets

ADAPTER_ATTR = "gpart_edu_adapter"
_PATCH_FLAG = "_gpart_edu_patched"
AUTO_HEADS = ("classifier", "score")  # trainable="auto": HF classification heads


class _LayerForward:
    """The redirected ``forward`` of adapted layer i (a plain object, so deepcopy / pickle keep working)."""

    def __init__(self, adapter, index: int, module: nn.Module):
        self.adapter, self.index, self.module = adapter, index, module

    def __call__(self, x):
        return self.adapter._forward_layer(self.index, self.module, x)


class _MergedGuard(torch.autograd.Function):
    """Identity in the forward of a merged layer; its backward (training while merged) is a clear error."""

    @staticmethod
    def forward(ctx, y, theta):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AttachError("training while the adapter is merged: the forward does not use theta, so no step could "
                          "change it; call adapter.unmerge() before training (merge is for inference)")


class _StateDictCheck:
    """The model's load_state_dict pre-hook: refuse, before any tensor is copied, a state dict whose adapter
    computes another map (other method, config, seed or layers), which would silently change every Delta W."""

    def __init__(self, adapter):
        self.adapter = adapter

    def __call__(self, module, state_dict, prefix, *args):
        key = prefix + ADAPTER_ATTR + ".config_hash"
        if key in state_dict and not torch.equal(state_dict[key].cpu(), self.adapter.config_hash.cpu()):
            raise AttachError(
                f"this state dict was saved from a different adapter than the attached "
                f"{self.adapter.method.name}({self.adapter.method.config()}): its method, config (seed, d, r, ...) "
                f"or layers differ, so its theta would build other weight updates; nothing was loaded: attach "
                f"with the settings it was saved with, or save/load the adapter with adapter.save / load_adapter")


def _remove_state_dict_check(model: nn.Module, adapter) -> None:
    """Drop ``adapter``'s load_state_dict pre-hook from ``model`` (found by value: a deepcopy keeps no handle)."""
    hooks = model._load_state_dict_pre_hooks
    for key, h in list(hooks.items()):
        check = getattr(h, "hook", h)
        if isinstance(check, _StateDictCheck) and check.adapter is adapter:
            del hooks[key]


class Adapter(nn.Module):
    """theta (the one trainable nn.Parameter) + a Method + the redirected layers of one model."""

    def __init__(self, method: Method, theta: torch.Tensor):
        super().__init__()
        self.method = method
        self.theta = nn.Parameter(theta)
        # persistent state checked by load_state_dict: merged flag and the map's identity (method, config, layers)
        self.register_buffer("merged_flag", torch.zeros(1, dtype=torch.uint8))
        self.register_buffer("config_hash", torch.frombuffer(bytearray(lifecycle.config_digest(method)),
                                                             dtype=torch.uint8).clone())
        self.enabled = True
        self._merged_theta = None
        self._layers: list[nn.Module] = []      # the adapted modules (plain list: not re-registered)
        self._frozen: dict[str, bool] = {}       # original requires_grad of every model parameter
        object.__setattr__(self, "_model", None)  # the model (plain attribute: not a registered child)
        self.trainable_names: list[str] = []     # extra (head) parameters left trainable

    # ------------------------------------------------------------------------------- the map
    @property
    def merged(self) -> bool:
        """True while Delta W is added into the base weights (kept in the state dict as ``merged_flag``)."""
        return bool(self.merged_flag.item())

    @merged.setter
    def merged(self, value: bool) -> None:
        self.merged_flag.fill_(int(bool(value)))

    @property
    def num_trainable(self) -> int:
        """Length of theta: the method's trainable parameter count (heads not included)."""
        return self.theta.numel()

    @property
    def targets(self):
        return self.method.targets

    @property
    def D(self) -> int:
        """Number of adapted weights (sum of out*in over the targets)."""
        return sum(t.numel for t in self.method.targets)

    def delta_weights(self, theta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{qualified weight name: Delta W} for theta (default: the adapter's own). Pure, differentiable."""
        if theta is None:
            return self.method.delta_weights(self.theta)
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be a torch.Tensor of shape ({self.num_trainable},), "
                            f"got {type(theta).__name__}")
        if tuple(theta.shape) != (self.num_trainable,):
            raise ConfigError(f"theta must have shape ({self.num_trainable},) for this {self.method.name} "
                              f"adapter, got {tuple(theta.shape)}")
        if not torch.is_floating_point(theta):
            raise TypeError(f"theta must be a floating-point tensor, got {theta.dtype}")
        if theta.device != self.theta.device:
            raise AttachError(f"theta is on {theta.device} but the adapter is on {self.theta.device}; "
                              f"move it with theta.to({str(self.theta.device)!r})")
        return self.method.delta_weights(theta)

    def forward(self, x):
        """Identity. The adapter acts through the redirected layers; this pass-through only keeps
        containers that call every child in turn (nn.Sequential models) working unchanged."""
        return x

    def _forward_layer(self, i: int, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.merged and torch.is_grad_enabled() and self.theta.requires_grad:
            return _MergedGuard.apply(type(module).forward(module, x), self.theta)
        if self.merged or not self.enabled:
            return type(module).forward(module, x)
        if self.theta.device != module.weight.device:
            raise AttachError(f"theta is on {self.theta.device} but layer {self.method.targets[i].name} is on "
                              f"{module.weight.device}; call model.to(device) after attaching (it moves the "
                              f"adapter too) instead of moving single layers")
        return self.method.layer_forward(self.theta, i, module, x)

    @contextlib.contextmanager
    def disabled(self):
        """Run the base model (Delta W ignored) inside the block.

        Not thread-safe: the switch is one flag on the shared model, so another thread using the same model inside
        the block also runs without Delta W. Give each thread its own model copy (copy.deepcopy) instead.
        """
        old, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = old

    # --------------------------------------------------------------------------- merge state
    @property
    def model(self) -> nn.Module | None:
        """The model this adapter is attached to (None once detached)."""
        return self._model

    def _check_attached(self, action: str):
        if self.model is None:
            raise AttachError(f"cannot {action}: this adapter was detached; attach a new one")

    @torch.no_grad()
    def merge(self) -> None:
        """Add Delta W into the base weights (W0 <- W0 + Delta W) for inference; refuses non-finite theta."""
        self._check_attached("merge")
        if self.merged:
            raise AttachError("adapter is already merged; call unmerge() first")
        if not torch.isfinite(self.theta).all():
            bad = int((~torch.isfinite(self.theta)).sum())
            raise AttachError(f"refusing to merge: theta has {bad} non-finite entries (NaN/inf); "
                              f"the weights were left unchanged: fix training (lower lr / clip gradients)")
        snapshot = self.theta.detach().clone()
        deltas = self.method.delta_weights(snapshot)
        params = self._named_target_params()
        for name, dw in deltas.items():
            params[name].add_(dw.to(params[name].dtype))
        self._merged_theta, self.merged = snapshot, True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged Delta W again (exact up to rounding: about 1 ulp of the weights)."""
        self._check_attached("unmerge")
        if not self.merged:
            raise AttachError("adapter is not merged; nothing to unmerge")
        params = self._named_target_params()
        for name, dw in self.method.delta_weights(self._merged_theta).items():
            params[name].sub_(dw.to(params[name].dtype))
        self._merged_theta, self.merged = None, False

    def _named_target_params(self) -> dict[str, nn.Parameter]:
        out = {}
        for t, m in zip(self.method.targets, self._layers):
            out[t.name + ".weight"] = m.weight
            if m.bias is not None:
                out[t.name + ".bias"] = m.bias
        return out

    # ------------------------------------------------------------------------------- detach
    def detach(self) -> nn.Module:
        """Remove the adapter: restore every forward and requires_grad flag; returns the model.

        Without a prior merge the model is restored bit-for-bit. If merged, unmerge runs first.
        """
        self._check_attached("detach")
        if self.merged:
            self.unmerge()
        model = self.model
        for m in self._layers:
            m.__dict__.pop("forward", None)
            m.__dict__.pop(_PATCH_FLAG, None)
        for n, p in model.named_parameters():
            if n in self._frozen:
                p.requires_grad_(self._frozen[n])
        export.unguard_save_pretrained(model)
        _remove_state_dict_check(model, self)
        delattr(model, ADAPTER_ATTR)
        self._layers = []
        object.__setattr__(self, "_model", None)
        return model

    # ------------------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        keys = [prefix + "merged_flag", prefix + "config_hash"]
        old = [k for k in keys if k not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if old:       # a state dict of an older gpart_edu: no flag; weights and theta are taken as they come
            missing_keys[:] = [k for k in missing_keys if k not in old]
        else:         # the loaded weights hold W0 + Delta W(theta) exactly when the loaded flag says merged
            self._merged_theta = self.theta.detach().clone() if self.merged else None

    # -------------------------------------------------------------------------------- save
    def save(self, path):
        """Write theta + the trained head + seed + config + layer fingerprints (about 4 (d + head) bytes + header)."""
        self._check_attached("save")
        params = dict(self.model.named_parameters())
        head = {n: params[n] for n in self.trainable_names if n in params}
        base = {}
        with torch.no_grad():
            deltas = self.method.delta_weights(self._merged_theta) if self.merged else {}
            for t, m in zip(self.method.targets, self._layers):
                w = m.weight
                if self.merged:
                    w = w - deltas[t.name + ".weight"].to(w.dtype)
                base[t.name] = lifecycle.base_fingerprint(w)
        return write_adapter(path, self.method.name, self.method.config(), self.method.targets, self.theta,
                             head=head, base=base)

    # ------------------------------------------------------- leaving gpart_edu; peft's names (notebook 07)
    def merge_and_unload(self) -> nn.Module:
        """Bake Delta W into the weights, remove the adapter, keep the head; return the plain model (peft's name)."""
        return export.merge_and_unload(self)

    def unload(self) -> nn.Module:
        """peft's name for ``detach()``: remove the adapter, restore the original weights; return the model."""
        return self.detach()

    def disable_adapter(self):
        """peft's name for ``disabled()``: ``with adapter.disable_adapter():`` runs the base model."""
        return self.disabled()

    def print_trainable_parameters(self) -> None:
        """Print peft's line: trainable params (theta + head) || all params || trainable%."""
        print(export.trainable_line(self))

    def save_peft(self, path):
        """Write a peft folder (adapter_config.json + adapter_model.safetensors); see core.peft_format."""
        self._check_attached("save_peft")
        return peft_format.save_peft(self, path)

    def summary(self) -> str:
        model = self.model
        model_params = sum(p.numel() for n, p in model.named_parameters()
                           if not n.startswith(ADAPTER_ATTR)) if model is not None else 0
        cfg = ", ".join(f"{k}={v}" for k, v in self.method.config().items())
        return (f"{self.method.name}({cfg}): {len(self.method.targets)} layers, D={self.D:,} adapted weights, "
                f"trainable theta={self.num_trainable:,} ({100 * self.num_trainable / max(model_params, 1):.4f}% "
                f"of {model_params:,} model parameters)")

    def extra_repr(self) -> str:
        return f"method={self.method.name}, num_trainable={self.num_trainable:,}, merged={self.merged}"


def _trainable_params(model, trainable, target_names) -> list[str]:
    if trainable == "auto":
        heads = [n for n, m in model.named_modules()
                 if n and n.rsplit(".", 1)[-1] in AUTO_HEADS and n not in target_names]
    else:
        wanted = [trainable] if isinstance(trainable, str) else list(trainable)
        heads = [n for n, _ in model.named_modules() if n and any(n == s or n.endswith("." + s) for s in wanted)]
        missing = [s for s in wanted if not any(h == s or h.endswith("." + s) for h in heads)]
        if missing:
            raise ConfigError(f"trainable={missing} matched no module; pass existing module names, 'auto' or ()")
    names = []
    for h in heads:
        prefix = h + "."
        names += [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    return names


def _theta_dtype(weight_dtype: torch.dtype, theta_dtype) -> torch.dtype:
    """theta's dtype: ``theta_dtype`` if given; else float64 on float64 models and float32 on every other dtype
    (a bf16 / fp16 theta would round AdamW's small steps away)."""
    if theta_dtype is not None:
        if not isinstance(theta_dtype, torch.dtype) or not theta_dtype.is_floating_point:
            raise ConfigError(f"theta_dtype must be a floating torch.dtype such as torch.float32, got {theta_dtype!r}")
        return theta_dtype
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


def attach(model: nn.Module, method: str, *, targets="all-linear", trainable="auto", theta_dtype=None,
           **config) -> Adapter:
    """Attach ``method`` ("gpart" | "unilora" | "lora") to ``model``'s target layers; returns the Adapter.

    All base parameters are frozen except those of ``trainable`` modules ("auto": HF classification heads
    named classifier/score). theta lives on the first target's device, in float32 (float64 on a float64 model;
    ``theta_dtype`` overrides) and is cast to the weights' dtype in the forward. Weights tied to another
    parameter (GPT-2's lm_head and wte) are refused. If any check fails the model is left untouched.
    Taught in notebooks/00_quickstart.ipynb, section "2 · Attach GPart to the query and value projections".
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    name, options = registry.resolve(method, **config)
    existing = getattr(model, ADAPTER_ATTR, None)
    if existing is not None or any(getattr(m, _PATCH_FLAG, False) for m in model.modules()):
        raise AttachError(
            "model already has a gpart_edu adapter attached"
            + (f" ({existing.method.name})" if existing is not None else " (on a submodule)")
            + "; call adapter.detach() first, or attach to a fresh copy of the model")
    found = find_targets(model, targets)
    lifecycle.check_materialised(found)
    ties = lifecycle.shared_weights(model, found, include_bias=bool(options.get("include_bias")))
    if ties:
        raise AttachError(f"{'; '.join(ties[:3])} (shared weights): Delta W would be added to one tensor that both "
                          f"names use, changing the other layer too and counting twice on merge; leave the tied "
                          f"layer out of targets, or untie it first (e.g. model.config.tie_word_embeddings=False "
                          f"and give it its own copy: layer.weight = nn.Parameter(layer.weight.detach().clone()))")
    tlist = [describe(n, m) for n, m in found]
    meth = registry.build(name, tlist, **options)
    head_params = _trainable_params(model, trainable, {n for n, _ in found})
    ref = found[0][1].weight
    theta = meth.init_theta(dtype=_theta_dtype(ref.dtype, theta_dtype), device=ref.device)
    if not torch.is_floating_point(theta) or not math.isfinite(float(theta.abs().sum())):
        raise ConfigError("initial theta is not finite; check init options")
    meth = meth.to(ref.device)
    adapter = Adapter(meth, theta)

    # ---- mutate (nothing above touched the model); roll back on any failure
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    handle = None
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in head_params)
        model.add_module(ADAPTER_ATTR, adapter)
        object.__setattr__(adapter, "_model", model)
        adapter._frozen, adapter.trainable_names = frozen, head_params
        for i, (_, m) in enumerate(found):
            m.forward = _LayerForward(adapter, i, m)
            setattr(m, _PATCH_FLAG, True)
            adapter._layers.append(m)
        export.guard_save_pretrained(model, adapter)
        handle = model.register_load_state_dict_pre_hook(_StateDictCheck(adapter))
    except BaseException:
        if handle is not None:
            _remove_state_dict_check(model, adapter)
        export.unguard_save_pretrained(model)
        for _, m in found:
            m.__dict__.pop("forward", None)
            m.__dict__.pop(_PATCH_FLAG, None)
        if ADAPTER_ATTR in model._modules:
            del model._modules[ADAPTER_ATTR]
        for n, p in model.named_parameters():
            p.requires_grad_(frozen[n])
        raise
    return adapter


def get_adapter(model: nn.Module) -> Adapter | None:
    """The adapter attached to ``model``, or None.

    Taught in notebooks/00_quickstart.ipynb, section "2 · Attach GPart to the query and value projections".
    """
    return getattr(model, ADAPTER_ATTR, None)


def load_adapter(path, model: nn.Module, method: str | None = None, trainable="auto", *,
                 base_mismatch: str = "error", head: bool = True, theta_dtype=None) -> Adapter:
    """Attach the adapter saved at ``path`` to ``model`` (same base model, same layers); load theta and the head.

    The whole file is validated and matched to ``model`` first (exact layer names and shapes, the fingerprints of
    the pretrained weights, the head's tensors): a file that does not fit raises and leaves the model untouched.
    ``base_mismatch``: "error" (default), "warn" or "ignore" when the base weights differ from those it was
    trained on. Parameters saved as the head are restored and left trainable (``trainable`` applies to files
    without a head, or with ``head=False``, which loads theta alone, e.g. onto the bare base model).
    Taught in notebooks/00_quickstart.ipynb, section "6 · Reload into a fresh copy of the pretrained model".
    """
    if base_mismatch not in ("error", "warn", "ignore"):
        raise ConfigError(f"base_mismatch={base_mismatch!r}; choose 'error', 'warn' or 'ignore'")
    f = read_adapter_file(path)
    if method is not None and registry.canonical(method) != f.method:
        raise ConfigError(f"{path} holds a {f.method!r} adapter, not {registry.canonical(method)!r}; "
                          f"call load_adapter(path, model) or method={f.method!r}")
    lifecycle.check_fits(path, f, model, base_mismatch, head)
    saved_head = f.head if head else {}
    exact = re.compile("|".join(re.escape(t.name) for t in f.targets))      # exact names, never suffixes
    adapter = attach(model, f.method, targets=exact, trainable=() if saved_head else trainable,
                     theta_dtype=theta_dtype, **f.config)
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in saved_head}
    try:
        with torch.no_grad():
            adapter.theta.copy_(f.theta.to(adapter.theta.dtype))
            for n, t in saved_head.items():
                params[n].copy_(t.to(params[n].dtype))
                params[n].requires_grad_(True)
        adapter.trainable_names = sorted(set(adapter.trainable_names) | set(saved_head))
    except BaseException:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
        adapter.detach()
        raise
    return adapter
