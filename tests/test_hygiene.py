"""Repository hygiene: committed notebooks follow the policy; environment.yml mirrors pyproject.toml.

Notebook policy (docs/notebook_qa.md): notebooks are committed without outputs, in the canonical form
that `make notebooks` (scripts/clean_notebooks.py) writes. Their outputs are produced and checked by
tests/test_notebooks.py (nbclient) and tests/test_browser.py (JupyterLab in Chromium) instead.
"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("clean_notebooks", ROOT / "scripts" / "clean_notebooks.py")
clean_notebooks = importlib.util.module_from_spec(_spec)
sys.modules["clean_notebooks"] = clean_notebooks
_spec.loader.exec_module(clean_notebooks)

NOTEBOOKS = clean_notebooks.notebooks(ROOT)
IDS = [p.stem for p in NOTEBOOKS]
MAX_BYTES = 1_000_000
KNOWN_TAGS = {"plot", "allow-stderr"}          # checked by tests/test_notebooks.py and tests/test_browser.py
BACKEND_OVERRIDE = re.compile(r"matplotlib\.use\(|MPLBACKEND|%matplotlib\s+(?!inline\b)\w")


# ----------------------------------------------------------------------------- notebook policy
def test_every_notebook_in_the_folder_is_covered_by_the_tests():
    found = sorted(p.name for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    assert found == [p.name for p in NOTEBOOKS], ("notebooks must be named notebooks/NN_name.ipynb "
                                                  "(two digits) so the test suite executes them")
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_without_outputs_in_canonical_form(path):
    found = clean_notebooks.problems(path)
    assert not found, f"{path.name}: " + "; ".join(found) + " -- run `make notebooks` and commit"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_small_and_follows_the_cell_conventions(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size:,} bytes (limit 1 MB)"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "runtime.setup(" in code[0].source, \
        f"{path.name}: the first code cell must call `device = runtime.setup(seed=...)`"
    for i, cell in enumerate(nb.cells):
        unknown = set(cell.metadata.get("tags", [])) - KNOWN_TAGS
        assert not unknown, f"{path.name} cell {i}: unknown tags {sorted(unknown)} (known: {sorted(KNOWN_TAGS)})"
        assert not (cell.cell_type == "code" and BACKEND_OVERRIDE.search(cell.source)), \
            f"{path.name} cell {i} overrides the matplotlib backend; plots would silently vanish"


def test_cleaning_strips_outputs_and_volatile_metadata_and_is_a_fixed_point():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# t", metadata={"jp-MarkdownHeadingCollapsed": True}),
        nbformat.v4.new_code_cell("print(1)", execution_count=3, metadata={
            "tags": ["plot"], "scrolled": True, "execution": {"iopub.status.busy": "2026-01-01"}},
            outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")]),
        nbformat.v4.new_code_cell("x = 2")])
    nb.cells[2].id = nb.cells[1].id                                     # duplicate id
    nb.metadata.update({"widgets": {"application/vnd.jupyter.widget-state+json": {}},
                        "language_info": {"name": "python", "version": "3.11.7"},
                        "kernelspec": {"name": "python3", "display_name": "venv", "language": "python"},
                        "execution": {"timeout": 900}})
    dirty = json.dumps(nb, indent=2)                                    # as another editor might
    text = clean_notebooks.canonical_text(dirty, "x.ipynb")
    out = nbformat.reads(text, as_version=4)
    assert out.metadata == {"kernelspec": clean_notebooks.KERNELSPEC, "language_info": {"name": "python"},
                            "execution": {"timeout": 900}}
    assert [c.metadata for c in out.cells] == [{}, {"tags": ["plot"]}, {}]
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert [c.source for c in out.cells] == [c.source for c in nb.cells]
    assert len({c.id for c in out.cells}) == 3
    assert clean_notebooks.canonical_text(text, "x.ipynb") == text      # idempotent
    assert clean_notebooks.canonical_text(dirty, "x.ipynb") == text     # deterministic (ids too)


def test_check_mode_reports_dirty_notebooks_and_rewrite_fixes_them(tmp_path, capsys):
    p = tmp_path / "01_x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "1", execution_count=1, outputs=[nbformat.v4.new_output("execute_result", data={"text/plain": "1"},
                                                                 execution_count=1)])]), p)
    assert clean_notebooks.main(["--check", str(p)]) == 1
    assert "cell 0 has outputs" in capsys.readouterr().out
    assert clean_notebooks.main([str(p)]) == 0
    assert clean_notebooks.main(["--check", str(p)]) == 0 and clean_notebooks.problems(p) == []


# ------------------------------------------------------------- environment.yml == pyproject.toml
def _requirements(lines) -> dict:
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def dependency_mismatches(pyproject: dict, env: dict, makefile: str) -> list[str]:
    """Differences between pyproject.toml (+ the Makefile's pins) and environment.yml, as sentences."""
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    declared = _requirements(project["dependencies"] + extras["lab"] + extras["dev"])
    make_vars = dict(re.findall(r"^(\w+)\s*\??=\s*(.*)$", makefile, re.M))
    asset_deps = _requirements(make_vars["ASSET_DEPS"].split())
    torch_pin = Requirement(make_vars["TORCH_SPEC"].split()[0])
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    out = []
    if "-e ." not in pip:
        out.append("environment.yml does not install the package itself (`-e .`)")
    mirrored = _requirements([x for x in pip if x != "-e ."])
    py = [c.split("=", 1)[1] for c in conda if c.startswith("python=")]
    if not py or not Requirement(f"python{project['requires-python']}").specifier.contains(py[0] + ".0"):
        out.append(f"environment.yml python {py} does not satisfy requires-python {project['requires-python']}")
    for name in sorted(set(declared) | set(asset_deps) | set(mirrored)):
        want = declared.get(name) or asset_deps.get(name)
        have = mirrored.get(name)
        if want is None:
            out.append(f"environment.yml has {have} which pyproject.toml / Makefile ASSET_DEPS do not declare")
        elif have is None:
            out.append(f"environment.yml lacks {want}")
        elif name == "torch":
            pinned = next(iter(have.specifier)).version
            if str(have.specifier) != str(torch_pin.specifier) or not want.specifier.contains(pinned):
                out.append(f"torch: environment.yml {have} must equal the Makefile's {torch_pin} "
                           f"and satisfy pyproject's {want}")
        elif (have.specifier, have.marker and str(have.marker)) != (want.specifier, want.marker and str(want.marker)):
            out.append(f"{name}: environment.yml says {have}, the declaration says {want}")
    return out


def _project_files():
    return (tomllib.loads((ROOT / "pyproject.toml").read_text()),
            yaml.safe_load((ROOT / "environment.yml").read_text()), (ROOT / "Makefile").read_text())


def test_environment_yml_declares_the_same_dependencies_as_pyproject():
    assert dependency_mismatches(*_project_files()) == []


def test_dependency_comparison_detects_drift():
    pyproject, env, makefile = _project_files()
    pip = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    pip[:] = [("scipy>=1.0" if x.startswith("scipy") else x) for x in pip if not x.startswith("tqdm")]
    pip.append("requests>=2")
    found = dependency_mismatches(pyproject, env, makefile)
    assert any(m.startswith("scipy:") for m in found)
    assert any("lacks tqdm" in m for m in found)
    assert any("requests" in m and "do not declare" in m for m in found)
    assert len(found) == 3
