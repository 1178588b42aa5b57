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

import torch
from torch import nn

from ..errors import AttachError, ConfigError
from . import export, peft_format, registry
from .methods import Method
from .storage import read_adapter, write_adapter
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


class Adapter(nn.Module):
    """theta (the one trainable nn.Parameter) + a Method + the redirected layers of one model."""

    def __init__(self, method: Method, theta: torch.Tensor):
        super().__init__()
        self.method = method
        self.theta = nn.Parameter(theta)
        self.merged = False
        self.enabled = True
        self._merged_theta = None
        self._layers: list[nn.Module] = []      # the adapted modules (plain list: not re-registered)
        self._frozen: dict[str, bool] = {}       # original requires_grad of every model parameter
        object.__setattr__(self, "_model", None)  # the model (plain attribute: not a registered child)
        self.trainable_names: list[str] = []     # extra (head) parameters left trainable

    # ------------------------------------------------------------------------------- the map
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
        if self.merged or not self.enabled:
            return type(module).forward(module, x)
        if self.theta.device != module.weight.device:
            raise AttachError(f"theta is on {self.theta.device} but layer {self.method.targets[i].name} is on "
                              f"{module.weight.device}; call model.to(device) after attaching (it moves the "
                              f"adapter too) instead of moving single layers")
        return self.method.layer_forward(self.theta, i, module, x)

    @contextlib.contextmanager
    def disabled(self):
        """Run the base model (Delta W ignored) inside the block."""
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
        delattr(model, ADAPTER_ATTR)
        self._layers = []
        object.__setattr__(self, "_model", None)
        return model

    # -------------------------------------------------------------------------------- save
    def save(self, path):
        """Write theta + seed + config + target fingerprint (about 4*d bytes plus a small header)."""
        self._check_attached("save")
        return write_adapter(path, self.method.name, self.method.config(), self.method.targets, self.theta)

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
    elif isinstance(trainable, str):
        heads = [n for n, _ in model.named_modules() if n == trainable or n.endswith("." + trainable)]
    else:
        heads = [n for n, _ in model.named_modules() if n and any(n == s or n.endswith("." + s)
                                                                   for s in trainable)]
        missing = [s for s in trainable if not any(h == s or h.endswith("." + s) for h in heads)]
        if missing:
            raise ConfigError(f"trainable={missing} matched no module; pass existing module names or ()")
    names = []
    for h in heads:
        prefix = h + "."
        names += [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    return names


def attach(model: nn.Module, method: str, *, targets="all-linear", trainable="auto", **config) -> Adapter:
    """Attach ``method`` ("gpart" | "unilora" | "lora") to ``model``'s target layers; returns the Adapter.

    All base parameters are frozen except those of ``trainable`` modules ("auto": HF classification heads
    named classifier/score). theta is created with the dtype/device of the first target's weight. If any
    check fails the model is left untouched.
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
    tlist = [describe(n, m) for n, m in found]
    meth = registry.build(name, tlist, **options)
    head_params = _trainable_params(model, trainable, {n for n, _ in found})
    ref = found[0][1].weight
    theta = meth.init_theta(dtype=ref.dtype, device=ref.device)
    if not torch.is_floating_point(theta) or not math.isfinite(float(theta.abs().sum())):
        raise ConfigError("initial theta is not finite; check init options")
    meth = meth.to(ref.device)
    adapter = Adapter(meth, theta)

    # ---- mutate (nothing above touched the model); roll back on any failure
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
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
    except BaseException:
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


def load_adapter(path, model: nn.Module, method: str | None = None, trainable="auto") -> Adapter:
    """Attach the adapter saved at ``path`` to ``model`` (same base model, same targets) and load theta.

    Taught in notebooks/00_quickstart.ipynb, section "6 · Reload into a fresh copy of the pretrained model".
    """
    saved_method, config, saved_targets, theta = read_adapter(path)
    if method is not None and registry.canonical(method) != saved_method:
        raise ConfigError(f"{path} holds a {saved_method!r} adapter, not {registry.canonical(method)!r}; "
                          f"call load_adapter(path, model) or method={saved_method!r}")
    names = [t.name for t in saved_targets]
    have = dict(model.named_modules())
    missing = [n for n in names if n not in have]
    if missing:
        raise AttachError(f"{path} was saved for a model with layers {missing[:3]}"
                          f"{' ...' if len(missing) > 3 else ''} which this model lacks; load it onto the "
                          f"base model it was trained on")
    found = [describe(n, have[n]) if n in have else None for n in names]
    diff = [f"{s.name}: saved {s.weight_shape}, model {f.weight_shape if f else None}"
            for s, f in zip(saved_targets, found) if f != s]
    if diff:
        raise AttachError(f"{path} does not match this model's layers ({len(diff)} differ): "
                          f"{'; '.join(diff[:3])}; load it onto the base model it was trained on")
    adapter = attach(model, saved_method, targets=names, trainable=trainable, **config)
    with torch.no_grad():
        adapter.theta.copy_(theta.to(adapter.theta.dtype))
    return adapter
