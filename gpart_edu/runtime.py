"""Run-time switches shared by notebooks, tests and scripts: size mode, device, seeds, versions.

Size mode: the environment variable ``GPART_EDU_MODE`` selects
    smoke    seconds per notebook (what the test suite runs),
    default  a laptop CPU in a few minutes (what a learner gets),
    full     real models / more steps, meant for a GPU.
"""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from . import __version__
from .errors import ConfigError

MODE_VAR = "GPART_EDU_MODE"
MODES = ("smoke", "default", "full")


def mode() -> str:
    """The size mode from ``$GPART_EDU_MODE`` ("default" when unset); invalid values raise.

    Taught in notebooks/00_quickstart.ipynb, section "4 · Train for a few steps".
    """
    value = os.environ.get(MODE_VAR, "default").strip().lower() or "default"
    if value not in MODES:
        raise ConfigError(f"{MODE_VAR}={os.environ.get(MODE_VAR)!r} is not a valid mode; "
                          f"set it to one of {', '.join(MODES)} (or unset it for 'default')")
    return value


def pick(smoke, default, full=None):
    """Return the value for the current mode (``full`` falls back to ``default`` when omitted).

    Taught in notebooks/00_quickstart.ipynb, section "the introduction".
    """
    return {"smoke": smoke, "default": default, "full": default if full is None else full}[mode()]


def device(prefer: str | None = None) -> torch.device:
    """CUDA if available, else CPU. ``prefer`` forces one ("cpu", "cuda", "mps")."""
    if prefer is not None:
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False; use 'cpu'")
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("device 'mps' requested but MPS is not available; use 'cpu'")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def versions() -> dict:
    """Versions of the interpreter and the main libraries, for the first cell of every notebook."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("transformers", "scipy", "matplotlib", "ipywidgets"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "missing"
    out["gpart_edu"] = __version__
    return out


def setup(seed: int = 0, prefer: str | None = None, verbose: bool = True) -> torch.device:
    """First-cell helper: seed everything, pick the device, print mode, device and versions.

    Taught in notebooks/00_quickstart.ipynb, section "the introduction".
    """
    seed_everything(seed)
    dev = device(prefer)
    if verbose:
        v = ", ".join(f"{k} {val}" for k, val in versions().items())
        print(f"mode={mode()}  device={dev}  threads={torch.get_num_threads()}  seed={seed}\n{v}")
    return dev


def check(name: str, expected, measured, ok: bool) -> None:
    """Print one claim as ``expected ... measured ... ok`` and assert it."""
    print(f"{'ok ' if ok else 'FAIL'} {name}: expected {expected}; measured {measured}")
    assert ok, f"claim failed: {name}: expected {expected}, measured {measured}"


def check_close(name: str, expected: float, measured: float, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Check |measured - expected| <= atol + rtol * |expected|, printed and asserted."""
    tol = atol + rtol * abs(expected)
    err = abs(measured - expected)
    check(name, f"{expected:.6g} (tolerance {tol:.1e})", f"{measured:.6g} (error {err:.1e})", err <= tol)
