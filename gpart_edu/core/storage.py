"""Adapter files: theta + method configuration + a fingerprint of the adapted layers.

Format (version 1): a safetensors file holding one tensor ``theta`` and string metadata
    format="gpart_edu.adapter", format_version="1", method, config (JSON: d, seed, ...),
    targets (JSON list of [name, kind, in, out, has_bias]), fingerprint (sha256 of targets),
    theta_sha256 (sha256 of theta's raw bytes).
For GPart this is d numbers plus a seed: ~4 d bytes plus a header of a few hundred bytes.
safetensors is used because it is a small, well-kept format with a bounds-checked header (no pickle).
Writes go to a temporary file in the same folder, then ``os.replace``: an interrupted save never leaves
a partial file under the requested name.
Taught in notebooks/00_quickstart.ipynb, section "5 · Save: θ and a seed are the whole adapter".
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import astuple
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import AdapterFileError
from .methods import Target

FORMAT = "gpart_edu.adapter"
FORMAT_VERSION = 1


def fingerprint(targets: list[Target]) -> str:
    """sha256 of the ordered target names, kinds and shapes (the partition depends on all of them)."""
    text = "\n".join(",".join(map(str, astuple(t))) for t in targets)
    return hashlib.sha256(text.encode()).hexdigest()


def _theta_digest(theta: torch.Tensor) -> str:
    return hashlib.sha256(theta.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def write_adapter(path, method_name: str, config: dict, targets: list[Target], theta: torch.Tensor) -> Path:
    """Atomically write an adapter file; returns the final path."""
    path = Path(path)
    if path.is_dir():
        raise AdapterFileError(f"{path} is a directory; give a file name such as {path / 'adapter.safetensors'}")
    if not path.parent.exists():
        raise AdapterFileError(f"folder {path.parent} does not exist; create it first")
    theta = theta.detach().cpu().contiguous()
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "method": method_name,
        "config": json.dumps(config, sort_keys=True),
        "targets": json.dumps([list(astuple(t)) for t in targets]),
        "fingerprint": fingerprint(targets),
        "theta_sha256": _theta_digest(theta),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({"theta": theta}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_adapter(path) -> tuple[str, dict, list[Target], torch.Tensor]:
    """Read and verify an adapter file; returns (method, config, targets, theta)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            theta = f.get_tensor("theta")
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise AdapterFileError(f"{path} is not a readable adapter file (truncated or corrupted?): {e}") from None
    if meta.get("format") != FORMAT:
        raise AdapterFileError(f"{path} is not a gpart_edu adapter file (format={meta.get('format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise AdapterFileError(
            f"{path} has format version {meta.get('format_version')!r}; this gpart_edu reads version "
            f"{FORMAT_VERSION}: upgrade gpart_edu or re-save the adapter with this version")
    try:
        config = json.loads(meta["config"])
        targets = [Target(n, k, int(i), int(o), bool(b)) for n, k, i, o, b in json.loads(meta["targets"])]
        method, want_fp, want_sha = meta["method"], meta["fingerprint"], meta["theta_sha256"]
    except (KeyError, ValueError, TypeError) as e:
        raise AdapterFileError(f"{path} has a damaged header ({e}); re-save the adapter") from None
    if fingerprint(targets) != want_fp:
        raise AdapterFileError(f"{path}: target list does not match its fingerprint (file corrupted)")
    if _theta_digest(theta) != want_sha:
        raise AdapterFileError(f"{path}: theta checksum mismatch (file corrupted); re-save the adapter")
    return method, config, targets, theta
