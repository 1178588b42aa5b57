"""Static PNG snapshots of the explorers, for pages without a kernel (the book, a shared notebook).

``render(box)`` draws an explorer's current state into one PNG: its controls (``description = value``), its
text readouts, and its pictures (``Image`` widgets, ``Output`` widgets' images, a figure kept in
``box.state["figure"]``). ``with_snapshot(fn)`` wraps an explorer factory so that the widget it returns also
offers that PNG in its display bundle: JupyterLab keeps showing the live widget (the widget view ranks first),
while a static renderer (nbconvert, the book's myst-nb with the widget view dropped) shows the picture.
Matplotlib is used through ``matplotlib.figure.Figure`` only (no pyplot), so nothing is shown or leaked.
Seen in the book's pages of notebooks/00_quickstart.ipynb (section "4b · Explore"), 02 (section "7 · Explore"),
03 (section "4 · Explore it yourself") and 05 (section "6 · Live training"): `make book`, README "Book".
"""
from __future__ import annotations

import base64
import functools
import html
import io
import re
import textwrap

PNG_MIME = "image/png"
WRAP = 120            # characters per text line in the snapshot
_TAG = re.compile(r"<[^>]+>")


def _text(value: str) -> str:
    """Plain text of an HTML readout (tags dropped, entities decoded, whitespace collapsed)."""
    s = re.sub(r"<br\s*/?>|</p>|</div>|</li>|</tr>", "\n", value or "", flags=re.I)
    s = html.unescape(_TAG.sub("", s))
    return "\n".join(" ".join(line.split()) for line in s.splitlines() if line.strip())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def collect(widget, found: dict | None = None) -> dict:
    """{'controls': [...], 'texts': [...], 'images': [png bytes, ...]} of ``widget`` and its children."""
    found = found if found is not None else {"controls": [], "texts": [], "images": []}
    name = type(widget).__name__
    if name == "Image":
        if widget.value and (widget.format or "png") == "png":
            found["images"].append(bytes(widget.value))
    elif name in ("HTML", "HTMLMath", "Label"):
        t = _text(widget.value)
        if t:
            found["texts"].append(t)
    elif name == "Output":
        for out in getattr(widget, "outputs", ()):
            data = out.get("data", {})
            if PNG_MIME in data:
                found["images"].append(base64.b64decode(data[PNG_MIME]))
            elif out.get("output_type") == "stream" and out.get("text", "").strip():
                found["texts"].append(out["text"].strip())
    elif hasattr(widget, "children"):
        for child in widget.children:
            collect(child, found)
    elif hasattr(widget, "value") and name not in ("Button",):
        label = getattr(widget, "description", "") or name
        found["controls"].append(f"{label} = {_fmt(widget.value)}")
    return found


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def render(box, width_in: float = 10.0, dpi: int = 100) -> bytes:
    """PNG bytes of ``box``'s current state: controls and readouts as text, then every picture it shows."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread
    found = collect(box)
    state = getattr(box, "state", None)
    if isinstance(state, dict) and state.get("figure") is not None and hasattr(state["figure"], "savefig"):
        found["images"].append(_figure_png(state["figure"]))
    lines = []
    if found["controls"]:
        lines += textwrap.wrap("controls:  " + "  ·  ".join(found["controls"]), WRAP)
    for t in found["texts"]:
        for para in t.splitlines():
            lines += textwrap.wrap(para, WRAP) or [""]
    pictures = [imread(io.BytesIO(png), format="png") for png in found["images"]]
    line_h = 0.2                                                   # inches per text line
    text_h = line_h * (len(lines) + 1)
    pic_h = [width_in * p.shape[0] / p.shape[1] for p in pictures]
    height = text_h + sum(pic_h) + 0.1
    fig = Figure(figsize=(width_in, height), dpi=dpi)
    y = height
    for line in lines:
        y -= line_h
        fig.text(0.01, y / height, line, fontsize=8.5, family="monospace", va="bottom")
    y -= line_h
    for p, h in zip(pictures, pic_h):
        y -= h
        ax = fig.add_axes((0, y / height, 1, h / height))
        ax.imshow(p)
        ax.set_axis_off()
    return _figure_png(fig)


def attach(box):
    """Make ``box`` offer a PNG snapshot of its state beside its widget view when displayed; return it."""
    original = box._repr_mimebundle_

    def bundle(**kwargs):
        data = original(**kwargs)
        if isinstance(data, dict):
            try:
                data[PNG_MIME] = base64.b64encode(render(box)).decode("ascii")
            except Exception as exc:  # noqa: BLE001 -- the live widget must display even if the picture fails
                data["text/plain"] = f"{data.get('text/plain', '')} (no snapshot: {type(exc).__name__}: {exc})"
        return data

    box._repr_mimebundle_ = bundle
    box.snapshot = lambda: render(box)
    return box


def with_snapshot(factory):
    """Wrap an explorer factory: the widget it returns carries ``attach``'s snapshot."""
    @functools.wraps(factory)
    def make(*args, **kwargs):
        return attach(factory(*args, **kwargs))
    return make
