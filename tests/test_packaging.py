"""Packaging facts that need no install: the version in one place, `python -m gpart_edu`, `--version`, the verify
source options, LICENSE / CITATION / CHANGELOG, the extras, and the Makefile's torch install path (driven with a
stub interpreter: which pip commands it runs with and without an NVIDIA GPU, and its fallback)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import gpart_edu
from gpart_edu import cli

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_lives_in_one_place_and_the_cli_prints_it(capsys):
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gpart_edu.__version__"}
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gpart-edu {gpart_edu.__version__}"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == gpart_edu.__version__


def test_python_dash_m_gpart_edu_is_the_cli():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "gpart_edu", "--version"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == f"gpart-edu {gpart_edu.__version__}", out.stderr
    bad = subprocess.run([sys.executable, "-m", "gpart_edu", "verify"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert bad.returncode == 2 and "give --model (with --method) or --adapter" in bad.stderr


def test_verify_rejects_model_with_an_adapter_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", "--adapter", str(tmp_path / "a.safetensors"), "--model", "minilm"])
    assert e.value.code == 2 and "an adapter file names its own layers" in capsys.readouterr().err


def test_license_citation_and_changelog():
    assert PYPROJECT["project"]["license"] == "MIT" and PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT" and "gpart_edu" in citation["title"]
    paper = citation["references"][0]
    assert "arXiv:2605.14841" in str(paper["identifiers"]) and paper["title"].startswith("GPart")
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()


def test_notebook_servers_are_an_extra_and_what_is_imported_is_declared():
    core = {re.split(r"[<>=!~; ]", r)[0] for r in PYPROJECT["project"]["dependencies"]}
    assert not {"jupyterlab", "ipykernel"} & core, "pip install gpart_edu must not replace a notebook's kernel"
    assert {"jupyterlab", "ipykernel"} <= {re.split(r"[<>=!~; ]", r)[0] for r in PYPROJECT["project"]
                                          ["optional-dependencies"]["lab"]}
    assert "accelerate" in core and "torch>=2.6" in PYPROJECT["project"]["dependencies"]
    assert 'pip install -q -e ".[dev,lab]"' in (ROOT / "Makefile").read_text()
    requires = PYPROJECT["build-system"]["requires"]
    assert requires == ["setuptools>=77"], "tests/test_wheel.py checks this floor builds and the one below not"


# ---------------------------------------------------------------------------- the Makefile's torch path
STUB = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in *download.pytorch.org*) exit {cpu_index_rc};; esac
exit 0
"""


def make_venv(tmp_path, *, gpu: bool, cpu_index_rc: int, torch_spec: str | None = None) -> list[str]:
    """Run `make venv` with a stub .venv/bin/python that logs its arguments; return the pip commands it ran."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv, bin_dir, log = tmp_path / "venv", tmp_path / "fakebin", tmp_path / "log"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    py = venv / "bin" / "python"
    py.write_text(STUB.format(log=log, cpu_index_rc=cpu_index_rc))
    py.chmod(0o755)
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    path = f"{bin_dir}:" + ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists())
    cmd = ["make", "-s", "venv", f"VENV={venv}"] + ([f"TORCH_SPEC={torch_spec}"] if torch_spec else [])
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_SPEC")}
    out = subprocess.run(cmd, cwd=ROOT, env={**env, "PATH": path}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return [ln for ln in log.read_text().splitlines() if "torch" in ln and "install" in ln]


def test_make_venv_without_gpu_takes_the_cpu_index_and_falls_back_when_unreachable(tmp_path):
    reachable = make_venv(tmp_path / "a", gpu=False, cpu_index_rc=0)
    assert reachable == ["-m pip install -q --timeout 20 --retries 1 --index-url https://download.pytorch.org/whl/cpu "
                         "torch==2.13.0"]
    unreachable = make_venv(tmp_path / "b", gpu=False, cpu_index_rc=1)
    assert unreachable == [reachable[0], "-m pip install -q torch==2.13.0"]


def test_make_venv_with_a_gpu_or_an_explicit_index_takes_torch_spec_as_given(tmp_path):
    assert make_venv(tmp_path / "a", gpu=True, cpu_index_rc=1) == ["-m pip install -q torch==2.13.0"]
    spec = "torch==2.13.0 --index-url https://example.invalid/cu128"
    assert make_venv(tmp_path / "b", gpu=False, cpu_index_rc=1, torch_spec=spec) == [f"-m pip install -q {spec}"]
