"""Build the offline book: python scripts/book.py --mode smoke|default [--instructor].

1. executed lecture notebooks from the execution cache (scripts/book_exec.py; only missing ones run);
2. a staged Sphinx source in build/book_src/<variant>/: the lectures (widget cells show their PNG snapshot
   and one line on running them live), docs/*.md, whatever of course/ exists (README, student exercises with
   hints folded, questionnaires; instructor notes and solutions only with --instructor), glossary, references,
   an index; every page carries a banner with mode, git commit, date and machine;
3. sphinx-build -W (warnings are errors) into build/book/ (build/book-instructor/ for --instructor), with a
   kept doctree cache and staged files rewritten only when they change, so a rebuild redoes only what changed;
4. a check that no built page loads a script, stylesheet, image or font from http(s).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import posixpath
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book_exec  # noqa: E402

BUILD = ROOT / "build"
MATHJAX = BUILD / "node" / "node_modules" / "mathjax" / "es5"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
LIVE_LINE = ("*A static snapshot of the explorer above, as the notebook left it. To move its controls, run the "
             "notebook live: `make lab`.*")
REMOTE_ASSET = re.compile(
    r"""<(?:script|img|source|iframe)\b[^>]*\bsrc\s*=\s*["']\s*(?:https?:)?//[^"']*["']"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']\s*(?:https?:)?//[^"']*["'][^>]*>"""
    r"""|url\(\s*["']?\s*(?:https?:)?//|@import\s+["']\s*(?:https?:)?//""", re.I)


def variant(mode: str, instructor: bool) -> str:
    return mode + ("-instructor" if instructor else "")


def out_dir(instructor: bool) -> Path:
    return BUILD / ("book-instructor" if instructor else "book")


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def machine() -> str:
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return f"{platform.node()} ({platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {cpu})".strip()


def make_stamp(mode: str, instructor: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    from gpart_edu import __version__
    # the day, not the minute: a stamp that changes every build would make Sphinx rewrite every page
    s = {"mode": mode, "instructor": instructor, "commit": git_commit(), "machine": machine(),
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "version": __version__}
    s["banner"] = (f"Built in <b>{mode}</b> mode{' (instructor edition)' if instructor else ''} · commit "
                   f"<code>{s['commit']}</code> · {s['date']} · machine {s['machine']}")
    return s


def write_if_changed(path: Path, data: bytes | str) -> bool:
    """Write ``data`` unless the file already holds it (keeps the mtime, so Sphinx skips the page)."""
    data = data.encode() if isinstance(data, str) else data
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


# ----------------------------------------------------------------------------------------- staging
def stage_lecture(executed: Path, source: Path, captions: dict | None = None):
    """The executed notebook ready for the book: widget cells show the snapshot and the live line; figure
    cells are followed by their caption (book/figures.yml)."""
    import nbformat
    nb = nbformat.read(executed, as_version=4)
    captions = captions or {}
    nb.metadata.pop("widgets", None)                   # no widget state: the page needs no widget JavaScript
    meta = nb.metadata.get(book_exec.KEY, {})
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type != "code":
            continue
        if any(WIDGET_MIME in o.get("data", {}) and "image/png" in o.get("data", {}) for o in cell.get("outputs", [])):
            cells.append(nbformat.v4.new_markdown_cell(LIVE_LINE))   # an explorer (gpart_edu.snapshot)
        elif captions.get(cell.get("id")) and any("image/png" in o.get("data", {}) for o in cell.outputs):
            cells.append(nbformat.v4.new_markdown_cell(f"**Figure.** {captions[cell.get('id')]}"))
    note = (f"*Outputs computed in **{meta.get('mode', '?')}** mode on {meta.get('date', '?')} "
            f"(executed by {meta.get('executed_by', '?')}); source `notebooks/{source.name}`.*")
    if meta.get("errors"):
        note += ("\n\n:::{warning}\nThis notebook raised an error in this mode; the traceback is shown at the "
                 "failing cell and the cells after it may be incomplete:\n\n"
                 + "\n".join(f"- `{e.splitlines()[0][:200]}`" for e in meta["errors"]) + "\n:::\n")
    first_heading = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"
                          and c.source.lstrip().startswith("# ")), None)
    if first_heading is None:                           # the page needs a title: Sphinx takes the first heading
        cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title_for(source.stem)}"))
        first_heading = 0
    cells.insert(first_heading + 1, nbformat.v4.new_markdown_cell(note))
    original = {id(c) for c in nb.cells}
    for i, c in enumerate(cells):                       # stable ids for the cells this step added
        if id(c) not in original:
            c["id"] = f"book-{i}"
    nb.cells = cells
    return nbformat.writes(nb)


# page titles for notebooks that open without a "# " heading (the notebooks themselves are not edited here)
TITLES = {"01_isometric_partition": "01 · The isometric partition: P by hand, then at scale",
          "02_lora_unilora_geometry": "02 · LoRA and Uni-LoRA geometry: distance ratios and Jacobian spectra"}


def title_for(stem: str) -> str:
    num, _, rest = stem.partition("_")
    return TITLES.get(stem, f"{num} · {rest.replace('_', ' ').capitalize()}")


HINT = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?(hint|tip)\b", re.I)


def stage_exercise(path: Path, rel: str, staged: set) -> str:
    """A course notebook: markdown cells tagged "hint" (or starting with "Hint") fold away; links fixed."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    nb.metadata.setdefault("language_info", {"name": "python"})      # the code cells' highlighting
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    for c in nb.cells:
        tags = c.get("metadata", {}).get("tags", [])
        if c.cell_type == "markdown":
            c.source = fix_links(c.source, rel, staged)
        if c.cell_type == "markdown" and ("hint" in tags or HINT.match(c.source)):
            c.source = f":::{{admonition}} Hint\n:class: dropdown\n\n{c.source}\n:::\n"
        elif c.cell_type == "code" and "hint" in tags:
            c.setdefault("metadata", {})["tags"] = sorted(set(tags) | {"hide-input"})
    return nbformat.writes(nb)


def fix_links(text: str, rel: str, staged: set) -> str:
    """Links of the repository page ``rel`` (staged at the same relative path), for the book: the top README
    → the book's index, lecture notebooks → their pages, other staged pages unchanged; repository files that
    are not in the book (code, tests, solutions in the student edition) become code text, not dead links."""
    here = posixpath.dirname(rel)
    up = "../" * rel.count("/")

    def repl(m):
        label, target = m.group(1), m.group(2)
        if re.match(r"^(https?:|mailto:|#)", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        anchor = "#" + anchor if anchor else ""
        repo = posixpath.normpath(posixpath.join(here, path))
        if repo == "README.md":
            return f"[{label}]({up}index.md{anchor})"
        if repo.startswith("notebooks/") and f"lectures/{posixpath.basename(repo)}" in staged:
            return f"[{label}]({up}lectures/{posixpath.basename(repo)}{anchor})"
        if repo in staged:
            return m.group(0)                            # a page of the book at the same relative place
        return f"{label} (`{path}`)" if label.strip("`") != path else f"`{path}`"
    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", repl, text)


def course_pages(instructor: bool, course: Path | None = None) -> dict:
    """{staged relative path: source path} of the course pages that exist now (course/ lands separately),
    at their repository paths; solutions and instructor notes only for the instructor edition."""
    c = ROOT / "course" if course is None else Path(course)
    pages = {}
    if (c / "README.md").exists():
        pages["course/README.md"] = c / "README.md"
    globs = ["exercises/student/*.ipynb", "exercises/student/*.md", "questionnaires/*.md"]
    if instructor:
        globs += ["instructor/*.md", "instructor/*.ipynb"] + [f"exercises/{sub}/*.ipynb" for sub in
                                                            ("solutions", "solution", "source")]
    for g in globs:
        for p in sorted(c.glob(g)):
            pages[f"course/{p.relative_to(c).as_posix()}"] = p
    return pages


def toctree(caption: str, entries: list[str]) -> str:
    if not entries:
        return ""
    return "```{toctree}\n:maxdepth: 1\n:caption: " + caption + "\n\n" + "\n".join(entries) + "\n```\n\n"


def index_page(stamp: dict, lectures: list[str], docs: list[str], course: dict) -> str:
    course_entries = (["course/README"] if "course/README.md" in course else []) + \
        sorted(k[:-len(Path(k).suffix)] for k in course if k != "course/README.md")
    course_note = "" if course else (
        "The course pages (exercises with hints, questionnaires, instructor notes) appear here once `course/` "
        "exists in the repository: the build includes whatever of it it finds.\n\n")
    return (f"# gpart_edu — the book\n\n"
            f"GPart, LoRA and Uni-LoRA seen and verified: the lecture notebooks with their outputs, the course "
            f"pages, the library's documentation, a glossary and the references — readable without a kernel "
            f"and without a network.\n\n"
            f"The one idea: every method is a map from one flat trainable vector θ to weight updates; GPart's is "
            f"an isometry,\n\n$$\\operatorname{{vec}}(\\Delta W) = P\\,\\theta, \\qquad P^\\top P = I_d, \\qquad "
            f"\\|\\Delta W(\\theta) - \\Delta W(\\theta')\\|_F = \\|\\theta - \\theta'\\|_2 .$$\n\n"
            f"This copy was built in **{stamp['mode']}** mode"
            f"{' (instructor edition, with solutions)' if stamp['instructor'] else ''} from commit "
            f"`{stamp['commit']}` on {stamp['date']}, on {stamp['machine']}. Smoke mode runs tiny sizes "
            f"(seconds per notebook, what CI checks); `make book` runs the default sizes a learner gets.\n\n"
            + course_note
            + toctree("Lectures", [f"lectures/{Path(n).stem}" for n in lectures])
            + toctree("Course", course_entries)
            + toctree("Documentation", [f"docs/{Path(n).stem}" for n in docs])
            + toctree("Reference", ["glossary", "references"]))


def stage(instructor: bool, executed: dict, src: Path, stamp: dict, course_root: Path | None = None,
          include_docs: bool = True) -> list[str]:
    """Write the Sphinx source tree into ``src``; remove staged files that no longer have a source."""
    wanted = {}
    import book_figures
    captions = book_figures.load_captions()
    for name, path in executed.items():
        wanted[f"lectures/{name}"] = stage_lecture(path, book_exec.NOTEBOOK_DIR / name, captions.get(Path(name).stem))
    docs = sorted((ROOT / "docs").glob("*.md")) if include_docs else []
    course = course_pages(instructor, course_root)
    staged = {f"docs/{p.name}" for p in docs} | set(course) | {"glossary.md", "references.md"} | \
        {f"lectures/{name}" for name in executed}
    for p in docs:
        wanted[f"docs/{p.name}"] = fix_links(p.read_text(), f"docs/{p.name}", staged)
    for rel, p in course.items():
        wanted[rel] = stage_exercise(p, rel, staged) if p.suffix == ".ipynb" else \
            fix_links(p.read_text(), rel, staged)
    for name in ("glossary.md", "references.md"):
        wanted[name] = (ROOT / "book" / name).read_text()
    wanted["index.md"] = index_page(stamp, sorted(executed), [p.name for p in docs], course)
    wanted["conf.py"] = (ROOT / "book" / "conf.py").read_text()
    stamp_file = dict(stamp)
    wanted["_stamp.json"] = json.dumps(stamp_file, indent=1)
    changed = [rel for rel, data in wanted.items() if write_if_changed(src / rel, data)]
    for f in src.rglob("*"):
        rel = f.relative_to(src).as_posix()
        if f.is_file() and not rel.startswith("_static/") and rel not in wanted:
            f.unlink()
    static = src / "_static" / "mathjax"
    if not static.exists():
        if not MATHJAX.exists():
            raise SystemExit(f"MathJax is missing ({MATHJAX}); run `make book-assets` (npm install into build/node)")
        shutil.copytree(MATHJAX, static, ignore=shutil.ignore_patterns("sre", "*-full*.js", "*speech*"))
    return changed


def remote_assets(site: Path) -> list[str]:
    """'page: tag' for every script / stylesheet / image / font reference to http(s) in the built site."""
    found = []
    for f in sorted(site.rglob("*")):
        if f.suffix in (".html", ".css") and f.is_file():
            for m in REMOTE_ASSET.finditer(f.read_text(errors="replace")):
                found.append(f"{f.relative_to(site)}: {m.group(0)[:160]}")
    return found


def build(mode: str, instructor: bool = False, log=print, out: Path | None = None, course_root: Path | None = None,
          lectures: list[Path] | None = None, include_docs: bool = True, work: Path | None = None) -> dict:
    """Build the book; returns build-info (pages, seconds). ``lectures=[]`` / ``include_docs=False`` /
    ``course_root`` / ``out`` / ``work`` (staging and doctrees) make a small book for tests."""
    t0 = time.perf_counter()
    executed = book_exec.ensure(mode, lectures, figures_dir=book_exec.figures_dir(mode), log=log) \
        if lectures != [] else {}
    t_exec = time.perf_counter() - t0
    stamp = make_stamp(mode, instructor)
    work = BUILD if work is None else Path(work)
    src = work / "book_src" / variant(mode, instructor)
    changed = stage(instructor, executed, src, stamp, course_root, include_docs)
    out = out_dir(instructor) if out is None else Path(out)
    doctrees = work / "book_doctrees" / variant(mode, instructor)
    built_mode = (out / ".mode").read_text() if (out / ".mode").exists() else ""
    if built_mode != variant(mode, instructor) and out.exists():
        shutil.rmtree(out)                                  # another mode's pages must not linger
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(doctrees),
           str(src), str(out)]
    log(f"sphinx   {len(changed)} staged files changed; " + " ".join(cmd[2:]))
    t1 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"sphinx-build failed (exit {r.returncode}); warnings are errors")
    (out / ".mode").write_text(variant(mode, instructor))
    remote = remote_assets(out)
    if remote:
        raise SystemExit("built pages load assets from the web:\n" + "\n".join(remote[:20]))
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html")
                   if p.name not in ("genindex.html", "search.html") and "_static" not in p.parts)
    info = {"mode": mode, "instructor": instructor, "pages": len(pages), "executed_s": round(t_exec, 1),
            "sphinx_s": round(time.perf_counter() - t1, 1), "total_s": round(time.perf_counter() - t0, 1),
            "changed": len(changed), "index": str(out / "index.html"), "commit": stamp["commit"]}
    failed = {name: nbformat_errors(path) for name, path in executed.items()}
    info["notebook_errors"] = {k: v for k, v in failed.items() if v}
    (out / "build-info.json").write_text(json.dumps({**info, "page_list": pages}, indent=1))
    log(f"book     {info['pages']} pages in {out}/ (execute {info['executed_s']} s, sphinx {info['sphinx_s']} s, "
        f"total {info['total_s']} s); open {out / 'index.html'}")
    for name, errs in info["notebook_errors"].items():
        log(f"ERROR    {name} raised in {mode} mode (shown on its page): " + "; ".join(e[:200] for e in errs))
    return info


def nbformat_errors(path: Path) -> list[str]:
    import nbformat
    return book_exec.errors(nbformat.read(path, as_version=4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build the offline HTML book into build/book/.")
    ap.add_argument("--mode", default="default", choices=["smoke", "default", "full"])
    ap.add_argument("--instructor", action="store_true", help="include instructor notes and solutions")
    a = ap.parse_args(argv)
    info = build(a.mode, a.instructor)
    return 1 if info["notebook_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
