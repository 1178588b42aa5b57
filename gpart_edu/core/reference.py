"""The three maps theta -> Delta W written densely and plainly: the float64 oracle of tests/test_reference.py.

Independent of the efficient code (no P(theta), no delta_weights): a dense P from the partition's group ids,
    GPart     vec(Delta W_all) = P theta, split per target in stored weight order (+ its bias if include_bias)
    Uni-LoRA  f = P theta; per target A (r x in), then B (out x r); Delta W = B A
    LoRA      f = theta;   per target A (r x in), then B (out x r); Delta W = (alpha / r) B A
with Delta W stored transposed (in x out) for "conv1d" targets.
Taught in notebooks/01 (dense P) and 02 (the three maps); tests/test_reference.py holds every fast path to it.
"""
from __future__ import annotations

import torch


def dense_P(group_ids: torch.Tensor, d: int) -> torch.Tensor:
    """Build the dense D x d partition matrix, P[i, g(i)] = 1 / sqrt(n_g), in float64.

    The matrix of notebooks/01_isometric_partition.ipynb, for small D only (D * d * 8 bytes).
    """
    g = group_ids.long().cpu()
    n = torch.bincount(g, minlength=d).double()                          # group sizes n_g
    P = torch.zeros(len(g), d, dtype=torch.float64)
    P[torch.arange(len(g)), g] = n[g].rsqrt()
    return P


def delta_weights(name: str, targets, config: dict, theta: torch.Tensor, group_ids=None) -> dict:
    """Map theta to {weight name: Delta W} densely in float64 (the maps of notebooks/02_lora_unilora_geometry).

    ``name``: "gpart", "unilora" or "lora"; ``config``: the method's config (d, r, alpha, include_bias);
    ``group_ids``: the partition's g(i) (``method.P.group_ids()``), unused by LoRA. Differentiable in theta.
    """
    if name not in ("gpart", "unilora", "lora"):
        raise ValueError(f"unknown method {name!r}; the reference knows gpart, unilora and lora")
    theta = theta.double()
    f = theta if name == "lora" else dense_P(group_ids, config["d"]).to(theta.device) @ theta
    out, pos = {}, 0
    for t in targets:
        i, o = t.in_features, t.out_features
        if name == "gpart":
            out[t.name + ".weight"] = f[pos:pos + o * i].reshape((o, i) if t.kind == "linear" else (i, o))
            pos += o * i
            if config.get("include_bias") and t.has_bias:
                out[t.name + ".bias"] = f[pos:pos + o]
                pos += o
            continue
        r = config["r"]
        A = f[pos:pos + r * i].reshape(r, i)
        B = f[pos + r * i:pos + r * i + o * r].reshape(o, r)
        pos += r * i + o * r
        dW = (config["alpha"] / r if name == "lora" else 1.0) * (B @ A)    # (out, in)
        out[t.name + ".weight"] = dW if t.kind == "linear" else dW.t()
    if pos != len(f):
        raise ValueError(f"{name}: the targets use {pos} entries of f, but f has {len(f)}")
    return out
