"""The course kit (course/): graded exercises that fail without the solution and pass with it.

Single source: course/exercises/source/NN_*.ipynb with nbgrader's markers; `make student` writes
course/exercises/student/ (scripts/make_student.py). Checked here:
  * every source notebook runs clean in smoke mode, in a real kernel (nbclient);
  * every grader fails on the student version -- with the visible and with the hidden tests -- and only with
    NotImplementedError or AssertionError, while every other cell of the student version runs;
  * stripping then re-inserting the marked regions reproduces the source exactly;
  * the known wrong answers of course/exercises/mistakes/ are rejected, each with its hint;
  * no solution text in a student file; student files not stale; generating them is idempotent;
  * >= 24 graded exercises, >= 2 per lecture notebook 00-06, grader metadata complete.
Student and mistake variants run in-process (exec per cell, fresh namespace): no kernel start per variant.
Cost (measured 2026-12-05 on the 2-core CI-class machine while shared, load average ~6): 58 tests in 2 min 38 s,
of which 2 min 16 s are the seven kernels of the source notebooks (marked slow; 13-33 s each).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_student", ROOT / "scripts" / "make_student.py")
make_student = importlib.util.module_from_spec(_spec)
sys.modules["make_student"] = make_student
_spec.loader.exec_module(make_student)

SOURCES = make_student.sources(ROOT)
IDS = [p.stem for p in SOURCES]
MISTAKES = sorted((ROOT / "course" / "exercises" / "mistakes").glob("*.txt"))
ALLOWED = (NotImplementedError, AssertionError)


def graders(nb):
    return [c for c in nb.cells if "autograde" in c.metadata.get("tags", [])]


def run_in_process(nb, stop_after: str | None = None) -> dict:
    """Execute the code cells of ``nb`` in one fresh namespace; {cell id: exception or None}.

    A cell's exception is recorded and execution continues (as a student running all cells would see)."""
    ns = {"__name__": "__main__"}
    out = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                exec(compile(cell.source, f"<{cell.id}>", "exec"), ns)
            out[cell.id] = None
        except Exception as e:  # noqa: BLE001 -- the point is to record what a cell raises
            out[cell.id] = e
        if cell.id == stop_after:
            break
    return out


@pytest.fixture(autouse=True)
def _smoke_mode(monkeypatch):
    monkeypatch.setenv("GPART_EDU_MODE", "smoke")


# ------------------------------------------------------------------------------------ structure
def test_at_least_24_graded_exercises_two_per_lecture_notebook_with_metadata():
    assert [p.name[:2] for p in SOURCES] == [f"{i:02d}" for i in range(7)], [p.name for p in SOURCES]
    total, ids = 0, set()
    for path in SOURCES:
        nb = make_student.read(path)
        gs = graders(nb)
        assert len(gs) >= 2, f"{path.name}: {len(gs)} graded exercises (need >= 2)"
        for c in gs:
            meta = c.metadata.get("nbgrader", {})
            assert meta.get("grade") is True and meta.get("points", 0) > 0 and meta.get("grade_id"), \
                f"{path.name} cell {c.id}: grader needs nbgrader metadata grade/grade_id/points"
            assert meta["grade_id"] not in ids, f"duplicate exercise id {meta['grade_id']}"
            ids.add(meta["grade_id"])
            assert c.id == meta["grade_id"]
            sol = [s for s in nb.cells if s.metadata.get("nbgrader", {}).get("grade_id") == meta["grade_id"] + "-code"]
            assert len(sol) == 1 and "### BEGIN SOLUTION" in sol[0].source, f"{meta['grade_id']}: no solution cell"
            assert "### BEGIN SOLUTION" not in c.source
        for c in nb.cells:
            if "### BEGIN SOLUTION" in c.source:
                assert c.metadata.get("nbgrader", {}).get("solution") is True, f"{path.name} {c.id}"
                # solutions live in function bodies, so a stub never leaves a name undefined for the grader
                for at, kind, lines in make_student._split(c.source.split("\n"), c.id)[1]:
                    if kind == "solution":
                        assert lines[0].startswith(" "), f"{path.name} {c.id}: a solution region must be indented"
        total += len(gs)
    assert total >= 24, f"{total} graded exercises (need >= 24)"


# --------------------------------------------------------------------------- strip and re-insert
@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_strip_then_insert_reproduces_the_source_exactly(path):
    text = path.read_text(encoding="utf-8")
    nb = make_student.read(path)
    assert make_student.write_text(make_student.canonical(nb)) == text, f"{path.name} is not in canonical form"
    student = make_student.strip(nb)
    back = make_student.insert(student, make_student.regions(nb))
    assert make_student.write_text(back) == text


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_student_file_is_current_and_holds_no_solution_text(path):
    dest = ROOT / "course" / "exercises" / "student" / path.name
    assert dest.exists(), f"{dest.relative_to(ROOT)} missing: run `make student`"
    want = make_student.student_text(path)
    assert dest.read_text(encoding="utf-8") == want, f"{dest.name} is stale: run `make student` and commit"
    # idempotent: generating from the generated text changes nothing
    again = make_student.write_text(make_student.strip(make_student.read(dest)))
    assert again == want
    student = dest.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in student
    # independent of make_student: the raw JSON on disk vs the source with its marked regions cut out by a regex
    visible = "\n".join("".join(c["source"]) for c in json.loads(student)["cells"])
    raw = ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    cut = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n.*?### END \1", re.S)
    public = "\n".join(cut.sub("", src) for src in raw)
    n_checked = 0
    for src in raw:
        for m in cut.finditer(src):
            for line in m.group(0).split("\n")[1:-1]:
                s = line.strip()
                if len(s) >= 12 and not s.startswith("#") and s not in public:
                    n_checked += 1
                    assert s not in visible, f"{path.name}: solution/hidden text leaked into the student file: {s!r}"
    assert n_checked >= 2, f"{path.name}: no solution line to check"


def test_make_student_check_reports_nothing_stale():
    assert make_student.main(["--check"]) == 0


# ---------------------------------------------------------------------------- running the notebooks
@pytest.mark.slow                          # 15-30 s each: a kernel, torch and (00, 05, 06) transformers
@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_source_notebook_runs_clean_in_smoke_mode(path, tmp_path):
    from nbclient import NotebookClient
    nb = make_student.read(path)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(GPART_EDU_MODE="smoke", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with _patched_environ(env):
        client.execute()
    for c in graders(nb):
        text = "".join(o.get("text", "") for o in c.outputs if o.get("output_type") == "stream")
        assert re.search(r"^ok ", text, re.M), f"{path.name} {c.id}: the grader printed no passing claim"
        assert "FAIL" not in text


@contextlib.contextmanager
def _patched_environ(env):
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_every_grader_fails_on_the_student_version_only_with_allowed_errors(path, hidden):
    source = make_student.read(path)
    student = make_student.strip(source)
    if hidden:                              # what nbgrader's autograde runs: the source's graders
        by_id = {c.id: c for c in graders(source)}
        for c in student.cells:
            if c.id in by_id:
                c.source = by_id[c.id].source
    result = run_in_process(student)
    grader_ids = {c.id for c in graders(student)}
    for cell_id, exc in result.items():
        if cell_id in grader_ids:
            assert exc is not None, f"{path.name} {cell_id}: the grader passes without a solution"
            assert isinstance(exc, ALLOWED), f"{path.name} {cell_id}: {type(exc).__name__}: {exc}"
        else:
            assert exc is None, f"{path.name} {cell_id} fails in the student version: {type(exc).__name__}: {exc}"


def _mistake(path: Path) -> tuple[str, str, str, int]:
    """(exercise id, expected hint, wrong code, solution region number) of a mistakes/*.txt file."""
    text = path.read_text(encoding="utf-8")
    meta = dict(re.findall(r"^# (exercise|hint|region): (.*)$", text, re.M))
    code = "\n".join(line for line in text.split("\n") if not re.match(r"^# (exercise|hint|region): ", line))
    return meta["exercise"], meta["hint"], code, int(meta.get("region", 0))


def test_there_are_known_mistakes_for_every_notebook():
    nbs = {_mistake(p)[0][2:4] for p in MISTAKES}
    assert nbs == {f"{i:02d}" for i in range(7)}, sorted(nbs)


@pytest.mark.parametrize("mistake", MISTAKES, ids=[p.stem for p in MISTAKES])
def test_known_wrong_answer_is_rejected_with_its_hint(mistake):
    exercise, hint, code, region = _mistake(mistake)
    path = next(p for p in SOURCES if p.name.startswith(exercise[2:4]))
    nb = make_student.replace_solution(make_student.read(path), exercise, code, region)
    result = run_in_process(nb, stop_after=exercise)
    exc = result[exercise]
    assert isinstance(exc, AssertionError), f"{mistake.name}: the grader did not reject it ({exc!r})"
    assert hint in str(exc), f"{mistake.name}: expected the hint {hint!r}, got {exc}"
    others = {k: v for k, v in result.items() if k != exercise and v is not None}
    assert not others, f"{mistake.name}: other cells failed: {others}"


# ----------------------------------------------- what the lecture widgets and figures promise learners (point 5)
def test_method_colours_are_fixed_whatever_the_order_or_the_label():
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np
    from gpart_edu import plots
    ratios = {"lora (r=2)": {0.1: np.array([0.1, 0.2]), 1.0: np.array([1.0, 2.0])},
              "GPart": {0.1: np.ones(2), 1.0: np.ones(2)}, "Uni-LoRA": {0.1: np.ones(2), 1.0: np.ones(2)}}
    ax = plots.plot_ratio_vs_norm(ratios)
    got = {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for line in ax.lines}
    want = {k: matplotlib.colors.to_hex(plots.METHOD_COLORS[m]) for k, m in
            (("lora (r=2)", "lora"), ("GPart", "gpart"), ("Uni-LoRA", "unilora"))}
    assert got == want
    costs = [{"recipe": m, "method": m, "allreduce_bytes": 10, "full_ft_allreduce_bytes": 100}
             for m in ("lora", "unilora", "gpart")]
    bars = plots.plot_allreduce(costs).patches
    assert [matplotlib.colors.to_hex(b.get_facecolor()) for b in bars] == \
        [matplotlib.colors.to_hex(plots._METHOD_STYLE[m][1]) for m in ("lora", "unilora", "gpart")]
    assert "‖θ‖" in ax.get_xlabel()
    matplotlib.pyplot.close("all")


def test_isometry_explorer_recomputes_once_per_drag_and_shows_errors_in_the_widget(monkeypatch):
    from gpart_edu import widgets
    box = widgets.isometry_explorer(n_pairs=10)
    sliders = [c for c in box.controls.values() if hasattr(c, "continuous_update")]
    assert sliders and all(not c.continuous_update for c in sliders)   # a drag sends one value, on release
    seen = []

    def broken(*args):
        seen.append(box.children[-2].value)                             # the readout while computing
        raise RuntimeError("measurement exploded")
    monkeypatch.setattr(widgets, "explorer_measure", broken)
    box.controls["seed"].value = 3                                      # must not raise into the kernel
    assert seen == [widgets.BUSY_HTML]
    readout = box.children[-2].value
    assert "error" in readout and "RuntimeError: measurement exploded" in readout
    assert box.result == {"error": "RuntimeError: measurement exploded"}


def test_landscape_explorer_shows_callback_errors_in_the_widget(monkeypatch):
    import torch
    from torch import nn
    from gpart_edu import widgets
    from gpart_edu.lab import landscape
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 4, generator=g), torch.randint(0, 2, (60,), generator=g)
    box = widgets.landscape_explorer(problem=(lambda: nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)),
                                              (x, y), (x, y)), d_values=(4, 8), steps=3, draw=False)
    assert box.state["error"] is None
    monkeypatch.setattr(landscape, "grid", lambda *a, **k: (_ for _ in ()).throw(ValueError("no grid today")))
    box.controls["resolution"].value = 7
    status = [c for c in box.children if "gpart-explorer-readout" in c._dom_classes][0]
    assert "ValueError: no grid today" in status.value and isinstance(box.state["error"], ValueError)
