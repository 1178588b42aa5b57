"""The map theta -> Delta W of a peft model (LoRA, DoRA, VeRA, LoHa, ...), checked against peft's own merge.

    pm = peft_map(peft_model)            # PeftMap: .fmap (a lab FlatMap), .d, .D, .layers, .head, .check
    pm.fmap(theta)                       # vec(Delta W) of every adapted weight, float64, differentiable

Delta W is defined as (merged weight - base weight), the weight part only. theta is the concatenation of the
adapter's parameters (also when a loaded model has them frozen), in model.named_parameters order, shared ones
such as VB-LoRA's vector bank once;
other trainable parameters (a classification head via modules_to_save) are the ``head``, reported apart.
The map runs on a float64 copy of the model through ``torch.func.functional_call``:

    add       Delta W = layer.get_delta_weight(a)         LoRA / rsLoRA, AdaLoRA, VeRA, LoKr, VB-LoRA, Uni-LoRA
    loha      (w1a w1b) * (w2a w2b) * scale               LoHa (its own code is a custom autograd.Function that
                                                          torch.func cannot transform, so the formula is derived)
    fourier   Re ifft2(spectrum at indices) * scale       FourierFT (derived: peft's own code runs in float32)
    dora      m / ||W + dW||_row * (W + dW) - W           DoRA (dW = get_delta_weight; the norm is NOT detached
                                                          here: peft detaches it for training, not for merging)
    ia3       W * (l - 1)                                 (IA)^3 (peft has no delta-weight method; bias ignored)
    rotate    W R^T (* s) - W                             OFT (R = get_delta_weight), BOFT (R, s)

Every map is compared with peft's own ``merge`` on a float64 copy at a random theta (``check_against_merge``);
a map that does not reproduce the merge raises UnsupportedMethodError instead of being measured. Tuners
without a derived map raise the same error naming the tuner. Taught in notebooks/08_isometry_audit.ipynb.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import AttachError, UnsupportedMethodError
from .maps import F64, FlatMap

KINDS = {"LORA": "add", "ADALORA": "add", "VERA": "add", "LOKR": "add", "VBLORA": "add", "UNILORA": "add",
         "LOHA": "loha", "FOURIERFT": "fourier", "IA3": "ia3", "OFT": "rotate", "BOFT": "rotate"}
LABELS = {"LORA": "LoRA", "ADALORA": "AdaLoRA", "VERA": "VeRA", "LOKR": "LoKr", "VBLORA": "VB-LoRA",
          "UNILORA": "Uni-LoRA (peft)", "LOHA": "LoHa", "FOURIERFT": "FourierFT", "IA3": "(IA)3", "OFT": "OFT",
          "BOFT": "BOFT"}
MERGE_TOL = {"FOURIERFT": 1e-5}   # relative; peft's FourierFT merge computes in float32 whatever the model dtype
DEFAULT_TOL = 1e-10               # relative, float64


def is_peft_model(model) -> bool:
    """True if ``model`` is a peft PeftModel (without importing peft when it was never loaded)."""
    if "peft" not in sys.modules:
        return False
    from peft import PeftModel
    return isinstance(model, PeftModel)


@dataclass
class PeftMap:
    """theta -> Delta W of one peft adapter, with what it covers and how it was checked."""

    fmap: FlatMap
    method: str                       # "LoRA", "rsLoRA", "DoRA", "VeRA", ...
    tuner: str                        # peft's type ("LORA", ...)
    kind: str                         # add / loha / fourier / dora / ia3 / rotate
    layers: list[str]
    shapes: dict[str, tuple]
    theta_names: list[str]
    head: dict[str, int]              # other trainable parameters (not in theta): name -> numel
    check: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return self.fmap.d

    @property
    def D(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes.values())


def _short(name: str) -> str:
    return name.removeprefix("base_model.model.")


def _transpose(w: torch.Tensor, fifo: bool) -> torch.Tensor:
    return w.T if fifo else w


def _label(tuner: str, config, layers) -> tuple[str, str]:
    if tuner not in KINDS:
        raise UnsupportedMethodError(
            f"audit does not support peft's {tuner} tuner: its map theta -> Delta W is not derived and checked "
            f"against peft's merge here (supported: {', '.join(LABELS[t] for t in KINDS)})")
    if tuner != "LORA":
        if tuner == "LOHA" and any(len(getattr(m, "hada_t1", {})) for _, m in layers):
            raise UnsupportedMethodError("audit does not support LoHa with use_effective_conv2d (Tucker factors)")
        return LABELS[tuner], KINDS[tuner]
    if getattr(config, "lora_bias", False):
        raise UnsupportedMethodError("audit does not support LoRA with lora_bias=True: the bias change is not part "
                                     "of Delta W (weights only); use lora_bias=False")
    for name, m in layers:
        for a, v in getattr(m, "lora_variant", {}).items():
            if type(v).__name__ != "DoraLinearVariant":
                raise UnsupportedMethodError(f"audit does not support the LoRA variant {type(v).__name__} "
                                             f"(layer {_short(name)}); supported: plain LoRA, rsLoRA, DoRA on Linear")
    if getattr(config, "use_dora", False):
        return "DoRA", "dora"
    return ("rsLoRA" if getattr(config, "use_rslora", False) else "LoRA"), "add"


def _delta(kind: str, tuner: str, mod, a: str) -> torch.Tensor:
    """Delta W of one tuner layer for adapter ``a`` (differentiable in the layer's current parameters)."""
    W = mod.get_base_layer().weight
    fifo = bool(getattr(mod, "fan_in_fan_out", False))
    if kind == "add":
        return mod.get_delta_weight(a)
    if kind == "loha":
        w = (mod.hada_w1_a[a] @ mod.hada_w1_b[a]) * (mod.hada_w2_a[a] @ mod.hada_w2_b[a]) * mod.scaling[a]
        return w.reshape(W.shape)
    if kind == "fourier":
        spec, idx = mod.fourierft_spectrum[a], mod.indices[a]
        dense = torch.zeros(mod.out_features, mod.in_features, dtype=spec.dtype).index_put((idx[0], idx[1]), spec)
        return torch.fft.ifft2(dense).real * mod.fourierft_scaling[a]
    if not isinstance(mod.get_base_layer(), nn.Linear):
        raise UnsupportedMethodError(f"audit supports {LABELS.get(tuner, tuner)} only on nn.Linear layers, not "
                                     f"{type(mod.get_base_layer()).__name__}")
    if kind == "ia3":
        return W * (_transpose(mod.ia3_l[a], fifo) - 1)
    if kind == "dora":
        dW = mod.get_delta_weight(a)
        Wt = _transpose(W, fifo) + _transpose(dW, fifo)                  # (out, in)
        m = mod.lora_magnitude_vector[a].weight                          # (out,)
        return _transpose((m / torch.linalg.norm(Wt, dim=1)).unsqueeze(1) * Wt, fifo) - W
    if kind == "rotate":
        R, s = mod.get_delta_weight(a) if tuner == "BOFT" else (mod.get_delta_weight(a), None)
        merged = (R @ W.T).T
        return (merged * s if s is not None else merged) - W
    raise UnsupportedMethodError(f"no Delta W rule for kind {kind!r}")


class _Probe(nn.Module):
    """Wraps the model so that functional_call can run the layers' delta-weight code as one forward."""

    def __init__(self, model: nn.Module, layers: list[str], kind: str, tuner: str, adapter: str):
        super().__init__()
        self.model = model
        self.layers, self.kind, self.tuner, self.adapter = layers, kind, tuner, adapter

    def forward(self) -> dict[str, torch.Tensor]:
        return {name: _delta(self.kind, self.tuner, self.model.get_submodule(name), self.adapter)
                for name in self.layers}


def _tuner_layers(model: nn.Module, adapter: str):
    from peft.tuners.tuners_utils import BaseTunerLayer
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, BaseTunerLayer) and any(adapter in (getattr(mod, attr, None) or {})
                                                   for attr in mod.adapter_layer_names):
            out.append((name, mod))
    return out


def _adapter_params(layers, adapter: str, attrs: str = "adapter_layer_names") -> set[int]:
    ids = set()
    for _, mod in layers:
        for attr in getattr(mod, attrs, ()):
            cont = getattr(mod, attr, None)
            if cont is None or adapter not in cont:
                continue
            obj = cont[adapter]
            for p in ([obj] if isinstance(obj, nn.Parameter) else
                      list(obj.parameters()) if isinstance(obj, nn.Module) else []):
                ids.add(id(p))
    return ids


def peft_map(model: nn.Module, adapter_name: str | None = None, check: bool = True, seed: int = 0) -> PeftMap:
    """Build the float64 map theta -> Delta W of ``model``'s active peft adapter (checked against its merge).

    Taught in notebooks/08_isometry_audit.ipynb, section "1 · One map per method".
    """
    if not is_peft_model(model):
        raise AttachError(f"peft_map needs a peft PeftModel (peft.get_peft_model / PeftModel.from_pretrained), "
                          f"got {type(model).__name__}")
    a = adapter_name or model.active_adapter
    if a not in model.peft_config:
        raise AttachError(f"the model has no peft adapter named {a!r} (it has {sorted(model.peft_config)})")
    config = model.peft_config[a]
    tuner = getattr(config.peft_type, "value", str(config.peft_type))
    work = copy.deepcopy(model).to(F64).eval()
    layers = _tuner_layers(work, a)
    if not layers:
        raise AttachError(f"no layer of the model carries the peft adapter {a!r} ({tuner}); nothing to audit")
    method, kind = _label(tuner, config, layers)
    ids = _adapter_params(layers, a)
    params = dict(work.named_parameters())
    theta_names = [n for n, p in params.items() if id(p) in ids]     # frozen too (from_pretrained freezes them)
    if not theta_names:
        raise AttachError(f"the peft adapter {a!r} ({tuner}) has no parameter: nothing to audit")
    own = ids | _adapter_params(layers, a, "other_param_names")   # e.g. AdaLoRA's ranknum: adapter, not head
    head = {_short(n): p.numel() for n, p in params.items()
            if (p.requires_grad or "modules_to_save" in n) and id(p) not in own}
    shapes = [tuple(params[n].shape) for n in theta_names]
    sizes = [params[n].numel() for n in theta_names]
    for p in work.parameters():      # theta is swapped in by functional_call; nothing else carries a gradient
        p.requires_grad_(False)
    probe = _Probe(work, [n for n, _ in layers], kind, tuner, a)

    def fn(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, sizes)
        out = torch.func.functional_call(probe, {f"model.{n}": t.view(s) for n, t, s in
                                                 zip(theta_names, parts, shapes)}, ())
        return {_short(k): v for k, v in out.items()}

    theta0 = torch.cat([params[n].detach().reshape(-1) for n in theta_names]).clone()
    with torch.no_grad():
        out_shapes = {k: tuple(v.shape) for k, v in fn(theta0).items()}
    pm = PeftMap(FlatMap(fn, theta0.numel(), method, theta0), method, tuner, kind, [_short(n) for n, _ in layers],
                 out_shapes, theta_names, head)
    if check:
        pm.check = check_against_merge(pm, model, a, seed=seed)
    return pm


def check_against_merge(pm: PeftMap, model: nn.Module, adapter: str, seed: int = 0, scale: float = 0.1) -> dict:
    """Compare the map with peft's own merge (float64 copy) at theta0 + scale * N(0, I); raise if they differ.

    Taught in notebooks/08_isometry_audit.ipynb, section "1 · One map per method".
    """
    g = torch.Generator().manual_seed(seed)
    theta = pm.fmap.theta0 + scale * torch.randn(pm.d, generator=g, dtype=F64)
    with torch.no_grad():
        want = pm.fmap(theta)
        ref = copy.deepcopy(model).to(F64).eval()
        params = dict(ref.named_parameters())
        pos = 0
        for n in pm.theta_names:
            p = params[n]
            p.copy_(theta[pos: pos + p.numel()].view(p.shape))
            pos += p.numel()
        layers = _tuner_layers(ref, adapter)
        base = {name: mod.get_base_layer().weight.detach().clone() for name, mod in layers}
        for _, mod in layers:
            mod.merge(adapter_names=[adapter])
        got = torch.cat([(mod.get_base_layer().weight.detach() - base[name]).reshape(-1) for name, mod in layers])
    err = float((want - got).abs().max())
    size = float(got.abs().max())
    tol = MERGE_TOL.get(pm.tuner, DEFAULT_TOL) * max(size, 1e-300)
    out = {"max_abs_error": err, "max_abs_delta": size, "tol": tol, "theta_scale": scale,
           "note": "peft merges FourierFT in float32" if pm.tuner in MERGE_TOL else "float64"}
    if not err <= tol or size == 0.0:
        raise UnsupportedMethodError(
            f"the {pm.method} map (peft {pm.tuner}) does not reproduce peft's own merge: max |error| {err:.3g} "
            f"> {tol:.3g} (max |Delta W| {size:.3g}); audit refuses to measure a map it cannot check")
    return out
