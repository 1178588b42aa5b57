"""Static snapshots of the explorers (gpart_edu/snapshot.py), driven without a kernel."""
from __future__ import annotations

import base64
import io

import pytest

ipywidgets = pytest.importorskip("ipywidgets")

from gpart_edu import snapshot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(color: str) -> bytes:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2, 1))
    fig.patch.set_facecolor(color)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _box():
    W = ipywidgets
    slider = W.IntSlider(value=64, min=1, max=100, description="d")
    readout = W.HTML("<b>gpart</b>: ratio 1 &middot; cond 1")
    return W.VBox([W.HBox([W.Dropdown(options=["gpart", "lora"], value="gpart", description="method"), slider]),
                   readout, W.Image(value=_png("red"), format="png"), W.Button(description="Start")])


def _size(png: bytes) -> tuple[int, int]:
    from matplotlib.image import imread
    a = imread(io.BytesIO(png), format="png")
    return a.shape[1], a.shape[0]


def test_collect_reads_controls_readouts_and_pictures():
    found = snapshot.collect(_box())
    assert found["controls"] == ["method = gpart", "d = 64"]
    assert found["texts"] == ["gpart: ratio 1 · cond 1"]
    assert len(found["images"]) == 1 and found["images"][0].startswith(PNG_MAGIC)


def test_render_is_a_png_that_follows_the_state():
    box = _box()
    one = snapshot.render(box)
    assert one.startswith(PNG_MAGIC)
    box.children[0].children[1].value = 65
    assert snapshot.render(box) != one                        # the controls are drawn
    box.children[2].value = b""                               # no picture: a shorter snapshot
    assert _size(snapshot.render(box))[1] < _size(one)[1]


def test_attach_adds_the_snapshot_beside_the_live_widget_view():
    from IPython.core.formatters import DisplayFormatter
    box = snapshot.attach(_box())
    data, _ = DisplayFormatter().format(box)
    assert "application/vnd.jupyter.widget-view+json" in data       # JupyterLab still shows the live widget
    assert base64.b64decode(data["image/png"]).startswith(PNG_MAGIC)
    assert box.snapshot().startswith(PNG_MAGIC)


def test_a_failing_snapshot_never_breaks_the_live_widget(monkeypatch):
    box = snapshot.attach(_box())
    monkeypatch.setattr(snapshot, "render", lambda b: (_ for _ in ()).throw(RuntimeError("boom")))
    data = box._repr_mimebundle_()
    assert "image/png" not in data and "no snapshot: RuntimeError: boom" in data["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in data


def test_a_figure_kept_in_box_state_is_drawn():
    from matplotlib.figure import Figure
    box = _box()
    box.children[2].value = b""
    plain = snapshot.render(box)
    fig = Figure(figsize=(4, 3))
    fig.subplots().plot([0, 1], [1, 0])
    box.state = {"figure": fig}
    assert _size(snapshot.render(box))[1] > _size(plain)[1]


def test_every_explorer_offers_a_snapshot():
    from gpart_edu import widgets
    for name in ("theta_scale_explorer", "landscape_explorer", "isometry_explorer", "live_training"):
        fn = getattr(widgets, name)
        assert fn.__wrapped__.__name__ == name and fn.__doc__ == fn.__wrapped__.__doc__
    box = widgets.isometry_explorer(n_pairs=10)
    first = box.snapshot()
    bundle = box._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == first
    box.controls["d"].value = 8                               # the snapshot follows the live state
    assert box.snapshot() != first
