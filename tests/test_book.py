"""The offline book (issue 17): built with warnings as errors, read in Debian's headless Chromium, offline.

* the smoke book (scripts/book.py --mode smoke -> build/book/) builds with Sphinx warnings as errors, from the
  executed copies that tests/test_notebooks.py left in build/executed/smoke/ (tests/conftest.py runs this file
  last); run alone, it executes the notebooks that have no valid copy;
* every built page is stamped; no page references an http(s) script, stylesheet, image or font (and the scan
  itself catches a crafted page that does);
* in headless Chromium, served from 127.0.0.1: pages with math show MathJax output, each lecture page shows
  all its figures (decoded images), no request leaves the machine, no page error. Screenshots go to
  artifacts/book/ (git-ignored);
* course pages come from whatever course/ holds, by glob: a tiny temporary course/ fixture builds into a small
  book, hints folded, solutions only in the instructor edition;
* the execution cache takes tests/test_notebooks.py's first pass and refuses a changed notebook;
* the figure export sees figures closed by plt.show() / plt.close() and flags missing titles, labels, legends.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import sys
import threading
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book  # noqa: E402
import book_exec  # noqa: E402
import book_fighook  # noqa: E402

SITE = ROOT / "build" / "book"
ARTIFACTS = ROOT / "artifacts" / "book"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
PAGE_S = 60


@pytest.fixture(scope="module")
def smoke_book():
    """Build the smoke book (as `make book-smoke` does) and return its build-info."""
    pytest.importorskip("myst_nb", reason="the book extra is not installed: `make book-venv`")
    os.environ.pop("MPLBACKEND", None)
    info = book.build("smoke")
    return json.loads((SITE / "build-info.json").read_text()) | info


@pytest.mark.slow
def test_smoke_book_builds_with_warnings_as_errors_and_every_page_is_stamped(smoke_book):
    assert smoke_book["notebook_errors"] == {}
    pages = smoke_book["page_list"]
    lectures = [p for p in pages if p.startswith("lectures/")]
    assert len(lectures) == len(book_exec.lecture_notebooks()), lectures
    for need in ("index.html", "glossary.html", "references.html", "docs/claims.html"):
        assert need in pages
    commit = smoke_book["commit"]
    for p in pages:
        text = (SITE / p).read_text()
        assert "Built in <b>smoke</b> mode" in text and commit in text and "machine " in text, p


@pytest.mark.slow
def test_no_built_page_loads_an_asset_from_the_web(smoke_book):
    assert book.remote_assets(SITE) == []


def test_remote_asset_scan_catches_scripts_styles_images_and_fonts(tmp_path):
    (tmp_path / "a.html").write_text('<script src="https://cdn.example/x.js"></script>'
                                     '<link rel="stylesheet" href="//cdn.example/x.css">'
                                     '<img src="http://example.org/a.png"><a href="https://ok.example/">a link</a>')
    (tmp_path / "b.css").write_text("@import 'https://fonts.example/x.css';\n"
                                    "@font-face { src: url('https://fonts.example/f.woff2') }")
    (tmp_path / "ok.html").write_text('<script src="_static/x.js"></script><img src="a.png">')
    found = book.remote_assets(tmp_path)
    assert len(found) == 5 and not any(f.startswith("ok.html") for f in found), found


@pytest.mark.slow
def test_widget_cells_show_a_snapshot_and_how_to_run_live(smoke_book):
    staged = ROOT / "build" / "book_src" / "smoke" / "lectures" / "00_quickstart.ipynb"
    nb = nbformat.read(staged, as_version=4)
    explorers = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "widgets." in c.source
                 and any(book.WIDGET_MIME in o.get("data", {}) for o in c.outputs)]
    assert explorers, "notebook 00 has an explorer"
    for i in explorers:
        assert any("image/png" in o.get("data", {}) for o in nb.cells[i].outputs)     # gpart_edu.snapshot
        assert "make lab" in nb.cells[i + 1].source
    html = (SITE / "lectures" / "00_quickstart.html").read_text()
    assert "run the notebook live" in html and "widget-view" not in html


# ----------------------------------------------------------------------------- headless Chromium
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(smoke_book):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(SITE)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    ctx = pw.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium")), executable_path=CHROMIUM,
                                                headless=True, args=CHROMIUM_ARGS,
                                                viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(PAGE_S * 1000)
    try:
        yield ctx
    finally:
        ctx.close()
        pw.stop()


def _expected_images(stem: str) -> int:
    nb = nbformat.read(ROOT / "build" / "book_src" / "smoke" / "lectures" / f"{stem}.ipynb", as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))


def _visit(ctx, base: str, page_path: str, outside: list, errors: list):
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(f"{page_path}: {e}"))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
               else (outside.append(f"{page_path}: {route.request.url}"), route.abort()))
    page.goto(base + page_path, wait_until="load")
    return page


@pytest.mark.slow
@pytest.mark.browser
def test_pages_render_math_and_figures_offline_in_chromium(smoke_book, served, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    outside, errors, report = [], [], {}
    pages = ["index.html", "glossary.html", "references.html", "docs/claims.html"] + \
        [p for p in smoke_book["page_list"] if p.startswith("lectures/")]
    for path in pages:
        page = _visit(browser, served, path, outside, errors)
        n_math = page.locator(".math").count()
        if n_math:
            page.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=PAGE_S * 1000)
        typeset = page.locator("mjx-container").count()
        row = {"math elements": n_math, "typeset by MathJax": typeset}
        if path.startswith("lectures/"):
            stem = Path(path).stem
            want = _expected_images(stem)
            imgs = page.locator(".cell_output img")
            page.wait_for_function(
                "n => [...document.querySelectorAll('.cell_output img')].filter(i => i.complete && "
                "i.naturalWidth > 0).length >= n", arg=want, timeout=PAGE_S * 1000)
            row.update(figures_expected=want, figures_shown=imgs.count())
            assert imgs.count() == want, (path, row)
            if want:
                imgs.first.scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / f"{stem}-figure.png"))
                page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / (path.replace("/", "_").removesuffix(".html") + ".png")))
        report[path] = row
        assert not n_math or typeset > 0, (path, row)
        page.close()
    (ARTIFACTS / "report.json").write_text(json.dumps(report, indent=1))
    assert sum(r["math elements"] for r in report.values()) > 0, "no page has math to render"
    assert not outside, "requests left the machine:\n" + "\n".join(outside[:20])
    assert not errors, "page errors:\n" + "\n".join(errors[:20])


# ---------------------------------------------------------------------------------- course pages
def _course_fixture(root: Path) -> Path:
    c = root / "course"
    (c / "exercises" / "student").mkdir(parents=True)
    (c / "exercises" / "solutions").mkdir(parents=True)
    (c / "questionnaires").mkdir()
    (c / "instructor").mkdir()
    (c / "README.md").write_text("# The course\n\nStart with [exercise 1](exercises/student/ex1_partition.ipynb); "
                                 "background in [lecture 01](../notebooks/01_isometric_partition.ipynb).\n")
    ex = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Exercise 1 · P has orthonormal columns"),
        nbformat.v4.new_code_cell("# TODO: build P for D = 12, d = 3\nP = None"),
        nbformat.v4.new_markdown_cell("**Hint:** every weight belongs to exactly one group.")])
    nbformat.write(ex, c / "exercises" / "student" / "ex1_partition.ipynb")
    sol = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Solution 1 · P has orthonormal columns"),
                                          nbformat.v4.new_code_cell("P = 'SOLUTION-MARKER'")])
    nbformat.write(sol, c / "exercises" / "solutions" / "ex1_partition.ipynb")
    (c / "questionnaires" / "q1.md").write_text(
        "# Questionnaire 1\n\n1. Why is $P^\\top P = I$? See [the course](../README.md) and "
        "[the solution](../exercises/solutions/ex1_partition.ipynb).\n")
    (c / "instructor" / "notes.md").write_text("# Instructor notes\n\nINSTRUCTOR-MARKER\n")
    return c


@pytest.mark.slow
def test_course_pages_come_from_course_by_glob_and_solutions_only_for_instructors(tmp_path):
    pytest.importorskip("myst_nb", reason="the book extra is not installed: `make book-venv`")
    course = _course_fixture(tmp_path)
    built = {}
    for instructor in (False, True):
        out = tmp_path / ("instructor" if instructor else "student")
        info = book.build("smoke", instructor, log=lambda *a: None, out=out, course_root=course, lectures=[],
                          include_docs=False, work=tmp_path / "work")
        built[instructor] = (out, info)
    out, _ = built[False]
    ex = (out / "course" / "exercises" / "student" / "ex1_partition.html").read_text()
    assert "every weight belongs to exactly one group" in ex and "dropdown" in ex    # the hint, folded
    assert (out / "course" / "questionnaires" / "q1.html").exists() and (out / "course" / "README.html").exists()
    student_text = "".join(p.read_text() for p in out.rglob("*.html"))
    assert "SOLUTION-MARKER" not in student_text and "INSTRUCTOR-MARKER" not in student_text
    out_i, _ = built[True]
    assert "SOLUTION-MARKER" in (out_i / "course" / "exercises" / "solutions" / "ex1_partition.html").read_text()
    assert "INSTRUCTOR-MARKER" in (out_i / "course" / "instructor" / "notes.html").read_text()
    assert "instructor edition" in (out_i / "index.html").read_text()


# -------------------------------------------------------------------------------- execution cache
def _tiny_lecture(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 99 · Tiny"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
                                  "ax.plot([0, 1], [0, 1]); ax.set_title('shown'); ax.set_xlabel('x')\nplt.show()"),
        nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0], label='a')\n"
                                  "ax.plot([0, 1], [0, 0.5], label='b')\nax.set_ylabel('y')\nplt.close(fig)"),
        nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.bar([0, 1], [1, 2]); ax.set(title='t', xlabel='x', "
                                  "ylabel='y')\nprint('ok done')")])
    path = folder / "99_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_execution_cache_takes_the_notebook_tests_first_pass_and_refuses_changes(tmp_path, monkeypatch):
    from tests import test_notebooks
    path = _tiny_lecture(tmp_path / "notebooks")
    monkeypatch.setattr(test_notebooks, "NOTEBOOK_DIR", path.parent)
    monkeypatch.setattr(book_exec, "CACHE", tmp_path / "cache")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, c in enumerate(code):                       # what a first pass hands over: executed code cells
        c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"ok cell {i}\n")]
        c.execution_count = i + 1
    test_notebooks.save_executed_copy(path, code, None)
    hit = book_exec.cached(path, "smoke")
    assert hit is not None and hit.metadata[book_exec.KEY]["executed_by"] == "tests/test_notebooks.py"
    assert [c.cell_type for c in hit.cells] == ["markdown", "code", "code", "code"]      # markdown kept
    assert hit.cells[3].outputs[0]["text"] == "ok cell 2\n"
    assert book_exec.cached(path, "default") is None                                     # another mode
    nb.cells[0].source += " (edited)"
    nbformat.write(nb, path)
    assert book_exec.cached(path, "smoke") is None                                        # a changed notebook
    test_notebooks.save_executed_copy(path, code, RuntimeError("pass 1 failed"))         # failures are not kept
    assert book_exec.cached(path, "smoke") is None


def test_figure_export_sees_figures_closed_by_show_and_close_and_checks_their_labels(tmp_path, monkeypatch):
    path = _tiny_lecture(tmp_path / "notebooks")
    monkeypatch.setattr(book_exec, "CACHE", tmp_path / "cache")
    os.environ.pop("MPLBACKEND", None)
    book_exec.execute(path, "smoke", figures_dir=tmp_path / "figs")
    recs = [json.loads(ln) for ln in (tmp_path / "figs" / "99_tiny" / "figures.jsonl").read_text().splitlines()]
    assert len(recs) == 3, recs                           # plt.show() and plt.close() did not hide any figure
    for r in recs:
        assert (tmp_path / "figs" / "99_tiny" / r["png"]).stat().st_size > 0
        assert (tmp_path / "figs" / "99_tiny" / r["svg"]).read_text().lstrip().startswith("<?xml")
    assert recs[0]["problems"] == ["axes 0: no y label"]
    assert recs[1]["problems"] == ["axes 0: no title", "axes 0: no x label", "axes 0: 2 series but no legend"]
    assert recs[2]["problems"] == []
    executed = nbformat.read(book_exec.cache_path(path, "smoke"), as_version=4)
    assert len(executed.cells) == 4 and "book_fighook" not in "".join(c.source for c in executed.cells)
    import book_figures
    ids = book_figures.cell_ids_by_seq(book_exec.cache_path(path, "smoke"))
    assert [ids[r["cell_seq"]] for r in recs] == [c.id for c in executed.cells if c.cell_type == "code"]


def test_plot_helpers_label_their_figures(monkeypatch):
    from matplotlib.figure import Figure
    from gpart_edu import plots
    ax = Figure().subplots()
    plots.plot_bars({"GPart": 1.0, "LoRA": 2.0}, ax=ax, ylabel="held-out perplexity", title="perplexity")
    assert book_fighook.problems(book_fighook.describe(ax.figure)) == []
    ax = Figure().subplots()
    plots.plot_allreduce([{"recipe": "glue", "method": "gpart", "allreduce_bytes": 1e5,
                           "full_ft_allreduce_bytes": 5e8}], ax=ax)
    ax.set_title("all-reduce")
    assert book_fighook.problems(book_fighook.describe(ax.figure)) == []


def test_every_plot_cell_has_a_caption():
    import book_figures
    captions = book_figures.load_captions()
    missing = []
    for path in book_exec.lecture_notebooks():
        nb = nbformat.read(path, as_version=4)
        for c in nb.cells:
            if c.cell_type == "code" and "plot" in c.get("metadata", {}).get("tags", []):
                if not (captions.get(path.stem) or {}).get(c.get("id")):
                    missing.append(f"{path.stem}: {c.get('id')}")
    assert not missing, "plot cells without a caption in book/figures.yml:\n" + "\n".join(missing)


def test_links_to_repository_files_become_text_and_notebook_links_point_at_lecture_pages():
    text = ("see [the README](../README.md), [nb 03](../notebooks/03_loss_landscapes.ipynb#grid), "
            "[landscapes](landscapes.md), [x](../gpart_edu/plots.py) and [site](https://example.org)")
    staged = {"docs/landscapes.md", "course/README.md", "course/exercises/student/ex1.ipynb",
              "lectures/03_loss_landscapes.ipynb"}
    assert book.fix_links(text, "docs/geometry.md", staged) == (
        "see [the README](../index.md), [nb 03](../lectures/03_loss_landscapes.ipynb#grid), "
        "[landscapes](landscapes.md), x (`../gpart_edu/plots.py`) and [site](https://example.org)")
    course = "[course](../README.md), [ex 1](../exercises/student/ex1.ipynb), [sol](../exercises/solutions/ex1.ipynb)"
    assert book.fix_links(course, "course/questionnaires/q1.md", staged) == (
        "[course](../README.md), [ex 1](../exercises/student/ex1.ipynb), sol (`../exercises/solutions/ex1.ipynb`)")


def test_a_slide_deck_has_8_to_15_slides_with_formulas_and_figures_and_loads_nothing_remote(tmp_path):
    import book_slides
    import yaml
    formulas = yaml.safe_load((ROOT / "book" / "slides.yml").read_text())
    assert set(formulas) == {p.stem for p in book_exec.lecture_notebooks()}, "one entry per lecture notebook"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 01 · Title\n\n## 1 · First\n\nOne. Two."),
                                         nbformat.v4.new_code_cell("print('ok x')", outputs=[nbformat.v4.new_output(
                                             "stream", name="stdout", text="ok  x: expected 1; measured 1\n")])])
    stamp = {"banner": "Built in <b>smoke</b> mode"}
    for n_figures in (0, 3, 40):
        figs = [{"id": f"f{i}", "png": f"smoke/01/f{i}.png", "caption": f"caption {i}"} for i in range(n_figures)]
        page, n = book_slides.deck("01_x.ipynb", nb, formulas["01_isometric_partition"], figs, stamp)
        assert book_slides.MIN_SLIDES <= n <= book_slides.MAX_SLIDES, (n_figures, n)
        assert page.count("<section>") == n and "\\[" in page
        shown = page.count("class='fig'")
        assert shown == n_figures if n_figures <= 3 else 3 < shown < n_figures       # many: spread, capped
        (tmp_path / "deck.html").write_text(page)
        assert book.remote_assets(tmp_path) == []
