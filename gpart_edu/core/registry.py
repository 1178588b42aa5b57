"""The method registry: one place that turns (method name, budget, options) into a Method.

    registry.build("uni-lora", targets, 4096)          # UniLoRA(targets, d=4096), every other option its default
    registry.defaults("lora")                          # {'r': 8, 'alpha': 8.0, 'seed': 0}: LoRA.__init__'s defaults
    registry.config_for_size("lora", targets, 1_000)   # {'r': ...}: about 1,000 trainable parameters

Names: the canonical ``NAMES`` and their ``ALIASES`` ("uni-lora", "uni_lora", any letter case). Budgets: GPart
and Uni-LoRA take d (the length of theta), LoRA takes r (theta is r (in + out) entries per layer), see
``BUDGET_KEY``. Defaults: the method classes' ``__init__`` signatures, read here and nowhere copied.
attach, the fine-tuning engine, the comparison grid, ``gpart-edu verify``, the recipes' cost and the widgets
all build their methods through ``build``, so the same (name, budget) gives the same map everywhere.
Taught in notebooks/04 and 05 (methods compared at equal budgets) and 00_quickstart (ge.attach).
"""
from __future__ import annotations

import difflib
import inspect

from ..errors import ConfigError
from .methods import METHODS, Method, Target
from .projections import as_positive_int

NAMES = tuple(METHODS)                                   # ("gpart", "unilora", "lora")
ALIASES = {"gpart": "gpart", "unilora": "unilora", "uni-lora": "unilora", "uni_lora": "unilora", "lora": "lora"}
BUDGET_KEY = {"gpart": "d", "unilora": "d", "lora": "r"}
LABELS = {"gpart": "GPart", "unilora": "Uni-LoRA", "lora": "LoRA"}
BUDGET_MEANING = {"d": "the length of theta", "r": "the LoRA rank"}
REQUIRED = inspect.Parameter.empty                       # marks an option without a default in ``options``


def canonical(name) -> str:
    """Return the canonical method name of ``name`` or one of its aliases (notebook 00_quickstart: ge.attach)."""
    if not isinstance(name, str) or name.lower() not in ALIASES:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(NAMES)}")
    return ALIASES[name.lower()]


def options(name) -> dict:
    """Return every option of the method with its default (``REQUIRED`` if none), read from its ``__init__``.

    Taught in notebooks/02_lora_unilora_geometry.ipynb, which defines the three methods and their settings.
    """
    params = inspect.signature(METHODS[canonical(name)].__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "targets")}


def defaults(name) -> dict:
    """Return the options that have a default, with that default (notebooks/02_lora_unilora_geometry.ipynb)."""
    return {k: v for k, v in options(name).items() if v is not REQUIRED}


def accepted(name, **settings) -> dict:
    """Keep the ``settings`` the method takes and is given (not None); drop the rest silently.

    For callers whose settings cover every method at once (the CLI flags, ``engine.RunConfig``): a LoRA run
    ignores --d, a GPart run ignores --r. Used by notebooks/06_full_scale.ipynb through engine and verify.
    """
    valid = options(name)
    return {k: v for k, v in settings.items() if k in valid and v is not None}


def resolve(name, budget=None, **opts) -> tuple[str, dict]:
    """Return (canonical name, keyword arguments of its class) for ``budget`` and ``opts``, checked.

    ``budget`` goes to the method's ``BUDGET_KEY`` (d or r); it may also be given by that key. Options given
    as None are dropped (the class default applies). Unknown options and a missing required budget raise
    ConfigError saying what to pass. Values are checked by the class itself (notebooks/00_quickstart.ipynb).
    """
    name = canonical(name)
    key, valid = BUDGET_KEY[name], options(name)
    kw = {k: v for k, v in opts.items() if v is not None}
    unknown = [k for k in kw if k not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        raise ConfigError(f"{name} has no option {', '.join(map(repr, unknown))}"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; valid options: {', '.join(valid)}")
    if budget is not None:
        if key in kw and kw[key] != budget:
            raise ConfigError(f"{name}: budget {budget!r} and {key}={kw[key]!r} disagree; give {key} once")
        kw[key] = budget
    missing = [k for k, v in valid.items() if v is REQUIRED and k not in kw]
    if missing:
        k = missing[0]
        raise ConfigError(f"{name} needs {k}, its budget ({BUDGET_MEANING.get(k, k)}): pass {k}=..., "
                          f"e.g. {k}=4096")
    return name, kw


def build(name, targets: list[Target], budget=None, **opts) -> Method:
    """Build the method ``name`` on ``targets`` with ``budget`` (d or r) and ``opts`` (None: the default).

    The one constructor behind ge.attach (notebooks/00_quickstart.ipynb) and the equal-budget comparisons of
    notebooks/04_toy_to_small_finetuning.ipynb and 05_transformer_finetuning.ipynb.
    """
    name, kw = resolve(name, budget, **opts)
    return METHODS[name](list(targets), **kw)


def num_params(name, targets: list[Target], budget=None, **opts) -> int:
    """Return the length of theta ``build`` would give, without building a partition when it is the budget d.

    Counting a GPart of a 7B model needs no (D,) group ids: its theta length is d by definition. Used for
    the recipes' cost (notebooks/06_full_scale.ipynb).
    """
    name, kw = resolve(name, budget, **opts)
    if BUDGET_KEY[name] == "d":
        return as_positive_int(kw["d"], "d", " (the number of trainable parameters)")
    return METHODS[name](list(targets), **kw).num_params


def config_for_size(name, targets: list[Target], n: int) -> dict:
    """Return the budget (and rank) giving ``name`` about ``n`` trainable parameters on ``targets``.

    d-budget methods get d = n; LoRA gets the rank r whose r (in + out) count is closest to n; Uni-LoRA gets
    the rank r >= its default for which its factors hold at least n entries (d <= D_f). The other options
    keep their defaults. Used by the landscape explorer of notebooks/03_loss_landscapes.ipynb.
    """
    name = canonical(name)
    n = as_positive_int(n, "n", " (the number of trainable parameters wanted)")
    per_r = sum(t.in_features + t.out_features for t in targets)   # LoRA factor entries per unit of rank
    if BUDGET_KEY[name] == "r":
        return {"r": max(1, round(n / per_r))}
    config = {BUDGET_KEY[name]: n}
    if "r" in options(name):
        config["r"] = max(defaults(name)["r"], -(-n // per_r))
    return config
