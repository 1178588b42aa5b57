"""Generate the student exercise notebooks from the single-source ones (``make student``).

    python scripts/make_student.py            write course/exercises/student/NN_*.ipynb from source/
    python scripts/make_student.py --check    exit 1 if a committed student notebook is stale

Markers (nbgrader's, so an instructor can run nbgrader on course/exercises/source/ unchanged; nothing here
imports nbgrader):
    ### BEGIN SOLUTION / ### END SOLUTION          in a code cell: the region (markers included) becomes
                                                  ``# YOUR CODE HERE`` + ``raise NotImplementedError()``
                                                  at the indentation of the BEGIN line;
    ### BEGIN HIDDEN TESTS / ### END HIDDEN TESTS  in a grader cell: the region is removed.
Grader cells are tagged ``autograde`` and carry ``metadata.nbgrader`` = {grade: true, grade_id: <exercise id>,
points: <points>, ...}; solution cells carry {solution: true, grade_id: <exercise id>-code}.
``strip`` returns the student notebook; ``regions`` the removed text with where it goes back, so that
``insert(strip(nb), regions(nb))`` is ``nb`` again (tests/test_course.py checks it). Student notebooks are
written in the canonical form of the lecture notebooks (scripts/clean_notebooks.py) plus nbgrader metadata.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "course" / "exercises" / "source"
STUDENT = ROOT / "course" / "exercises" / "student"
MARKERS = {"solution": ("### BEGIN SOLUTION", "### END SOLUTION"),
           "hidden": ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")}
PLACEHOLDER = ("# YOUR CODE HERE", "raise NotImplementedError()")

_spec = importlib.util.spec_from_file_location("clean_notebooks", ROOT / "scripts" / "clean_notebooks.py")
clean_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clean_notebooks)


def _split(lines: list[str], cell_id: str) -> tuple[list[str], list[tuple[int, str, list[str]]]]:
    """Student lines of one cell and its regions [(student line index, kind, original lines)]."""
    out, regions, i = [], [], 0
    while i < len(lines):
        kind = next((k for k, (b, _) in MARKERS.items() if lines[i].strip() == b), None)
        if kind is None:
            if any(m in lines[i] for pair in MARKERS.values() for m in pair):
                raise ValueError(f"cell {cell_id}: marker not alone on its line: {lines[i]!r}")
            out.append(lines[i])
            i += 1
            continue
        end = MARKERS[kind][1]
        j = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == end), None)
        if j is None:
            raise ValueError(f"cell {cell_id}: {MARKERS[kind][0]} without {end}")
        regions.append((len(out), kind, lines[i:j + 1]))
        if kind == "solution":
            indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
            out += [indent + p for p in PLACEHOLDER]
        i = j + 1
    return out, regions


def regions(nb) -> dict[str, list]:
    """{cell id: [(student line index, kind, original lines)]} of every marked region of ``nb``."""
    found = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            reg = _split(cell.source.split("\n"), cell.id)[1]
            if reg:
                found[cell.id] = reg
    return found


def strip(nb):
    """Return the student version of the source notebook ``nb`` (``nb`` is not modified), canonical form."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = "\n".join(_split(cell.source.split("\n"), cell.id)[0])
    return canonical(nb)


def insert(student, found: dict):
    """Put the regions ``found`` (from ``regions``) back into ``student``: the inverse of ``strip``."""
    nb = copy.deepcopy(student)
    for cell in nb.cells:
        if cell.id not in found:
            continue
        lines, out, pos = cell.source.split("\n"), [], 0
        for at, kind, original in found[cell.id]:
            out += lines[pos:at]
            pos = at
            if kind == "solution":
                got = [s.strip() for s in lines[at:at + 2]]
                if got != list(PLACEHOLDER):
                    raise ValueError(f"cell {cell.id}: expected the placeholder at line {at}, found {got}")
                pos += 2
            out += original
        cell.source = "\n".join(out + lines[pos:])
    return canonical(nb)


def replace_solution(nb, exercise: str, code: str, region: int = 0):
    """Return ``nb`` with solution region number ``region`` of exercise ``exercise`` replaced by ``code`` (a wrong
    answer), indented like the region. The markers stay, so the result is still a source notebook."""
    nb = copy.deepcopy(nb)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == f"{exercise}-code"]
    if len(cells) != 1:
        raise ValueError(f"exercise {exercise!r}: expected one solution cell, found {len(cells)}")
    cell = cells[0]
    lines = cell.source.split("\n")
    original = [r for r in _split(lines, cell.id)[1] if r[1] == "solution"][region][2]
    start = [k for k, line in enumerate(lines) if line.strip() == MARKERS["solution"][0]][region]
    indent = original[0][:len(original[0]) - len(original[0].lstrip())]
    body = [indent + line if line.strip() else line for line in code.strip("\n").split("\n")]
    cell.source = "\n".join(lines[:start + 1] + body + lines[start + len(original) - 1:])
    return nb


def canonical(nb):
    """The canonical form of an exercise notebook: the lecture notebooks' (no outputs, stable ids), plus
    each cell's ``nbgrader`` metadata."""
    keep = [c.metadata.get("nbgrader") for c in nb.cells]
    out = clean_notebooks.clean(nb)
    for cell, meta in zip(out.cells, keep):
        if meta is not None:
            cell.metadata["nbgrader"] = copy.deepcopy(meta)
    return out


def write_text(nb) -> str:
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def read(path: Path):
    """The notebook at ``path`` with each cell's source as one string (ids kept exactly as stored)."""
    nb = nbformat.from_dict(json.loads(path.read_text(encoding="utf-8")))
    for cell in nb.cells:
        if isinstance(cell.source, list):
            cell.source = "".join(cell.source)
    return nb


def sources(root: Path = ROOT) -> list[Path]:
    return sorted((root / "course" / "exercises" / "source").glob("[0-9][0-9]_*.ipynb"))


def student_text(path: Path) -> str:
    """What course/exercises/student/<name> must contain for the source notebook ``path``."""
    return write_text(strip(read(path)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a student notebook is stale")
    args = ap.parse_args(argv)
    stale = []
    STUDENT.mkdir(parents=True, exist_ok=True)
    for src in sources():
        want, dest = student_text(src), STUDENT / src.name
        if not dest.exists() or dest.read_text(encoding="utf-8") != want:
            stale.append(dest)
            if not args.check:
                dest.write_text(want, encoding="utf-8")
    extra = sorted(set(p.name for p in STUDENT.glob("*.ipynb")) - set(p.name for p in sources()))
    for name in extra:
        stale.append(STUDENT / name)
        if not args.check:
            (STUDENT / name).unlink()
    for p in stale:
        print(f"{'stale' if args.check else 'wrote'} {p.relative_to(ROOT)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
