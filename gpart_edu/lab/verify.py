"""Check a method's isometry claims on a real model's layers (``gpart-edu verify``), with pass/fail status.

    checks = verify.run_checks(verify.build_method("minilm", "gpart", d=23_040))
    print(verify.format_table(checks)); ok = verify.claims_hold(checks)

Three measurements of the map theta -> vec(Delta W), all from gpart_edu.geometry / gpart_edu.jacobian:
    partition Gram residual  max |P^T P - I| from the group sizes (GPart's P; Uni-LoRA's first hop)
    distance ratios          ||Delta W(x) - Delta W(y)|| / ||x - y|| over random pairs
    Jacobian spectrum        top-k and bottom-k singular values of J = d vec(Delta W) / d theta (Lanczos)
What each method claims: GPart all three (isometric end to end); Uni-LoRA only the partition (its second hop
B A is bilinear: the ratios and singular values spread, which is reported, not failed); LoRA nothing.
``claim="isometric"`` requires end-to-end isometry of any method (so Uni-LoRA and LoRA then fail).
Only the model's config is read (the layers are built on the meta device): the maps do not depend on W0.
``--adapter`` takes a gpart_edu adapter file or a peft folder (peft LoRA / Uni-LoRA, the official GPart fork);
a peft folder's layers come from its base model: ``--model``, or the folder's base_model_name_or_path.
Taught in notebooks/06_full_scale.ipynb, section "7 · Verify the claims from a terminal" (peft folders in
notebooks/07_bring_your_own_adapter.ipynb).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..assets import _quiet_transformers, resolve_model
from ..core import peft_format, registry
from ..core.storage import read_adapter
from ..core.targets import describe, resolve_targets
from ..errors import ConfigError
from . import geometry, jacobian

TOL = {"float64": 1e-10, "float32": 1e-5}


@dataclass
class Check:
    name: str
    claimed: bool
    measured: str
    deviation: float          # max |measured - 1| (ratios, singular values) or max |P^T P - I|
    tol: float

    @property
    def holds(self) -> bool:
        return bool(np.isfinite(self.deviation) and self.deviation <= self.tol)

    @property
    def status(self) -> str:
        if self.claimed:
            return "PASS" if self.holds else "FAIL"
        return "holds" if self.holds else "does not hold (not claimed)"


def model_targets(model: str, targets=None):
    """Target records of ``model``'s layers, from its config alone (meta device, nothing downloaded)."""
    from transformers import AutoConfig, AutoModel

    with _quiet_transformers():
        config = AutoConfig.from_pretrained(resolve_model(model))
        with torch.device("meta"):
            m = AutoModel.from_config(config)
    return [describe(n, mod) for n, mod in resolve_targets(m, targets or ("query", "value"))]


def meta_model(model: str):
    """``model`` (a name, hub id or folder) built from its config on the meta device, with its task head."""
    import transformers

    with _quiet_transformers():
        config = transformers.AutoConfig.from_pretrained(resolve_model(model))
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        with torch.device("meta"):
            return cls(config) if cls is not None else transformers.AutoModel.from_config(config)


def _from_peft_folder(path, model, method):
    folder = peft_format.read_folder(path)
    model = model or peft_format.base_model_of(folder)
    if model is None:
        raise ConfigError(f"{path} does not name its base model (base_model_name_or_path is null): pass --model "
                          f"with the model it was trained on")
    plan = peft_format.plan(folder, meta_model(model))
    if method is not None and registry.canonical(method) != plan.method:
        raise ConfigError(f"{path} holds a {plan.method} adapter ({plan.source}), not {method}")
    meth = registry.build(plan.method, plan.targets, **plan.options)
    return meth, plan.theta.detach().double().clone(), (f"{plan.method} {meth.config()} from peft folder {path} "
                                                        f"({plan.source}; trained theta)")


def build_method(model: str | None = None, method: str = "gpart", *, adapter: str | None = None, d=None, r=None,
                 alpha=None, seed: int = 0, assignment: str = "balanced", targets=None):
    """(Method, theta float64, description) from a model's layers + settings, or from a saved adapter.

    ``adapter``: a gpart_edu adapter file, or a peft folder (whose layers come from ``model`` or the folder's
    base_model_name_or_path). Taught in notebooks/06_full_scale.ipynb, section "7 · Verify the claims from a
    terminal", and notebooks/07_bring_your_own_adapter.ipynb (peft folders).
    """
    if adapter is not None and peft_format.is_peft_folder(adapter):
        return _from_peft_folder(adapter, model, method)
    if adapter is not None:
        name, config, tlist, theta = read_adapter(adapter)
        if method is not None and registry.canonical(method) != name:
            raise ConfigError(f"{adapter} holds a {name} adapter, not {method}")
        meth = registry.build(name, tlist, **config)
        return meth, theta.detach().double().clone(), f"{name} {config} from {adapter} (trained theta)"
    method = registry.canonical(method)
    kw = registry.accepted(method, d=d, r=r, alpha=alpha, seed=seed, assignment=assignment)
    registry.resolve(method, **kw)                      # a missing d fails before the model is read
    meth = registry.build(method, model_targets(model, targets), **kw)
    theta = meth.init_theta(dtype=torch.float64)
    return meth, theta, f"{method} {meth.config()} on {model} (theta at initialisation)"


def run_checks(meth, theta=None, pairs: int = 20, k: int = 6, pair_norm: float = 1.0, dtype: str = "float64",
               tol: float | None = None, claim: str = "auto", spectrum: str = "lanczos",
               samples: int = 128) -> list[Check]:
    """The three measurements with what ``meth`` claims; never mutates ``meth`` or ``theta``.

    spectrum: "lanczos" (top/bottom k singular values; seconds for GPart, minutes for Uni-LoRA on MiniLM,
    whose smallest values converge slowly), "sample" (all singular values of J restricted to ``samples``
    random theta coordinates: Cauchy-interlaced inside the full range, so a spread proves non-isometry and
    all-ones is a necessary condition) or "none".
    Taught in notebooks/06_full_scale.ipynb, section "7 · Verify the claims from a terminal".
    """
    if claim not in ("auto", "isometric"):
        raise ConfigError(f"claim must be 'auto' or 'isometric', got {claim!r}")
    tdt = {"float64": torch.float64, "float32": torch.float32}[dtype]
    tol = TOL[dtype] if tol is None else tol
    end_to_end = meth.name == "gpart" or claim == "isometric"
    checks = []
    P = getattr(meth, "P", None)
    if P is not None:
        pc = geometry.partition_check(P)
        checks.append(Check("P^T P = I (from group sizes)", True,
                            f"max |P^T P - I| = {pc['max_abs']:.2e}; groups {pc['min']}..{pc['max']}, "
                            f"{pc['empty']} empty", pc["max_abs"], tol))
    ratios = geometry.distance_ratios(meth, n_pairs=pairs, scale=pair_norm, dtype=tdt)
    checks.append(Check(f"distance ratio = 1 ({pairs} pairs, |x| = {pair_norm:g})", end_to_end,
                        f"ratio in [{ratios.min():.12g}, {ratios.max():.12g}]",
                        float(np.abs(ratios - 1).max()), tol))
    t = None if theta is None else theta.detach().to(tdt).clone()
    if spectrum == "lanczos":
        k = min(k, max(1, meth.num_params // 2 - 1))
        spec = jacobian.singular_values(meth, t, k=k, dtype=tdt)
        checks.append(Check(f"Jacobian singular values = 1 (top/bottom {k})", end_to_end,
                            f"sigma in [{spec.sigma_min:.12g}, {spec.sigma_max:.12g}], cond {spec.cond:.4g} "
                            f"({spec.method}, {spec.seconds:.1f} s)", spec.max_error_from(1.0), tol))
    elif spectrum == "sample":
        s = jacobian.singular_value_sample(meth, t, m=samples, dtype=tdt)
        checks.append(Check(f"Jacobian singular values = 1 ({min(samples, meth.num_params)} sampled columns)",
                            end_to_end, f"sigma in [{s.min():.12g}, {s.max():.12g}] (interlaced inside the "
                            f"full range)", float(np.abs(s - 1).max()), tol))
    elif spectrum != "none":
        raise ConfigError(f"spectrum must be 'lanczos', 'sample' or 'none', got {spectrum!r}")
    return checks


def claims_hold(checks) -> bool:
    return all(c.holds for c in checks if c.claimed)


def format_table(checks, title: str = "") -> str:
    w = max(len(c.name) for c in checks)
    lines = [title] if title else []
    lines.append(f"{'check':<{w}}  claimed  {'result':<27}  {'deviation':>9}  {'tol':>7}  measured")
    for c in checks:
        lines.append(f"{c.name:<{w}}  {'yes' if c.claimed else 'no':<7}  {c.status:<27}  {c.deviation:>9.2e}  "
                     f"{c.tol:>7.0e}  {c.measured}")
    iso = all(c.holds for c in checks)
    lines.append(("verdict: isometric end to end" if iso else "verdict: NOT isometric end to end")
                 + ("; every claimed property holds" if claims_hold(checks) else "; a CLAIMED PROPERTY FAILS"))
    return "\n".join(lines)


def cmd_verify(args) -> int:
    """``gpart-edu verify``: print the table; exit 1 if a claimed property fails."""
    peft = args.adapter is not None and peft_format.is_peft_folder(args.adapter)
    if not args.model and not args.adapter:
        raise ConfigError("give --model (with --method) or --adapter (a gpart_edu adapter file or a peft folder)")
    if args.model and args.adapter and not peft:
        raise ConfigError("--model goes with --method, or with --adapter of a peft folder; an adapter file "
                          "names its own layers")
    if args.model and not args.adapter and not args.method:
        raise ConfigError(f"--method is required with --model ({', '.join(registry.NAMES)})")
    meth, theta, what = build_method(args.model, args.method,
                                     adapter=args.adapter, d=args.d, r=args.r, alpha=args.alpha, seed=args.seed,
                                     assignment=args.assignment, targets=args.targets)
    D = sum(t.numel for t in meth.targets)
    checks = run_checks(meth, theta, pairs=args.pairs, k=args.k, pair_norm=args.pair_norm, dtype=args.dtype,
                        tol=args.tol, claim=args.claim, spectrum=args.spectrum, samples=args.samples)
    title = (f"gpart-edu verify: {what}\n{len(meth.targets)} layers, D = {D:,}, theta length {meth.num_params:,}, "
             f"{args.dtype}")
    print(format_table(checks, title))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"what": what, "D": D, "d": meth.num_params, "claims_hold": claims_hold(checks),
                       "checks": [{**asdict(c), "holds": c.holds, "status": c.status} for c in checks]}, f, indent=2)
    return 0 if claims_hold(checks) else 1
