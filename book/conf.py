"""Sphinx configuration of the offline book (copied into the staged source by scripts/book.py).

Everything is served from the site itself: MathJax from _static/mathjax (npm package, `make book-assets`),
the theme's own bundled CSS / JS / fonts; no widget JavaScript from a CDN (the explorers show PNG snapshots).
"""
import json
from pathlib import Path

_here = Path(__file__).resolve().parent
STAMP = json.loads((_here / "_stamp.json").read_text())

project = "gpart_edu — the book"
author = "The gpart_edu authors"
copyright = "the gpart_edu authors, MIT licence"
release = STAMP["version"]

extensions = ["myst_nb", "sphinx_togglebutton", "sphinx_exercise", "sphinx.ext.mathjax"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "_stamp.json"]
master_doc = root_doc = "index"

# notebooks arrive executed (scripts/book_exec.py); never execute here
nb_execution_mode = "off"
nb_ipywidgets_js = {}                                     # no require.js / widget manager from a CDN
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None),
                              ("html", "application/vnd.jupyter.widget-state+json", None)]
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

# MathJax 3 from the site (relative to _static)
mathjax_path = "mathjax/tex-mml-chtml.js"
mathjax3_config = {"options": {"enableMenu": False}, "loader": {"load": []}}

# solutions only in the instructor build (sphinx-exercise)
hide_solutions = not STAMP["instructor"]

html_theme = "sphinx_book_theme"
html_title = "gpart_edu"
html_static_path = ["_static"]
html_last_updated_fmt = None
html_theme_options = {
    "announcement": STAMP["banner"],
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_context = {"gpart_stamp": STAMP, "default_mode": "light"}
html_copy_source = False
html_show_sourcelink = False
