"""Adapter files: theta + the trained head + method configuration + fingerprints of the adapted layers.

Format (version 2): a safetensors file holding ``theta``, one tensor ``head/<parameter name>`` per extra trainable
parameter (the classification head: peft's modules_to_save), and string metadata
    format="gpart_edu.adapter", format_version="2", method, config (JSON: d, seed, ...),
    targets (JSON list of [name, kind, in, out, has_bias]), base (JSON {layer: fingerprint of its pretrained
    weight}), head (JSON list of the saved head parameter names),
    checksum (sha256 over every other metadata entry and every tensor's name, dtype, shape and bytes).
For GPart this is d numbers plus a seed (and the head): ~4 (d + head) bytes plus a header of a few KiB
(config, checksum, and one name + fingerprint per adapted layer: it grows with the layers, never with d).
Version 1 files (theta only, no checksum over the config) still load, with a warning to re-save them.
Everything read is validated (types, bounds, theta's length, finite values) before the caller touches a model.
safetensors is used because it is a small, well-kept format with a bounds-checked header (no pickle).
Writes go to a temporary file in the same folder, then ``os.replace``: an interrupted save never leaves a partial
file under the requested name, and temporary files left by a killed save are removed by the next save.
Taught in notebooks/00_quickstart.ipynb, section "5 · Save: θ and a seed are the whole adapter".
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import astuple, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import AdapterFileError
from . import lifecycle
from .methods import Target

FORMAT = "gpart_edu.adapter"
FORMAT_VERSION = 2
READS = ("1", "2")
HEAD_PREFIX = "head/"


@dataclass
class AdapterFile:
    """What an adapter file holds, validated: method, config, targets, theta, head tensors, base fingerprints."""

    method: str
    config: dict
    targets: list[Target]
    theta: torch.Tensor
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    base: dict[str, list[float]] | None = None
    version: int = FORMAT_VERSION


def fingerprint(targets: list[Target]) -> str:
    """sha256 of the ordered target names, kinds and shapes (the partition depends on all of them)."""
    text = "\n".join(",".join(map(str, astuple(t))) for t in targets)
    return hashlib.sha256(text.encode()).hexdigest()


def _theta_digest(theta: torch.Tensor) -> str:
    return hashlib.sha256(theta.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _checksum(meta: dict, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _clean_stale(folder: Path, name: str) -> None:
    """Remove ``.name.<pid>.*.tmp`` files whose writing process no longer exists (a save that was killed)."""
    for p in folder.glob(f".{name}.*.tmp"):
        parts = p.name[len(name) + 2:].split(".")
        if not parts or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            p.unlink(missing_ok=True)


def write_adapter(path, method_name: str, config: dict, targets: list[Target], theta: torch.Tensor,
                  head: dict[str, torch.Tensor] | None = None, base: dict[str, list[float]] | None = None) -> Path:
    """Atomically write an adapter file (mode 0666 minus the umask; through a symlink to its target); returns it."""
    path = Path(os.path.realpath(Path(path).expanduser()))
    if path.is_dir():
        raise AdapterFileError(f"{path} is a directory; give a file name such as {path / 'adapter.safetensors'}")
    if not path.parent.exists():
        raise AdapterFileError(f"folder {path.parent} does not exist; create it first")
    tensors = {"theta": theta.detach().cpu().contiguous()}
    for n, t in (head or {}).items():
        tensors[HEAD_PREFIX + n] = t.detach().cpu().contiguous()
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "method": method_name,
        "config": json.dumps(config, sort_keys=True),
        "targets": json.dumps([list(astuple(t)) for t in targets]),
        "base": json.dumps(base or {}, sort_keys=True),
        "head": json.dumps(sorted(head or {})),
    }
    meta["checksum"] = _checksum(meta, tensors)
    _clean_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)           # mkstemp creates 0600; a saved adapter is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _load(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise AdapterFileError(f"{path} is not a readable adapter file (truncated or corrupted?): {e}") from None
    return meta, tensors


def read_adapter_file(path) -> AdapterFile:
    """Read an adapter file and validate all of it (header types and bounds, checksum, theta, head)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AdapterFileError(f"adapter file {path} does not exist")
    meta, tensors = _load(path)
    if meta.get("format") != FORMAT:
        raise AdapterFileError(f"{path} is not a gpart_edu adapter file (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if version not in READS:
        raise AdapterFileError(
            f"{path} has format version {version!r}; this gpart_edu reads version {' or '.join(READS)}: upgrade "
            f"gpart_edu or re-save the adapter with this version")
    if version == "2" and meta.get("checksum") != _checksum(meta, tensors):
        raise AdapterFileError(f"{path}: checksum mismatch: its config, layer list or tensors were changed after "
                               f"saving (file corrupted or edited); re-save the adapter")
    try:
        config = json.loads(meta["config"])
        raw_targets = json.loads(meta["targets"])
        method = meta["method"]
        base = json.loads(meta["base"]) if version == "2" else None
        head_names = json.loads(meta["head"]) if version == "2" else []
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise AdapterFileError(f"{path} has a damaged header ({type(e).__name__}); re-save the adapter") from None
    rows = lifecycle.check_targets(raw_targets, str(path))
    targets = [Target(*row) for row in rows]
    if version == "1":
        if fingerprint(targets) != meta.get("fingerprint") or "theta" not in tensors \
                or _theta_digest(tensors["theta"]) != meta.get("theta_sha256"):
            raise AdapterFileError(f"{path}: theta or target list does not match its checksum (file corrupted)")
    n = lifecycle.expected_theta_len(method, config, rows, str(path))
    lifecycle.check_theta(tensors.get("theta"), n, str(path))
    head = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    if sorted(head) != sorted(head_names) or set(tensors) - {"theta"} - {HEAD_PREFIX + k for k in head}:
        raise AdapterFileError(f"{path}: its tensors do not match the header's head list; re-save the adapter")
    lifecycle.check_head(head, str(path))
    if base is not None and not (isinstance(base, dict) and all(
            isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
            for v in base.values())):
        raise AdapterFileError(f"{path}: header 'base' is malformed; re-save the adapter")
    if version == "1":
        warnings.warn(f"{path} is a version-1 adapter file: no checksum over its config and no saved head (the head "
                      f"keeps the model's values); load it and adapter.save() again to upgrade", stacklevel=3)
    return AdapterFile(method, config, targets, tensors["theta"], head, base or None, int(version))


def read_adapter(path) -> tuple[str, dict, list[Target], torch.Tensor]:
    """Read and verify an adapter file; returns (method, config, targets, theta)."""
    f = read_adapter_file(path)
    return f.method, f.config, f.targets, f.theta
