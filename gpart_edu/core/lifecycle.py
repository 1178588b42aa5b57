"""Checks of the adapter's life cycle: what a file, a state dict or a model must satisfy before anything changes.

    base_fingerprint(W)            three float64 numbers that tell one set of pretrained weights from another
    check_targets(raw, where), expected_theta_len(method, config, targets, where)
                                   types and bounds of a file's header and theta's length, before allocating
    check_theta(theta, n, where)   1-D, floating, length n, finite
    shared_weights(model, found)   target weights that are tied to (the same tensor as) another parameter
    config_digest(method)          sha256 of (method, config, target list): the adapter's identity
    check_fits(path, f, model, ...)  an adapter file fits a model: exact names, Linear there, shapes, base, head

Every check raises (or returns what is wrong) before the model is touched, so that a refused load, attach or
state-dict round trip leaves nothing half-applied. Taught in notebooks/00_quickstart.ipynb, section 6 (reload).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import astuple

import torch
from torch import nn

from ..errors import AdapterFileError, AttachError
from .projections import ASSIGNMENTS, COMPUTED
from .targets import describe, is_adaptable

MAX_LAYER_SIDE = 1 << 24        # in / out features a header may claim (16.7 M: far beyond any real layer)
MAX_TARGETS = 1 << 16           # layers a header may list
MAX_ADAPTED = 1 << 36           # total adapted weights D a header may claim (6.9e10: a 70B model, every linear)
BASE_RTOL = 1e-2                # base fingerprints agree within 1 % of the layer's rms (bf16 vs float32 copies)


# ------------------------------------------------------------------------------------ base weights
@torch.no_grad()
def base_fingerprint(weight: torch.Tensor) -> list[float]:
    """Return [rms, sum / sqrt(n), alternating sum / sqrt(n)] of ``weight`` in float64.

    Math: for other pretrained weights each number moves by O(rms); rounding the same weights to bf16 moves them
    by about 2e-3 rms. Read in float64 (``sum(dtype=...)``), on the weight's device.
    """
    w = weight.detach().reshape(-1)
    n = w.numel()
    root = math.sqrt(n)
    sq = w.double().square().sum() if w.dtype != torch.float64 else w.square().sum()
    total = w.sum(dtype=torch.float64)
    alt = w[0::2].sum(dtype=torch.float64) - w[1::2].sum(dtype=torch.float64)
    return [math.sqrt(float(sq) / n), float(total) / root, float(alt) / root]


def base_differs(saved: list[float], now: list[float], rtol: float = BASE_RTOL) -> bool:
    """True if two base fingerprints belong to different weights (beyond rounding of one set)."""
    scale = max(abs(saved[0]), abs(now[0]), 1e-30)
    return any(abs(a - b) > rtol * scale for a, b in zip(saved, now))


# --------------------------------------------------------------------------------------- headers
def _int(value, name, low, high, where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AdapterFileError(f"{where}: header field {name}={value!r} must be an integer in [{low:,}, {high:,}]; "
                               f"the file was not written by gpart_edu or was edited: re-save the adapter")
    return value


def _real(value, name, where, positive=True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise AdapterFileError(f"{where}: header field {name}={value!r} must be a finite number"
                               f"{' > 0' if positive else ''}; re-save the adapter")
    return float(value)


def check_targets(raw, where: str) -> list[tuple]:
    """Validate the header's target list [[name, kind, in, out, has_bias], ...]; returns it as tuples."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TARGETS:
        raise AdapterFileError(f"{where}: header 'targets' must be a list of 1..{MAX_TARGETS:,} layers; "
                               f"re-save the adapter")
    out, seen = [], set()
    for row in raw:
        if not isinstance(row, list) or len(row) != 5:
            raise AdapterFileError(f"{where}: header target {row!r} is not [name, kind, in, out, has_bias]")
        name, kind, n_in, n_out, bias = row
        if not isinstance(name, str) or not name or name in seen or kind not in ("linear", "conv1d") \
                or not isinstance(bias, bool):
            raise AdapterFileError(f"{where}: header target {row!r} is malformed (name, kind linear/conv1d, bias)")
        seen.add(name)
        out.append((name, kind, _int(n_in, "in_features", 1, MAX_LAYER_SIDE, where),
                    _int(n_out, "out_features", 1, MAX_LAYER_SIDE, where), bias))
    D = sum(r[2] * r[3] for r in out)
    if D > MAX_ADAPTED:
        raise AdapterFileError(f"{where}: the header claims D={D:,} adapted weights (limit {MAX_ADAPTED:,}); "
                               f"refusing to build a partition that large from a file")
    return out


def expected_theta_len(method: str, config: dict, targets: list[tuple], where: str) -> int:
    """Check ``config``'s types and bounds for ``method`` on ``targets``; return theta's length (no allocation)."""
    if not isinstance(config, dict):
        raise AdapterFileError(f"{where}: header 'config' must be a JSON object, got {type(config).__name__}")
    known = {"gpart": {"d", "seed", "assignment", "include_bias", "allow_empty"},
             "unilora": {"d", "r", "seed", "init_scale", "assignment"}, "lora": {"r", "alpha", "seed"}}
    if method not in known:
        raise AdapterFileError(f"{where}: unknown method {method!r} in the header (gpart, unilora, lora)")
    extra = sorted(set(config) - known[method])
    if extra:
        raise AdapterFileError(f"{where}: header config has unknown keys {extra} for {method}")
    if "seed" in config:
        _int(config["seed"], "seed", -(1 << 63), (1 << 64) - 1, where)
    if "assignment" in config and config["assignment"] not in ASSIGNMENTS:
        raise AdapterFileError(f"{where}: header assignment={config['assignment']!r}; one of {ASSIGNMENTS}")
    for flag in ("include_bias", "allow_empty"):
        if flag in config and not isinstance(config[flag], bool):
            raise AdapterFileError(f"{where}: header {flag}={config[flag]!r} must be true or false")
    if "alpha" in config:
        _real(config["alpha"], "alpha", where)
    if "init_scale" in config:
        _real(config["init_scale"], "init_scale", where)
    r = None
    if method in ("unilora", "lora"):
        r = _int(config.get("r"), "r", 1, min(min(t[2], t[3]) for t in targets), where)   # r <= min(in, out)
    if method == "lora":
        return r * sum(t[2] + t[3] for t in targets)
    D = (sum(t[2] * t[3] + (t[3] if config.get("include_bias") and t[4] else 0) for t in targets)
         if method == "gpart" else r * sum(t[2] + t[3] for t in targets))
    d = _int(config.get("d"), "d", 1, D, where)
    if config.get("assignment", "balanced") not in COMPUTED:
        need, have = 4 * D, _physical_memory()
        if have and need > have:
            raise AdapterFileError(f"{where}: its partition would need {need / 2**30:.1f} GiB of group ids, more "
                                   f"than this machine's {have / 2**30:.1f} GiB")
    return d


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_theta(theta, n: int, where: str) -> None:
    """theta must be a 1-D floating tensor of length ``n`` with finite entries."""
    if not isinstance(theta, torch.Tensor) or theta.dim() != 1 or not torch.is_floating_point(theta):
        raise AdapterFileError(f"{where}: theta must be a 1-D floating-point tensor, got "
                               f"{getattr(theta, 'dtype', type(theta).__name__)} of shape "
                               f"{tuple(getattr(theta, 'shape', ()))}")
    if theta.numel() != n:
        raise AdapterFileError(f"{where}: theta has {theta.numel():,} entries but its header's map needs {n:,}; "
                               f"the file is damaged or hand-made: re-save the adapter")
    bad = int((~torch.isfinite(theta)).sum())
    if bad:
        raise AdapterFileError(f"{where}: theta has {bad:,} non-finite entries (NaN/inf); every forward would be "
                               f"NaN: re-train or re-save a finite adapter")


def check_head(head: dict, where: str) -> None:
    """Saved head tensors must be floating and finite."""
    for name, t in head.items():
        if not torch.is_floating_point(t) or not torch.isfinite(t).all():
            raise AdapterFileError(f"{where}: saved head tensor {name} is not a finite float tensor; re-save")


# ------------------------------------------------------------------------------------ identity
def config_digest(method) -> bytes:
    """sha256 of the method's name, config and target list: two adapters with equal digests compute the same map."""
    text = json.dumps([method.name, method.config(), [list(astuple(t)) for t in method.targets]], sort_keys=True)
    return hashlib.sha256(text.encode()).digest()


# ------------------------------------------------------------------------------------- models
def shared_weights(model: nn.Module, found: list[tuple[str, nn.Module]], include_bias: bool = False) -> list[str]:
    """Return 'a is tied to b' for each target weight that is the same tensor as another parameter of ``model``.

    Merging adds Delta W into the storage once per name, and the other name's layer changes with it.
    """
    owners: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(p.data_ptr() if p.numel() else id(p), []).append(n)
    out = []
    for name, m in found:
        for pname in ("weight", "bias") if include_bias else ("weight",):
            p = getattr(m, pname, None)
            if p is None:
                continue
            full = f"{name}.{pname}"
            others = [o for o in owners.get(p.data_ptr() if p.numel() else id(p), []) if o != full]
            if others:
                out.append(f"{full} is tied to {others[0]}")
    return sorted(set(out))


def check_materialised(found: list[tuple[str, nn.Module]]) -> None:
    """Refuse layers whose weights live on the meta device (no numbers to adapt yet)."""
    meta = [n for n, m in found if m.weight.is_meta]
    if meta:
        raise AttachError(f"layers {meta[:3]} have weights on the meta device (created empty, e.g. by "
                          f"init_empty_weights or device_map); load the real weights (model.to_empty(...) and "
                          f"load_state_dict, or from_pretrained without meta) before attaching")


def check_fits(path, f, model: nn.Module, base_mismatch: str, head: bool) -> None:
    """Raise unless file ``f`` fits ``model``: exact layer names, Linear / Conv1D there, shapes, base weights, head."""
    have = dict(model.named_modules())
    missing = [t.name for t in f.targets if t.name not in have]
    if missing:
        raise AttachError(f"{path} was saved for a model with layers {missing[:3]}"
                          f"{' ...' if len(missing) > 3 else ''} which this model lacks; load it onto the "
                          f"base model it was trained on")
    order = [n for n, _ in model.named_modules() if n in {t.name for t in f.targets}]
    if order != [t.name for t in f.targets]:
        raise AttachError(f"{path}: this model orders the adapted layers differently ({order[:3]} ...), so the "
                          f"partition would map theta to other weights; load it onto the model it was trained on")
    wrong = [f"{t.name} ({type(have[t.name]).__name__})" for t in f.targets if not is_adaptable(have[t.name])]
    if wrong:
        raise AttachError(f"{path}: this model's modules {', '.join(wrong[:3])} are not nn.Linear / Conv1D layers "
                          f"where the file has adapted layers; load it onto the architecture it was trained on")
    diff = [f"{s.name}: saved {s.weight_shape}, model {describe(s.name, have[s.name]).weight_shape}"
            for s in f.targets if describe(s.name, have[s.name]) != s]
    if diff:
        raise AttachError(f"{path} does not match this model's layers ({len(diff)} differ): "
                          f"{'; '.join(diff[:3])}; load it onto the base model it was trained on")
    if f.base and base_mismatch != "ignore":
        off = [n for n, fp in f.base.items() if n in have
               and base_differs(fp, base_fingerprint(have[n].weight))]
        if off:
            msg = (f"{path} was trained on other base weights than this model's in {len(off)} of "
                   f"{len(f.targets)} layers ({', '.join(off[:3])}{' ...' if len(off) > 3 else ''}): the same "
                   f"theta gives other results on other pretrained weights")
            if base_mismatch == "error":
                raise AdapterFileError(msg + "; load it onto the model it was trained on, or pass "
                                             "base_mismatch='warn' to load it anyway")
            warnings.warn(msg, stacklevel=4)
    params = dict(model.named_parameters())
    bad = [n for n, t in f.head.items() if n not in params or tuple(params[n].shape) != tuple(t.shape)]
    if bad and head:
        raise AttachError(f"{path} holds head tensors {bad[:3]} that this model lacks or shapes differently "
                          f"(another number of labels?); load it onto the model it was trained on, or pass "
                          f"head=False to load theta alone")
