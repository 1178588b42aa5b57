"""The isometry audit of any PEFT method: how the map theta -> Delta W stretches distances, measured.

    from gpart_edu.lab.audit import audit
    report = audit(peft_model)           # or a model with a gpart_edu adapter (ge.attach / ge.load_peft)
    report.d, report.D, report.singular_values, report.condition_number, report.null_dim
    report.distance_ratios, report.homogeneity, report.points, report.to_dict()

Measured at the current theta and at random theta of chosen norms (one fixed random direction u, theta = r u):
    singular values of J = d vec(Delta W) / d theta: all of them (dense, jacfwd + svdvals) when D x d fits,
        else the certified extremes of the matrix-free solver (``jacobian.singular_values``); values it could not
        certify are not reported (``spectrum_converged`` says what is certified);
    null_dim: singular values <= the method's resolution (plus d - D when d > D), a lower bound when only the
        bottom-k are known; condition number sigma_max / sigma_min (inf with a null direction);
    distance ratios ||Delta W(x) - Delta W(y)|| / ||x - y|| over random pairs (around the current theta:
        x = theta + rho u, y = theta + rho v, ||u|| = ||v|| = 1; at norm r: ||x|| = ||y|| = r);
    homogeneity degree k: Delta W(t u) = t^k Delta W(u) for every chosen norm t (None if no k fits), and the
        log-log slope of ||Delta W(t u)|| against t; whether Delta W(0) = 0.
Effective Delta W = merged weight - base weight; peft maps are checked against peft's merge first (peft_maps).
Taught in notebooks/08_isometry_audit.ipynb.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..assets import _quiet_transformers, resolve_model
from ..core import peft_format
from ..core.adapter import Adapter, attach, get_adapter, load_adapter
from ..core.storage import read_adapter_file
from ..errors import AttachError, ConfigError
from . import jacobian, peft_maps
from .geometry import distance_ratios
from .maps import F64, FlatMap, as_map

HOMOGENEITY_RTOL = 1e-9


@dataclass
class AuditReport:
    """What the audit measured; ``to_dict()`` is JSON-serialisable (inf written as the string "inf")."""

    method: str
    source: str                        # "peft <TUNER>" or "gpart_edu"
    layers: list[str]
    d: int
    D: int
    head: dict[str, int]
    theta_norm: float
    singular_values: np.ndarray        # at the current theta, descending (all when dense)
    spectrum_method: str               # "dense" or "lanczos"
    spectrum_converged: dict
    null_dim: int | None
    null_dim_exact: bool
    condition_number: float | None
    resolution: float
    distance_ratios: np.ndarray        # around the current theta
    pair_radius: float
    homogeneity: dict
    delta_at_zero: float               # ||Delta W(0)||
    zero_at_zero: bool
    points: list[dict] = field(default_factory=list)      # one per chosen norm
    merge_check: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def sigma_max(self) -> float | None:
        return float(self.singular_values[0]) if len(self.singular_values) else None

    @property
    def sigma_min(self) -> float | None:
        if self.spectrum_method == "dense" or self.spectrum_converged.get("bottom_count", 0):
            return float(self.singular_values[-1]) if len(self.singular_values) else None
        return None

    @property
    def head_params(self) -> int:
        return sum(self.head.values())

    def row(self) -> dict:
        """One row of the methods table."""
        r = self.distance_ratios
        return {"method": self.method, "d": self.d, "D": self.D, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "cond": self.condition_number, "null_dim": self.null_dim,
                "ratio_mean": float(r.mean()), "ratio_std": float(r.std()), "degree": self.homogeneity["degree"],
                "zero_at_zero": self.zero_at_zero}

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out.update(sigma_min=self.sigma_min, sigma_max=self.sigma_max, head_params=self.head_params)
        return _jsonable(out)

    def __str__(self) -> str:
        fmt = lambda x: "n/a" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))  # noqa: E731
        r = self.distance_ratios
        lines = [f"audit of {self.method} ({self.source}): d = {self.d:,} trainable adapter parameters, "
                 f"D = {self.D:,} adapted weights in {len(self.layers)} layers; head {self.head_params:,} "
                 f"parameters (not in theta)",
                 f"  merge check: max |map - merge| = {self.merge_check.get('max_abs_error', float('nan')):.3g} "
                 f"(tol {self.merge_check.get('tol', float('nan')):.3g}, {self.merge_check.get('note', '')})",
                 f"  at the current theta (||theta|| = {self.theta_norm:.4g}), {self.spectrum_method} spectrum: "
                 f"sigma in [{fmt(self.sigma_min)}, {fmt(self.sigma_max)}], cond {fmt(self.condition_number)}, "
                 f"null directions {fmt(self.null_dim)}{'' if self.null_dim_exact else ' (at least)'}",
                 f"  distance ratios (radius {self.pair_radius:g}): mean {r.mean():.6g}, std {r.std():.3g}, "
                 f"range [{r.min():.6g}, {r.max():.6g}]",
                 f"  homogeneity degree {fmt(self.homogeneity['degree'])} (log-log slope "
                 f"{self.homogeneity['slope']:.4g}); Delta W(0) = 0: {self.zero_at_zero} "
                 f"(||Delta W(0)|| = {self.delta_at_zero:.3g})"]
        for p in self.points:
            lines.append(f"  at ||theta|| = {p['norm']:g}: sigma in [{fmt(p['sigma_min'])}, {fmt(p['sigma_max'])}], "
                         f"cond {fmt(p['cond'])}, null {fmt(p['null_dim'])}, ratios {p['ratio_mean']:.6g} "
                         f"+- {p['ratio_std']:.3g}")
        return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(float(v)) for v in x.ravel()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")
    if x is None or isinstance(x, str):
        return x
    return str(x)


# ------------------------------------------------------------------------------------------- maps
@dataclass
class _Target:
    fmap: FlatMap
    method: str
    source: str
    layers: list[str]
    D: int
    head: dict[str, int]
    merge_check: dict


def _gpart_target(model: nn.Module, adapter: Adapter) -> _Target:
    if adapter.merged:
        raise AttachError("audit needs an unmerged gpart_edu adapter; call adapter.unmerge() first")
    f = as_map(adapter)
    params = dict(model.named_parameters())
    head = {n: params[n].numel() for n in adapter.trainable_names if n in params}
    check = _check_gpart_merge(model, f)
    return _Target(f, adapter.method.name, "gpart_edu", [t.name for t in adapter.targets], adapter.D, head, check)


def _check_gpart_merge(model: nn.Module, f: FlatMap, seed: int = 0) -> dict:
    """Compare the map with the adapter's own merge (merged - base weights) on a float64 copy."""
    g = torch.Generator().manual_seed(seed)
    theta = f.point() + 0.1 * torch.randn(f.d, generator=g, dtype=F64)
    with torch.no_grad():
        want = f(theta)
        ref = copy.deepcopy(model).to(F64)
        ad = get_adapter(ref)
        ad.theta.copy_(theta)
        names = list(ad.delta_weights().keys())
        params = dict(ref.named_parameters())
        base = {n: params[n].detach().clone() for n in names}
        ad.merge()
        got = torch.cat([(params[n].detach() - base[n]).reshape(-1) for n in names])
    err, size = float((want - got).abs().max()), float(got.abs().max())
    tol = peft_maps.DEFAULT_TOL * max(size, 1e-300)
    if not err <= tol or size == 0.0:
        raise ConfigError(f"the gpart_edu map does not reproduce adapter.merge(): max |error| {err:.3g} > {tol:.3g}")
    return {"max_abs_error": err, "max_abs_delta": size, "tol": tol, "theta_scale": 0.1, "note": "float64"}


def audit_target(model: nn.Module, adapter_name: str | None = None, check: bool = True) -> _Target:
    """The checked map of ``model``'s adapter (peft or gpart_edu), or a clear error if it has none."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"audit needs a torch.nn.Module (a peft model or a model with a gpart_edu adapter), "
                        f"got {type(model).__name__}")
    if peft_maps.is_peft_model(model):
        pm = peft_maps.peft_map(model, adapter_name, check=check)
        return _Target(pm.fmap, pm.method, f"peft {pm.tuner}", pm.layers, pm.D, pm.head, pm.check)
    adapter = get_adapter(model)
    if adapter is None:
        raise AttachError(f"the {type(model).__name__} carries no adapter to audit: wrap it with peft "
                          f"(peft.get_peft_model / PeftModel.from_pretrained) or attach one (ge.attach / ge.load_peft)")
    return _gpart_target(model, adapter)


# ------------------------------------------------------------------------------------- measuring
def _spectrum(f: FlatMap, theta: torch.Tensor, D: int, k: int, method: str, seed: int) -> dict:
    if method == "auto":
        method = "dense" if D * f.d * 8 <= jacobian.DENSE_AUTO_BYTES else "lanczos"
    if method == "dense":
        s = jacobian.singular_values(f, theta, k=f.d, method="dense")
        vals = np.asarray(s.top, dtype=float)
        null = int((vals <= s.resolution).sum())
        smin = float(vals[-1]) if len(vals) else None
        return {"values": vals, "method": "dense", "converged": {"all": f.d}, "resolution": float(s.resolution),
                "null_dim": null, "null_exact": True, "sigma_min": smin, "sigma_max": float(vals[0]),
                "cond": math.inf if null else float(vals[0] / vals[-1])}
    kk = max(1, min(k, (f.d - 2) // 2))
    s = jacobian.singular_values(f, theta, k=kk, method="lanczos", seed=seed)
    top, bottom = np.asarray(s.top, dtype=float), np.asarray(s.bottom, dtype=float)
    conv = {"top_count": len(top), "bottom_count": len(bottom), "wanted": kk, "solver": _jsonable(s.converged)}
    vals = np.concatenate([top, bottom[::-1]]) if len(top) + len(bottom) else np.zeros(0)
    null = int((bottom <= s.resolution).sum()) if len(bottom) else None
    smin = float(bottom[0]) if len(bottom) else None
    smax = float(top[0]) if len(top) else None
    cond = None if smin is None or smax is None else (math.inf if smin <= s.resolution else smax / smin)
    if null is not None and f.d > D:
        null = max(null, f.d - D)
    return {"values": vals, "method": "lanczos", "converged": conv, "resolution": float(s.resolution),
            "null_dim": null, "null_exact": null is not None and null < len(bottom), "sigma_min": smin,
            "sigma_max": smax, "cond": cond}


def _ratios_around(f: FlatMap, theta: torch.Tensor, radius: float, n_pairs: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(2 * n_pairs, f.d, generator=g, dtype=F64)
    u = u / u.norm(dim=1, keepdim=True) * radius
    out = np.empty(n_pairs)
    with torch.no_grad():
        for i in range(n_pairs):
            x, y = theta + u[2 * i], theta + u[2 * i + 1]
            out[i] = float((f(x) - f(y)).norm() / (x - y).norm())
    return out


def _homogeneity(f: FlatMap, u: torch.Tensor, norms) -> dict:
    ts = sorted({float(t) for t in norms if t > 0})
    if len(ts) < 2:
        ts = sorted(set(ts) | {0.5, 1.0, 2.0})
    with torch.no_grad():
        outs = [f(t * u) for t in ts]
        zero = f(torch.zeros_like(u))
    sizes = np.array([float(o.norm()) for o in outs])
    slope = float(np.polyfit(np.log(ts), np.log(np.maximum(sizes, 1e-300)), 1)[0])
    degree = None
    k = round(slope)
    if k >= 1 and sizes.min() > 0:
        err = max(float((o - (t / ts[0]) ** k * outs[0]).norm()) / float(o.norm()) for t, o in zip(ts, outs))
        degree = k if err <= HOMOGENEITY_RTOL else None
    else:
        err = math.nan
    zero_norm = float(zero.norm())
    return {"degree": degree, "slope": slope, "norms": ts, "delta_norms": sizes.tolist(), "residual": err,
            "delta_at_zero": zero_norm, "zero_at_zero": zero_norm <= 1e-12 * max(1.0, float(sizes.max()))}


def audit(model: nn.Module, norms=(0.1, 1.0, 10.0), n_pairs: int = 20, k: int = 10, method: str = "auto",
          pair_radius: float = 1.0, seed: int = 0, adapter_name: str | None = None) -> AuditReport:
    """Audit the map theta -> Delta W of ``model``'s adapter (peft or gpart_edu): spectra, ratios, degree.

    norms: ||theta|| of the random points (theta = r u for one seeded unit direction u; also the t's of the
    homogeneity fit); method: "auto" (dense when D x d fits in 64 MiB), "dense" or "lanczos" (k extremes each
    end, certified or not reported); pair_radius: rho of the pairs around the current theta.
    Taught in notebooks/08_isometry_audit.ipynb, section "2 · The audit of one method".
    """
    if method not in ("auto", "dense", "lanczos"):
        raise ConfigError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
    if n_pairs < 1 or k < 1 or pair_radius <= 0 or not norms or any(not r > 0 for r in norms):
        raise ConfigError(f"audit needs n_pairs >= 1, k >= 1, pair_radius > 0 and positive norms (got n_pairs="
                          f"{n_pairs}, k={k}, pair_radius={pair_radius}, norms={tuple(norms)})")
    t0 = time.perf_counter()
    tg = audit_target(model, adapter_name)
    f = tg.fmap
    theta = f.point()
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(f.d, generator=g, dtype=F64)
    u = u / u.norm()
    spec = _spectrum(f, theta, tg.D, k, method, seed)
    ratios = _ratios_around(f, theta, pair_radius, n_pairs, seed)
    hom = _homogeneity(f, u, norms)
    points = []
    for r in norms:
        sp = _spectrum(f, float(r) * u, tg.D, k, method, seed)
        rr = distance_ratios(f, n_pairs=n_pairs, scale=float(r), seed=seed)
        points.append({"norm": float(r), "sigma_min": sp["sigma_min"], "sigma_max": sp["sigma_max"],
                       "cond": sp["cond"], "null_dim": sp["null_dim"], "null_dim_exact": sp["null_exact"],
                       "singular_values": sp["values"], "ratio_mean": float(rr.mean()), "ratio_std": float(rr.std()),
                       "ratio_min": float(rr.min()), "ratio_max": float(rr.max())})
    return AuditReport(
        method=tg.method, source=tg.source, layers=tg.layers, d=f.d, D=tg.D, head=tg.head,
        theta_norm=float(theta.norm()), singular_values=spec["values"], spectrum_method=spec["method"],
        spectrum_converged=spec["converged"], null_dim=spec["null_dim"], null_dim_exact=spec["null_exact"],
        condition_number=spec["cond"], resolution=spec["resolution"], distance_ratios=ratios,
        pair_radius=float(pair_radius), homogeneity={k_: v for k_, v in hom.items()
                                                     if k_ not in ("delta_at_zero", "zero_at_zero")},
        delta_at_zero=hom["delta_at_zero"], zero_at_zero=hom["zero_at_zero"], points=points,
        merge_check=tg.merge_check, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- CLI
def _load_base(name: str) -> nn.Module:
    from transformers import AutoModel
    with _quiet_transformers():
        return AutoModel.from_pretrained(resolve_model(name)).eval()


def model_for_cli(model: str | None, adapter: str | None, recipe=None) -> nn.Module:
    """The model ``gpart-edu audit`` measures: base + peft folder, base + gpart_edu file, or a recipe at init."""
    if recipe is not None:
        if adapter:
            raise ConfigError("give --recipe or --adapter, not both")
        m = _load_base(model or recipe.model)
        attach(m, recipe.method, targets=list(recipe.targets), **recipe.method_config)
        return m
    if not adapter:
        raise ConfigError("give --adapter (a peft folder or a gpart_edu adapter file) or --recipe NAME")
    if peft_format.is_peft_folder(adapter):
        from peft import PeftModel
        base = model or peft_format.base_model_of(peft_format.read_folder(adapter))
        if not base:
            raise ConfigError(f"{adapter}: the folder names no base model; give --model")
        return PeftModel.from_pretrained(_load_base(base), adapter).eval()
    if not model:
        raise ConfigError("a gpart_edu adapter file needs --model (the base model it was trained on)")
    m = _load_base(model)
    names = [tg.name for tg in read_adapter_file(adapter).targets]
    prefix = getattr(m, "base_model_prefix", "")
    have = {n for n, _ in m.named_modules()}
    if prefix and names and not set(names) <= have and all(
            n.startswith(prefix + ".") and n[len(prefix) + 1:] in have for n in names):
        # trained with a task head (e.g. BertForSequenceClassification: "bert.encoder..."); the bare base model
        # sits under the task model's base_model_prefix, so nest it there: exact names, same pretrained weights
        outer = nn.Module()
        outer.add_module(prefix, m)
        m = outer.eval()
    load_adapter(adapter, m, head=False)          # the audit measures theta -> Delta W; the head is not part of it
    return m


def cmd_audit(args, recipe=None) -> int:
    """``gpart-edu audit``: print the report (and write it as JSON with --json). Notebook 08, section 5."""
    m = model_for_cli(args.model, args.adapter, recipe)
    report = audit(m, norms=args.norms, n_pairs=args.pairs, k=args.k, method=args.spectrum, seed=args.seed)
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2, allow_nan=False)
        print(f"report written to {args.json}")
    return 0
