"""peft folders <-> gpart_edu maps: read and write adapter_config.json + adapter_model.safetensors (no peft needed).

Three kinds of folder (``peft_type`` in adapter_config.json), each the same map as a gpart_edu method:
    LORA     peft's LoRA: lora_A (r x in), lora_B (out x r) per layer; Delta W = (lora_alpha / r) B A, or
             lora_alpha / sqrt(r) with use_rslora -> gpart_edu LoRA, theta = [A, B] per layer, alpha chosen so
             that alpha / r is peft's scaling.
    UNILORA  peft's Uni-LoRA: one vector theta_d, the LoRA factors P theta_d with peft's index assignment
             -> gpart_edu Uni-LoRA with assignment="peft-balanced" (saved indices are checked against it).
    GPART    the official GPart fork (global scope, random grouping, isometric): theta_d, backend materialized
             -> assignment "multinomial" (the same torch draw), stateless -> assignment "stateless"; bias
             "gpart_only" -> include_bias; the fork keeps empty groups -> allow_empty.
Heads saved through peft's modules_to_save (``base_model.model.<parameter>``) are copied into the model.
Options that do not change the saved map (dropout, initialisation, bookkeeping) are read and ignored; any other
option with a non-default value is a ConfigError naming it. Target layers come from the saved tensors (LoRA) or
from target_modules matched as peft matches them (a list: exact name or ".name" suffix; a string: a regex that
must match the whole name), in the model's module order (the order of the global position i).
Writing: a folder is written to a temporary folder and renamed, so a failed save leaves no broken folder.
Taught in notebooks/07_bring_your_own_adapter.ipynb (import, export, the fork's checkpoints).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import AdapterFileError, AttachError, ConfigError, TargetError, UnsupportedLayerError
from .methods import Target
from .projections import PartitionProjection, peft_balanced_group_ids
from .targets import describe, is_adaptable

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."                   # peft's prefix of every per-module tensor and of the heads
THETA_KEY = {"UNILORA": "base_model.unilora_theta_d", "GPART": "base_model.gpart_theta_d"}
KINDS = {"LORA": "peft LoRA", "UNILORA": "peft Uni-LoRA", "GPART": "the official GPart fork"}
METHOD_OF = {"LORA": "lora", "UNILORA": "unilora", "GPART": "gpart"}
FORK_BACKENDS = {"materialized": "multinomial", "stateless": "stateless"}
UNILORA_INDEX = ("unilora_indices_A", "unilora_indices_B", "unilora_scales_A", "unilora_scales_B")

# keys every peft config may carry (meaning read elsewhere, or bookkeeping)
COMMON = {"peft_type", "peft_version", "base_model_name_or_path", "revision", "task_type", "inference_mode",
          "auto_mapping", "target_modules", "modules_to_save", "fan_in_fan_out"}
# read for their meaning, or harmless for a saved adapter (dropout, initialisation, which layers: the tensors say)
KNOWN = {
    "LORA": {"r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "lora_dropout", "exclude_modules",
             "layers_to_transform", "layers_pattern", "megatron_core", "qalora_group_size", "ensure_weight_tying",
             "init_lora_weights", "bias"},
    "UNILORA": {"r", "theta_d_length", "proj_seed", "save_indices", "init_theta_d_bound", "init_weights",
                "unilora_dropout", "bias"},
    "GPART": {"d", "proj_seed", "assignment_backend", "bias", "grouping_strategy", "isometric", "partition_scope",
              "projection_type", "gpart_dropout", "init_bound"},
}
# options gpart_edu reproduces only for these values
ALLOWED = {
    "LORA": {"bias": ("none",), "init_lora_weights": (True, False, "gaussian")},
    "UNILORA": {"bias": ("none",)},
    "GPART": {"bias": ("none", "gpart_only"), "assignment_backend": tuple(FORK_BACKENDS),
              "grouping_strategy": ("random",), "isometric": (True,), "partition_scope": ("global",),
              "projection_type": ("partition",)},
}


@dataclass
class PeftFolder:
    """A peft adapter folder as read from disk: its config and its tensors."""

    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]

    @property
    def peft_type(self) -> str:
        return self.config.get("peft_type")


@dataclass
class PeftPlan:
    """What a peft folder means for one model: a gpart_edu method, its targets, theta and the head tensors."""

    kind: str                                   # LORA | UNILORA | GPART
    method: str                                 # gpart_edu method name
    options: dict                               # registry options (d, r, alpha, seed, assignment, ...)
    targets: list[Target]                       # in the model's module order
    theta: torch.Tensor                         # (num_params,), as saved
    head: dict[str, torch.Tensor] = field(default_factory=dict)   # model parameter name -> saved tensor
    empty_groups: int = 0                       # GPart: groups of the fork's partition without a position

    @property
    def head_modules(self) -> tuple[str, ...]:
        return tuple(sorted({n.rsplit(".", 1)[0] for n in self.head}))

    @property
    def source(self) -> str:
        return KINDS[self.kind]


# ------------------------------------------------------------------------------------------ reading
def is_peft_folder(path) -> bool:
    """True if ``path`` is a folder with an adapter_config.json (a peft ``save_pretrained`` folder)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file()


def read_folder(path) -> PeftFolder:
    """Read adapter_config.json and adapter_model.safetensors; AdapterFileError if missing or unreadable."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AdapterFileError(f"{path} is not a folder: a peft adapter is a folder holding {CONFIG_FILE} and "
                               f"{WEIGHTS_FILE} (what peft's save_pretrained writes)")
    cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_file.is_file():
        raise AdapterFileError(f"{path} has no {CONFIG_FILE}: not a peft adapter folder")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise AdapterFileError(f"{cfg_file} is not readable JSON ({e}); re-save the adapter") from None
    if not isinstance(config, dict):
        raise AdapterFileError(f"{cfg_file} holds {type(config).__name__}, not a JSON object")
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise AdapterFileError(f"{path} holds adapter_model.bin (a pickle), which gpart_edu does not read; "
                                   f"re-save it with peft's save_pretrained(..., safe_serialization=True)")
        raise AdapterFileError(f"{path} has no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise AdapterFileError(f"{weights} is not readable (truncated or corrupted?): {e}") from None
    folder = PeftFolder(path, config, tensors)
    if folder.peft_type not in KINDS:
        raise ConfigError(f"{path}: peft_type {folder.peft_type!r} is not supported; gpart_edu reads "
                          f"{', '.join(KINDS)} ({', '.join(KINDS.values())})")
    return folder


def check_options(folder: PeftFolder) -> None:
    """Raise ConfigError naming the first option whose value gpart_edu cannot reproduce."""
    kind, cfg = folder.peft_type, folder.config
    for key, value in cfg.items():
        allowed = ALLOWED[kind].get(key)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{folder.path}: {KINDS[kind]} option {key}={value!r} is not supported by gpart_edu "
                              f"(it reproduces {key} in {list(allowed)})")
        if key in COMMON or key in KNOWN[kind] or value in (None, False, {}, [], ""):
            continue
        raise ConfigError(f"{folder.path}: {KINDS[kind]} option {key}={value!r} is not supported by gpart_edu "
                          f"(it changes the adapter in a way gpart_edu's {METHOD_OF[kind]} does not express)")
    if kind == "LORA":
        for key in ("rank_pattern", "alpha_pattern"):
            base = cfg.get("r") if key == "rank_pattern" else cfg.get("lora_alpha")
            odd = {k: v for k, v in (cfg.get(key) or {}).items() if v != base}
            if odd:
                raise ConfigError(f"{folder.path}: peft LoRA option {key}={odd} gives layers their own "
                                  f"{'rank' if key == 'rank_pattern' else 'alpha'}; gpart_edu's LoRA has one r and "
                                  f"one alpha for all layers (not supported)")


def _model_order(modules: dict[str, nn.Module], names) -> list[str]:
    order = {n: i for i, n in enumerate(modules)}
    missing = [n for n in names if n not in order]
    if missing:
        raise AttachError(f"the adapter adapts layers {missing[:3]}{' ...' if len(missing) > 3 else ''} which this "
                          f"model lacks; load it onto the base model it was trained on")
    return sorted(names, key=order.__getitem__)


def _records(modules: dict[str, nn.Module], names: list[str]) -> list[Target]:
    bad = [f"{n} ({type(modules[n]).__name__})" for n in names if not is_adaptable(modules[n])]
    if bad:
        raise UnsupportedLayerError(f"the adapter adapts {', '.join(bad[:3])}: gpart_edu adapts nn.Linear and "
                                    f"Conv1D layers only")
    return [describe(n, modules[n]) for n in names]


def match_targets(spec, modules: dict[str, nn.Module]) -> list[str]:
    """Module names ``target_modules`` selects, as peft selects them (list: name or '.name' suffix; str: regex)."""
    if isinstance(spec, str):
        if spec == "all-linear":
            raise ConfigError("target_modules='all-linear' in adapter_config.json: peft writes the resolved list of "
                              "layers when it saves; re-save the adapter with peft's save_pretrained")
        names = [n for n in modules if n and re.fullmatch(spec, n)]
    elif isinstance(spec, (list, tuple)) and spec and all(isinstance(s, str) for s in spec):
        names = [n for n in modules if n and any(n == s or n.endswith("." + s) for s in spec)]
    else:
        raise ConfigError(f"target_modules={spec!r} in adapter_config.json is neither a list of names nor a regex")
    if not names:
        raise TargetError(f"target_modules={spec!r} matched no layer of this model; load the adapter onto the base "
                          f"model it was trained on")
    return names


def _split(folder: PeftFolder, params: dict[str, tuple], adapter_key) -> tuple[dict, dict]:
    """(adapter tensors, head tensors by parameter name); AdapterFileError/AttachError for what cannot be placed."""
    own, head = {}, {}
    for key, t in folder.tensors.items():
        if adapter_key(key):
            own[key] = t
            continue
        name = key[len(PREFIX):] if key.startswith(PREFIX) else None
        if name not in params:
            raise AttachError(f"{folder.path / WEIGHTS_FILE} holds {key}, which is no parameter of this model; load "
                              f"the adapter onto the base model it was trained on")
        if tuple(t.shape) != tuple(params[name]):
            raise AttachError(f"head tensor {name} has shape {tuple(t.shape)} in {folder.path}, "
                              f"{tuple(params[name])} in this model; load it onto the base model it was trained on")
        head[name] = t
    return own, head


def plan(folder: PeftFolder, model: nn.Module) -> PeftPlan:
    """Translate ``folder`` for ``model`` (any device, meta included); checks everything, changes nothing."""
    check_options(folder)
    kind, cfg = folder.peft_type, folder.config
    modules = dict(model.named_modules())
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if kind == "LORA":
        return _plan_lora(folder, modules, params)
    key = THETA_KEY[kind]
    own, head = _split(folder, params, lambda k: k == key or (kind == "UNILORA" and k.endswith(UNILORA_INDEX)))
    if key not in own:
        raise AdapterFileError(f"{folder.path / WEIGHTS_FILE} has no {key} (theta) tensor")
    theta = own.pop(key)
    d = int(cfg.get("theta_d_length" if kind == "UNILORA" else "d", -1))
    if theta.dim() != 1 or theta.numel() != d:
        raise AdapterFileError(f"{folder.path}: theta has shape {tuple(theta.shape)} but the config says d={d}")
    targets = _records(modules, match_targets(cfg.get("target_modules"), modules))
    seed = int(cfg.get("proj_seed", 0))
    if kind == "UNILORA":
        r = int(cfg["r"])
        options = {"d": d, "r": r, "seed": seed, "assignment": "peft-balanced",
                   "init_scale": float(cfg.get("init_theta_d_bound") or 0.02)}
        if cfg.get("save_indices"):
            options["assignment"] = _saved_unilora_assignment(folder, own, targets, r, d, seed)
        return PeftPlan(kind, "unilora", options, targets, theta, head)
    include_bias = cfg.get("bias") == "gpart_only"
    assignment = FORK_BACKENDS[cfg.get("assignment_backend")]
    D = sum(t.numel + (t.out_features if include_bias and t.has_bias else 0) for t in targets)
    P = PartitionProjection(D, d, seed=seed, assignment=assignment, allow_empty=True)
    empty = int((P.counts == 0).sum())
    options = {"d": d, "seed": seed, "assignment": assignment, "include_bias": include_bias}
    if empty:
        options["allow_empty"] = True
    return PeftPlan(kind, "gpart", options, targets, theta, head, empty_groups=empty)


def _plan_lora(folder: PeftFolder, modules, params) -> PeftPlan:
    cfg, ends = folder.config, (".lora_A.weight", ".lora_B.weight")
    own, head = _split(folder, params, lambda k: k.startswith(PREFIX) and k.endswith(ends))
    names = {k[len(PREFIX):-len(ends[0])] for k in own}
    for n in names:
        for e in ends:
            if PREFIX + n + e not in own:
                raise AdapterFileError(f"{folder.path}: {n} has no {e[1:]} tensor (file incomplete?)")
    if not names:
        raise AdapterFileError(f"{folder.path / WEIGHTS_FILE} holds no lora_A / lora_B tensors")
    targets = _records(modules, _model_order(modules, names))
    r = int(cfg.get("r", -1))
    parts = []
    for t in targets:
        A, B = own[PREFIX + t.name + ends[0]], own[PREFIX + t.name + ends[1]]
        if tuple(A.shape) != (r, t.in_features) or tuple(B.shape) != (t.out_features, r):
            raise AttachError(f"{t.name}: lora_A {tuple(A.shape)} / lora_B {tuple(B.shape)} in {folder.path} do not "
                              f"fit r={r} and this layer ({t.in_features} in, {t.out_features} out); load the "
                              f"adapter onto the base model it was trained on")
        parts += [A.reshape(-1), B.reshape(-1)]
    alpha = float(cfg.get("lora_alpha", 8))
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)             # gpart_edu's alpha / r = peft's lora_alpha / sqrt(r)
    return PeftPlan("LORA", "lora", {"r": r, "alpha": alpha}, targets, torch.cat(parts), head)


def _saved_unilora_assignment(folder, own, targets, r, d, seed) -> str:
    """The gpart_edu assignment whose ids equal the saved Uni-LoRA indices (peft's own, or one gpart_edu wrote)."""
    ids, scales = [], []
    for t in targets:
        for part in ("A", "B"):
            try:
                ids.append(own[f"{PREFIX}{t.name}.unilora_indices_{part}"].reshape(-1).long())
                scales.append(own[f"{PREFIX}{t.name}.unilora_scales_{part}"].reshape(-1).double())
            except KeyError:
                raise AdapterFileError(f"{folder.path}: save_indices is set but {t.name} has no saved "
                                       f"unilora_indices_{part} / unilora_scales_{part}") from None
    ids, scales = torch.cat(ids), torch.cat(scales)
    D_f = sum(r * (t.in_features + t.out_features) for t in targets)
    if ids.numel() != D_f or int(ids.min()) < 0 or int(ids.max()) >= d:
        raise AdapterFileError(f"{folder.path}: the saved Uni-LoRA indices do not cover the {D_f} factor entries "
                               f"with ids in [0, {d})")
    counts = torch.bincount(ids, minlength=d).double()
    if (scales - counts[ids].rsqrt()).abs().max() > 1e-6:
        raise ConfigError(f"{folder.path}: the saved Uni-LoRA scales are not 1/sqrt(group size); gpart_edu "
                          f"reproduces only the isometric first hop")
    if torch.equal(ids, peft_balanced_group_ids(D_f, d, seed)):
        return "peft-balanced"
    for assignment in ("balanced", "multinomial", "hashed", "stateless"):
        try:
            P = PartitionProjection(D_f, d, seed=seed, assignment=assignment)
        except ConfigError:
            continue
        if torch.equal(P.group_ids(), ids):
            return assignment
    raise ConfigError(f"{folder.path}: the saved Uni-LoRA indices follow no assignment rule gpart_edu knows "
                      f"(peft's with proj_seed={seed}, or balanced / multinomial / hashed / stateless)")


# ------------------------------------------------------------------------------------------ writing
def _heads(adapter) -> tuple[list[str], dict]:
    params = dict(adapter.model.named_parameters())
    names = list(adapter.trainable_names)
    modules = sorted({n.rsplit(".", 1)[0] for n in names})
    return modules, {PREFIX + n: params[n].detach().cpu().contiguous() for n in names}


def export_folder(adapter) -> tuple[dict, dict]:
    """(adapter_config, tensors) of ``adapter`` in peft's format (LoRA, Uni-LoRA) or the official fork's (GPart)."""
    meth = adapter.method
    theta = adapter.theta.detach().cpu().contiguous()
    heads, tensors = _heads(adapter)
    model_cfg = getattr(adapter.model, "config", None)
    config = {"base_model_name_or_path": getattr(model_cfg, "_name_or_path", None) or None,
              "target_modules": [t.name for t in meth.targets], "modules_to_save": heads or None,
              "fan_in_fan_out": all(t.kind == "conv1d" for t in meth.targets), "inference_mode": True,
              "revision": None, "task_type": None}
    if meth.name == "lora":
        config.update(peft_type="LORA", r=meth.r, lora_alpha=meth.alpha, use_rslora=False, bias="none",
                      lora_dropout=0.0, init_lora_weights=True)
        for i, t in enumerate(meth.targets):
            A, B = meth.layer_factors(theta, i)
            tensors[f"{PREFIX}{t.name}.lora_A.weight"] = A.contiguous()
            tensors[f"{PREFIX}{t.name}.lora_B.weight"] = B.contiguous()
    elif meth.name == "unilora":
        P = meth.P
        own_rule = P.assignment == "peft-balanced"
        config.update(peft_type="UNILORA", r=meth.r, theta_d_length=P.d, proj_seed=P.seed, bias="none",
                      init_theta_d_bound=meth.init_scale or 0.02, init_weights=True, unilora_dropout=0.0,
                      save_indices=not own_rule)
        tensors[THETA_KEY["UNILORA"]] = theta
        if not own_rule:               # another rule: peft loads the saved indices and scales instead of its own
            scales = P.scales
            for t, (a, m, b) in zip(meth.targets, meth.offsets):
                for part, (lo, hi), shape in (("A", (a, m), (meth.r, t.in_features)),
                                              ("B", (m, b), (t.out_features, meth.r))):
                    ids = P.group_ids(lo, hi).cpu()
                    tensors[f"{PREFIX}{t.name}.unilora_indices_{part}"] = ids.reshape(shape).contiguous()
                    tensors[f"{PREFIX}{t.name}.unilora_scales_{part}"] = scales[ids].float().reshape(shape)
    elif meth.name == "gpart":
        P = meth.P
        backend = {v: k for k, v in FORK_BACKENDS.items()}.get(P.assignment)
        if backend is None:
            raise ConfigError(f"the official GPart fork's format holds the assignments multinomial (its "
                              f"'materialized', the same draw) and stateless; this adapter uses {P.assignment!r}: "
                              f"train with assignment='multinomial' (or 'stateless') to export it, or keep "
                              f"adapter.save(path)")
        config.update(peft_type="GPART", d=P.d, proj_seed=P.seed, assignment_backend=backend,
                      bias="gpart_only" if meth.include_bias else "none", grouping_strategy="random",
                      isometric=True, partition_scope="global", projection_type="partition", gpart_dropout=0.0,
                      init_bound=0.0)
        tensors[THETA_KEY["GPART"]] = theta
    else:
        raise ConfigError(f"no peft format for method {meth.name!r}")
    return config, tensors


def write_folder(path, config: dict, tensors: dict) -> Path:
    """Write the two files; a new folder appears whole (temporary folder + rename), an existing one file by file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdapterFileError(f"{path} is a file; a peft adapter is a folder: give a folder name")
    if not path.parent.is_dir():
        raise AdapterFileError(f"folder {path.parent} does not exist; create it first")
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    if not path.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / CONFIG_FILE).write_text(text)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path
    staged = []
    try:
        for name, write in ((WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})),
                            (CONFIG_FILE, lambda p: p.write_text(text))):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path)
            os.close(fd)
            staged.append((Path(tmp), path / name))
            write(Path(tmp))
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
    return path


def save_peft(adapter, path) -> Path:
    """Write ``adapter`` as a peft folder at ``path`` (notebooks/07_bring_your_own_adapter.ipynb, export)."""
    config, tensors = export_folder(adapter)
    return write_folder(path, config, tensors)


def base_model_of(folder: PeftFolder) -> str | None:
    """The folder's base_model_name_or_path, resolved against the folder when it is a relative path there."""
    name = folder.config.get("base_model_name_or_path")
    if not name:
        return None
    local = folder.path / name
    return str(local.resolve()) if local.exists() else name
