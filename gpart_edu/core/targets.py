"""Find the layers to adapt in any torch model: by name suffix, regex, or "all-linear"; architecture aliases.

``find_targets`` matches names exactly as given; ``resolve_targets`` also tries the names other architectures give
the same projection (query / q_proj / q_lin ...), for recipes that run on several model families.
Taught in notebooks/00_quickstart.ipynb (which layers GPart adapts).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from ..errors import TargetError, UnsupportedLayerError
from .methods import Target

HEAD_NAMES = ("classifier", "score", "lm_head")  # output heads: never adapted by "all-linear"


def is_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's GPT-2 style ``Conv1D`` (a linear layer with weight (in, out))."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def describe(name: str, module: nn.Module) -> Target:
    """The ``Target`` record of an adaptable module."""
    if isinstance(module, nn.Linear):
        return Target(name, "linear", module.in_features, module.out_features, module.bias is not None)
    n_in, n_out = module.weight.shape
    return Target(name, "conv1d", n_in, n_out, module.bias is not None)


def _leaf_names(model: nn.Module) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and is_adaptable(m)})
    return ", ".join(leaves) if leaves else "(none: the model has no nn.Linear / Conv1D layer)"


def _matcher(spec):
    """Turn a targets spec into (description, predicate on qualified module names)."""
    if isinstance(spec, re.Pattern):
        return f"regex {spec.pattern!r}", lambda n: spec.fullmatch(n) is not None
    if isinstance(spec, str):
        if spec.startswith("re:"):
            return _matcher(re.compile(spec[3:]))
        spec = [spec]
    if not isinstance(spec, Iterable):
        raise TargetError(f"targets must be a list of name suffixes, a regex or 'all-linear', got {spec!r}")
    suffixes = list(spec)
    if not suffixes or not all(isinstance(s, str) and s for s in suffixes):
        raise TargetError(f"targets must be non-empty strings (name suffixes such as 'query'), got {spec!r}")
    return (f"suffixes {suffixes}",
            lambda n: any(n == s or n.endswith("." + s) for s in suffixes))


def find_targets(model: nn.Module, targets="all-linear") -> list[tuple[str, nn.Module]]:
    """Return [(qualified name, module)] of the layers to adapt, in module order.

    targets: "all-linear" (every nn.Linear / Conv1D except output heads named classifier/score/lm_head);
             a name suffix or list of suffixes ("query" matches "encoder.layer.0.attention.self.query");
             a compiled regex or "re:<pattern>" matched against the full qualified name.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(targets, str) and targets == "all-linear":
        out = [(n, m) for n, m in model.named_modules()
               if n and is_adaptable(m) and n.rsplit(".", 1)[-1] not in HEAD_NAMES]
        if not out:
            raise TargetError("targets='all-linear' matched nothing: the model has no nn.Linear / Conv1D layer")
        return out
    what, match = _matcher(targets)
    found = [(n, m) for n, m in model.named_modules() if n and match(n)]
    if not found:
        raise TargetError(f"targets {what} matched no module; adaptable layers end in: {_leaf_names(model)}")
    bad = [(n, type(m).__name__) for n, m in found if not is_adaptable(m)]
    if bad:
        listing = ", ".join(f"{n} ({t})" for n, t in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise UnsupportedLayerError(
            f"targets {what} matched {len(bad)} module(s) that are not nn.Linear or Conv1D: {listing}; "
            f"name the linear layers inside them instead (adaptable layers end in: {_leaf_names(model)})")
    return found


# the same projection under the names different transformers architectures give it
TARGET_ALIASES = {"query": ("q_proj", "q_lin", "q"), "key": ("k_proj", "k_lin", "k"),
                  "value": ("v_proj", "v_lin", "v"), "q_proj": ("query",), "k_proj": ("key",),
                  "v_proj": ("value",), "o_proj": ("out_proj", "dense")}


def resolve_targets(model, targets) -> list:
    """find_targets(model, targets), falling back to each name's aliases when a name matches nothing
    (ViT calls its query/value projections q_proj/v_proj in transformers 5, BERT/RoBERTa query/value)."""
    if isinstance(targets, str):
        return find_targets(model, targets)
    names = []
    for t in targets:
        for cand in (t, *TARGET_ALIASES.get(t, ())):
            try:
                find_targets(model, [cand])
            except TargetError:
                continue
            names.append(cand)
            break
        else:
            find_targets(model, [t])          # raises the informative error
    return find_targets(model, names)
