"""One reveal.js deck per lecture notebook: python scripts/book_slides.py --mode default|smoke.

Each deck (build/slides/<notebook>.html, 8–15 slides) has: a title slide with the build stamp, the key formulas
of book/slides.yml (LaTeX, typeset by MathJax), the notebook's sections, the figures exported by
`make figures` (build/figures/<mode>/manifest.json) with their captions, the checked claims the executed
notebook printed, and how to run it. reveal.js and MathJax are copied from the npm packages in build/node into
build/slides/_assets: the decks load nothing from the web.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book  # noqa: E402
import book_exec  # noqa: E402

SLIDES = ROOT / "build" / "slides"
NODE = ROOT / "build" / "node" / "node_modules"
MIN_SLIDES, MAX_SLIDES = 8, 15
CLAIM = re.compile(r"^ok +\S.*$", re.M)


def copy_assets(out: Path) -> None:
    assets = out / "_assets"
    for src, dest, ignore in ((NODE / "reveal.js" / "dist", assets / "reveal", None),
                              (NODE / "reveal.js" / "plugin" / "math", assets / "plugin-math", None),
                              (NODE / "mathjax" / "es5", assets / "mathjax",
                               shutil.ignore_patterns("sre", "*-full*.js", "*speech*"))):
        if not src.exists():
            raise SystemExit(f"{src} is missing; run `make book-assets` (npm install into build/node)")
        if not dest.exists():
            shutil.copytree(src, dest, ignore=ignore)


def notebook_outline(nb) -> tuple[str, list[tuple[str, str]]]:
    """(title, [(section heading, its first sentence)]) from the notebook's markdown."""
    title, sections = "", []
    for c in nb.cells:
        if c.cell_type != "markdown":
            continue
        for block in re.split(r"(?m)^(?=#{1,2} )", c.source):
            m = re.match(r"^(#{1,2}) +(.*)", block)
            if not m:
                continue
            body = " ".join(block.split("\n", 1)[1:]).strip()
            first = re.split(r"(?<=[.!?])\s", re.sub(r"\s+", " ", body), maxsplit=1)[0] if body else ""
            if m.group(1) == "#" and not title:
                title = m.group(2).strip()
            elif m.group(1) == "##":
                sections.append((m.group(2).strip(), first[:300]))
    return title, sections


def claims(nb, n: int = 8) -> list[str]:
    out = [m.group(0) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
           if o.get("output_type") == "stream" for m in CLAIM.finditer(o.get("text", ""))]
    return out[:n]


def _md(text: str) -> str:
    """Escape text for HTML, keeping `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def deck(name: str, nb, formulas: list, figures: list, stamp: dict) -> tuple[str, int]:
    title, sections = notebook_outline(nb)
    slides = [f"<section><h2>{_md(title or name)}</h2><p>gpart_edu · <code>notebooks/{name}</code></p>"
              f"<p class='stamp'>{stamp['banner']}</p></section>"]
    for f in formulas:
        items = "".join(f"<li>{_md(t)}</li>" for t in f.get("text", []))
        maths = "".join(f"<div class='formula'>\\[{m}\\]</div>" for m in f.get("math", []))
        slides.append(f"<section><h3>{_md(f['title'])}</h3>{maths}<ul>{items}</ul></section>")
    if sections:
        slides.append("<section><h3>In this notebook</h3><ol>" + "".join(
            f"<li>{_md(h)}</li>" for h, _ in sections[:10]) + "</ol></section>")
    room = MAX_SLIDES - len(slides) - 3
    if len(figures) > room:                               # keep the figures evenly spread over the notebook
        figures = [figures[round(i * (len(figures) - 1) / max(room - 1, 1))] for i in range(room)]
    for fig in figures:
        slides.append(f"<section><img class='fig' src='../figures/{fig['png']}' alt='{html.escape(fig['id'])}'>"
                      f"<p class='caption'>{_md(fig['caption'] or fig['id'])}</p></section>")
    extra = [s for s in sections if s[1]]
    while len(slides) < MIN_SLIDES - 3 and extra:          # short on figures: one slide per section
        h, first = extra.pop(0)
        slides.append(f"<section><h3>{_md(h)}</h3><p>{_md(first)}</p></section>")
    lines = claims(nb)
    if lines:
        slides.append("<section><h3>Checked when it runs</h3><pre class='claims'>" +
                      html.escape("\n".join(ln[:110] for ln in lines)) + "</pre></section>")
    slides.append(f"<section><h3>Run it</h3><pre>make lab        # then open notebooks/{name}\n"
                  f"GPART_EDU_MODE=smoke  # seconds; default: a laptop CPU; full: a GPU\n"
                  f"make book       # the offline book with every output</pre></section>")
    slides.append(f"<section><h3>Read more</h3><ul><li>the book page of this notebook: "
                  f"<code>build/book/lectures/{Path(name).stem}.html</code></li><li>every claim and the test that pins "
                  f"it: <code>docs/claims.md</code></li><li>the papers: the book's References page</li></ul></section>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or name)} — slides</title>
<link rel="stylesheet" href="_assets/reveal/reset.css"><link rel="stylesheet" href="_assets/reveal/reveal.css">
<link rel="stylesheet" href="_assets/reveal/theme/white.css">
<style>.reveal img.fig{{max-height:62vh;max-width:95%}} .reveal .caption{{font-size:0.5em}}
.reveal .stamp{{font-size:0.4em;color:#555}} .reveal pre{{font-size:0.42em;box-shadow:none}}
.reveal ul,.reveal ol{{font-size:0.65em}} .reveal .formula{{font-size:0.8em}}</style></head>
<body><div class="reveal"><div class="slides">
{chr(10).join(slides)}
</div></div>
<script src="_assets/reveal/reveal.js"></script><script src="_assets/plugin-math/math.js"></script>
<script>Reveal.initialize({{hash: true, mathjax3: {{mathjax: '_assets/mathjax/tex-mml-chtml.js'}},
plugins: [RevealMath.MathJax3]}});</script>
</body></html>
"""
    return page, len(slides)


def build(mode: str, log=print) -> dict:
    import nbformat
    import yaml
    SLIDES.mkdir(parents=True, exist_ok=True)
    copy_assets(SLIDES)
    manifest_path = ROOT / "build" / "figures" / mode / "manifest.json"
    figures = json.loads(manifest_path.read_text()) if manifest_path.exists() else []
    if not figures:
        log(f"no figure manifest for mode {mode} ({manifest_path}): decks without figures; run `make figures`")
    formulas = yaml.safe_load((ROOT / "book" / "slides.yml").read_text()) or {}
    stamp = book.make_stamp(mode, False)
    executed = book_exec.ensure(mode, log=log)
    counts = {}
    for name, path in sorted(executed.items()):
        nb = nbformat.read(path, as_version=4)
        stem = Path(name).stem
        page, n = deck(name, nb, formulas.get(stem, []), [f for f in figures if f["notebook"] == name], stamp)
        (SLIDES / f"{stem}.html").write_text(page)
        counts[stem] = n
        log(f"slides   {stem}.html: {n} slides")
    (SLIDES / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>gpart_edu slides</title><h1>gpart_edu slides</h1><ul>"
        + "".join(f"<li><a href='{s}.html'>{s}</a> ({n} slides)</li>" for s, n in counts.items()) + "</ul>")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build one reveal.js deck per lecture notebook in build/slides/.")
    ap.add_argument("--mode", default="default", choices=["smoke", "default", "full"])
    counts = build(ap.parse_args(argv).mode)
    bad = {k: n for k, n in counts.items() if not MIN_SLIDES <= n <= MAX_SLIDES}
    if bad:
        print(f"decks outside {MIN_SLIDES}–{MAX_SLIDES} slides: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
