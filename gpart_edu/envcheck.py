"""Check the environment: versions, device, offline assets, notebook kernel, Chromium; OK / WARN / FAIL.

    python -m gpart_edu.envcheck               what the notebooks need
    python -m gpart_edu.envcheck --for-tests   also what `make test` needs (dev extras, Debian Chromium)

Exit status 1 when a required item FAILs (each FAIL line says how to fix it); WARN lines never fail.
Requirements come from the installed package metadata, i.e. from pyproject.toml, so they cannot drift.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import assets, runtime

DEFAULT_CHROMIUM = "/usr/bin/chromium"
PYTHON_NAMES = {"python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"}


@dataclass
class Line:
    status: str        # "OK", "WARN", "FAIL", "INFO"
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def _requirements():
    """(core, dev) lists of packaging Requirements declared by the installed gpart_edu.

    The ``lab`` extra (JupyterLab, the kernel pin) counts as core here: the notebooks need it."""
    from packaging.requirements import Requirement
    core, dev = [], []
    for text in md.requires("gpart_edu") or []:
        req = Requirement(text)
        if req.marker is None:
            core.append(req)
        elif "extra" in str(req.marker):
            if req.marker.evaluate({"extra": "lab"}):       # what the notebooks need (make lab)
                core.append(req)
            elif req.marker.evaluate({"extra": "dev"}):     # dev extra (and this Python, if it says so)
                dev.append(req)
        elif req.marker.evaluate():
            core.append(req)
    return core, dev


def _check_requirement(req, required: bool) -> Line:
    bad = "FAIL" if required else "WARN"
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        return Line(bad, req.name, f"not installed (need {req}) -> run `make venv` or pip install '{req}'")
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        return Line(bad, req.name, f"{have} does not satisfy {req} -> run `make venv` or pip install '{req}'")
    return Line("OK", req.name, have)


def check_packages(for_tests: bool) -> list[Line]:
    """Python and every declared dependency (dev extras are required only ``for_tests``)."""
    try:
        dist = md.metadata("gpart_edu")
    except md.PackageNotFoundError:
        return [Line("FAIL", "gpart_edu", "not installed -> run `make venv` (or pip install -e .)")]
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        return [Line("FAIL", "packaging", "not installed (jupyterlab and transformers need it) -> run `make venv`")]
    py = platform.python_version()
    needed = SpecifierSet(dist.get("Requires-Python") or "")
    out = [Line("OK" if needed.contains(py) else "FAIL", "python", f"{py} ({sys.executable}); needs {needed}"),
           Line("OK", "gpart_edu", dist["Version"])]
    core, dev = _requirements()
    out += [_check_requirement(r, True) for r in core]
    out += [_check_requirement(r, for_tests) for r in dev]
    return out


def check_settings() -> list[Line]:
    """GPART_EDU_MODE and the MPLBACKEND leak."""
    out = []
    try:
        out.append(Line("OK", "GPART_EDU_MODE", f"{runtime.mode()} (unset = default)"))
    except ValueError as exc:
        out.append(Line("FAIL", "GPART_EDU_MODE", str(exc)))
    backend = os.environ.get("MPLBACKEND")
    if backend and "inline" not in backend.lower():
        out.append(Line("WARN", "MPLBACKEND", f"{backend!r} is exported: notebook plots will silently vanish "
                                              f"-> unset MPLBACKEND before starting Jupyter"))
    return out


def check_device() -> list[Line]:
    """Which device the notebooks will use (informational)."""
    out = [Line("INFO", "cpu", f"{os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(Line("OK", f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, "
                                               f"CUDA {torch.version.cuda}"))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append(Line("OK", "mps", "Apple GPU available (notebooks use CPU unless told otherwise)"))
    else:
        out.append(Line("INFO", "device", "no GPU: notebooks run on the CPU (default mode is sized for it)"))
    return out


def check_assets() -> list[Line]:
    """The offline models and datasets the notebooks load."""
    return [Line("OK" if ok else "FAIL", f"asset {name}", "installed" if ok else "missing -> run `make venv`")
            for name, ok in assets.available().items()]


def check_notebook_support() -> list[Line]:
    """The widget extension for JupyterLab and the interpreter behind the python3 kernel."""
    out = []
    ext = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "@jupyter-widgets" / "jupyterlab-manager"
    out.append(Line("OK", "widgets in JupyterLab", str(ext)) if ext.is_dir() else
               Line("FAIL", "widgets in JupyterLab", f"{ext} missing: sliders will show as text "
                                                     f"-> pip install 'ipywidgets>=8.1' in this environment"))
    try:
        from jupyter_client.kernelspec import KernelSpecManager
        spec = KernelSpecManager().get_kernel_spec("python3")
    except Exception as exc:  # noqa: BLE001 -- any failure here means notebooks cannot start a kernel
        return out + [Line("FAIL", "python3 kernel", f"not found ({exc}) -> pip install ipykernel")]
    exe = spec.argv[0]
    if exe in PYTHON_NAMES or os.path.realpath(exe) == os.path.realpath(sys.executable):
        return out + [Line("OK", "python3 kernel", f"runs this interpreter ({spec.resource_dir})")]
    try:
        ok = subprocess.run([exe, "-c", "import gpart_edu"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    fix = f"{sys.executable} -m ipykernel install --user --name python3"
    return out + [Line("WARN" if ok else "FAIL", "python3 kernel",
                       f"runs {exe} from {spec.resource_dir}, not {sys.executable}"
                       + ("" if ok else f"; gpart_edu cannot be imported there -> {fix}"))]


def check_chromium(required: bool) -> list[Line]:
    """Debian's Chromium for the browser test (never a browser downloaded by Playwright)."""
    path = os.environ.get("CHROMIUM", DEFAULT_CHROMIUM)
    bad = "FAIL" if required else "WARN"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        alt = shutil.which("chromium") or shutil.which("chromium-browser")
        hint = f" (found {alt}: set CHROMIUM={alt})" if alt and alt != path else ""
        return [Line(bad, "chromium", f"{path} missing{hint} -> `make chromium` as root (apt-get install "
                                      f"chromium); only the browser test needs it")]
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        version = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Line(bad, "chromium", f"{path} does not run: {exc}")]
    if res.returncode != 0 or not version:
        return [Line(bad, "chromium", f"{path} --version exited {res.returncode}: {res.stderr.strip()[-200:]}")]
    return [Line("OK", "chromium", f"{version} ({path})")]


def run_checks(for_tests: bool = False) -> list[Line]:
    """Every check, in the order they are printed."""
    lines = check_packages(for_tests)
    if any(ln.status == "FAIL" and ln.name in ("gpart_edu", "packaging", "torch") for ln in lines):
        return lines                        # the remaining checks import gpart_edu / torch
    return (lines + check_settings() + check_device() + check_assets() + check_notebook_support()
            + check_chromium(for_tests))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpart_edu.envcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--for-tests", action="store_true",
                    help="also require what `make test` needs: the dev extras and Debian's Chromium")
    args = ap.parse_args(argv)
    lines = run_checks(args.for_tests)
    for ln in lines:
        print(ln)
    counts = {s: sum(ln.status == s for ln in lines) for s in ("OK", "WARN", "FAIL")}
    print(f"envcheck: {counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
