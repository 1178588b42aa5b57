"""The book's execution cache: one executed copy of each lecture notebook per size mode, reused while valid.

    build/executed/<mode>/<name>.ipynb     the notebook with its outputs; metadata["gpart_edu_execution"]
                                            holds the sha256 of the source notebook and of the gpart_edu package

A copy is valid while both hashes match the working tree. tests/test_notebooks.py stores its first (clean)
smoke pass here through ``store_from_cells``, so a smoke book built after the notebook tests executes nothing;
``ensure`` executes only the notebooks without a valid copy (with the figure-export hook when asked).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
PACKAGE_DIR = ROOT / "gpart_edu"
CACHE = ROOT / "build" / "executed"
KEY = "gpart_edu_execution"
CELL_TIMEOUT = 1800
FIGURES = ROOT / "build" / "figures"


def figures_dir(mode: str) -> Path:
    """Where executions export their figures (scripts/book_fighook.py; scripts/book_figures.py reads it)."""
    return FIGURES / mode / "_raw"


def lecture_notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_hash(package: Path = PACKAGE_DIR) -> str:
    """sha256 over every .py file of the package (relative path and bytes, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(str(f.relative_to(package)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def cache_path(nb_path: Path, mode: str, cache: Path | None = None) -> Path:
    return (CACHE if cache is None else Path(cache)) / mode / Path(nb_path).name


def stamp(nb_path: Path, mode: str, executed_by: str) -> dict:
    return {"source_sha256": file_hash(nb_path), "package_sha256": package_hash(), "mode": mode,
            "executed_by": executed_by,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def cached(nb_path: Path, mode: str, cache: Path | None = None, pkg: str | None = None):
    """The executed notebook (nbformat node) when its hashes match the working tree, else None."""
    import nbformat
    out = cache_path(nb_path, mode, cache)
    if not out.exists():
        return None
    try:
        nb = nbformat.read(out, as_version=4)
    except Exception:  # noqa: BLE001 -- a truncated or foreign file is simply not a cache hit
        return None
    meta = nb.metadata.get(KEY, {})
    ok = (meta.get("mode") == mode and meta.get("source_sha256") == file_hash(nb_path)
          and meta.get("package_sha256") == (pkg or package_hash()))
    return nb if ok else None


def _write(nb, nb_path: Path, mode: str, executed_by: str, cache: Path, meta: dict | None = None) -> Path:
    import nbformat
    nb.metadata[KEY] = meta or stamp(nb_path, mode, executed_by)
    out = cache_path(nb_path, mode, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)          # atomic: a reader never sees half a notebook
    return out


def store_from_cells(nb_path: Path, code_cells: list, mode: str = "smoke", cache: Path | None = None,
                     executed_by: str = "tests/test_notebooks.py") -> Path:
    """Store the source notebook with the outputs of ``code_cells`` (its code cells, executed, in order)."""
    import nbformat
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if len(code) != len(code_cells):
        raise ValueError(f"{nb_path.name}: {len(code_cells)} executed code cells for {len(code)} in the notebook")
    for cell, done in zip(code, code_cells):
        cell.outputs = done.get("outputs", [])
        cell.execution_count = done.get("execution_count")
    return _write(nb, nb_path, mode, executed_by, cache)


def errors(nb) -> list[str]:
    """'cell <id>: <exception>' for every code cell of ``nb`` with an error output."""
    return [f"cell {c.get('id')}: {o.get('ename')}: {str(o.get('evalue'))[:300]}" for c in nb.cells
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


def kernel_env(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}   # a leaked Agg hides every plot
    env.update(GPART_EDU_MODE=mode, OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def execute(nb_path: Path, mode: str, cache: Path | None = None, figures_dir: Path | None = None) -> Path:
    """Execute ``nb_path`` in a fresh kernel (cwd notebooks/), optionally exporting every figure; store it."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(nb_path, as_version=4)
    by = "scripts/book_exec.py" + (" (figure export)" if figures_dir is not None else "")
    meta = stamp(nb_path, mode, by)          # the hashes of what the kernel will import, taken before it starts
    hook = None
    if figures_dir is not None:
        hook = nbformat.v4.new_code_cell(
            f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); import book_fighook; "
            f"book_fighook.install({str(figures_dir)!r}, {nb_path.stem!r})")
        nb.cells.insert(0, hook)
    # errors do not stop the run: the book shows the failing cell's traceback and says so at the top of the page,
    # and scripts/book.py exits non-zero (a failed claim must not pass silently, nor hide the rest of the book)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(nb_path.parent)}})
    client.execute(env=kernel_env(mode))
    if hook is not None:
        nb.cells.remove(hook)
    meta["errors"] = errors(nb)
    return _write(nb, nb_path, mode, by, cache, meta)


def ensure(mode: str, notebooks: list[Path] | None = None, cache: Path | None = None, figures_dir: Path | None = None,
           require_figures: bool = False, log=print) -> dict:
    """{name: executed path}: reuse every valid cached copy, execute the rest. With ``figures_dir`` the
    notebooks executed here also export their figures there (scripts/book_fighook.py); with
    ``require_figures`` a cached copy counts only if its figures were exported with it."""
    pkg = package_hash()
    out = {}
    for path in notebooks or lecture_notebooks():
        hit = cached(path, mode, cache, pkg)
        if hit is not None and require_figures:
            exported = figures_dir is not None and (Path(figures_dir) / path.stem / "figures.jsonl").exists()
            hit = hit if exported and "figure export" in hit.metadata[KEY].get("executed_by", "") else None
        if hit is not None:
            log(f"cached   {mode:7s} {path.name} (executed by {hit.metadata[KEY]['executed_by']})")
            out[path.name] = cache_path(path, mode, cache)
            continue
        log(f"execute  {mode:7s} {path.name} ...")
        t0 = datetime.datetime.now()
        out[path.name] = execute(path, mode, cache, figures_dir)
        log(f"executed {mode:7s} {path.name} in {(datetime.datetime.now() - t0).total_seconds():.0f} s")
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="smoke", choices=["smoke", "default", "full"])
    ap.add_argument("notebooks", nargs="*", type=Path)
    a = ap.parse_args()
    print(json.dumps({k: str(v) for k, v in ensure(a.mode, [p.resolve() for p in a.notebooks] or None).items()},
                     indent=1))
    sys.exit(0)
