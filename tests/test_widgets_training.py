"""The live-training widget, driven from pytest without a kernel: pick, start, watch, stop."""
import time

import pytest

from gpart_edu import widgets
from gpart_edu.finetune import train

from .test_compare import data, make_model

pytest.importorskip("ipywidgets")
PNG = b"\x89PNG"


def build(background, steps=12, **kw):
    cfg = train.TrainConfig(steps=steps, batch_size=16, lr=2e-2, eval_every=4, progress=False)
    return widgets.live_training(make_model, data(), data(1), methods={"gpart": [8, 30], "lora": [1, 2],
                                                                       "head": [None]},
                                 config=cfg, targets=["layers.0", "layers.1"], update_every=2,
                                 background=background, **kw)


def test_controls_and_budget_options_follow_the_method():
    w = build(background=False)
    c = w.controls
    assert c.method.value == "gpart" and c.budget.options == (("d=8", 8), ("d=30", 30))
    c.method.value = "lora"
    assert c.budget.options == (("r=1", 1), ("r=2", 2)) and c.budget.value == 1
    c.method.value = "head"
    assert c.budget.value is None and c.budget.options[0][0] == "—"
    assert c.stop.disabled and not c.start.disabled


def test_start_trains_the_chosen_method_and_draws_the_curves():
    w = build(background=False, lrs={"lora": {1: (1e-2, None), 2: (3e-2, 5e-3)}})
    c = w.controls
    c.method.value = "lora"
    c.budget.value = 2
    c.start.click()
    hist = w.state["history"]
    assert w.state["error"] is None and hist.steps_done == 12 and not hist.stopped_early
    assert [e["step"] for e in hist.evals] == [0, 4, 8, 12]
    assert w.state["model"].gpart_edu_adapter.method.r == 2
    assert (hist.config["lr"], hist.config["head_lr"]) == (3e-2, 5e-3)      # per-budget learning rates
    assert bytes(c.image.value).startswith(PNG) and "done" in c.status.value and "accuracy" in c.status.value
    first_png = bytes(c.image.value)
    c.method.value = "gpart"
    c.start.click()                                    # a second run starts from a fresh model
    assert w.state["model"].gpart_edu_adapter.num_trainable == 8 and bytes(c.image.value) != first_png


def test_stop_button_stops_a_background_run():
    w = build(background=True, steps=100_000)
    c = w.controls
    c.start.click()
    assert c.start.disabled and not c.stop.disabled
    deadline = time.time() + 60
    while (w.state["history"] is None or w.state["history"].steps_done < 3) and time.time() < deadline:
        time.sleep(0.05)
    c.stop.click()
    assert w.wait(timeout=60)
    hist = w.state["history"]
    assert w.state["error"] is None and hist.stopped_early and 3 <= hist.steps_done < 100_000
    assert "stopped" in c.status.value and not c.start.disabled and c.stop.disabled


def test_errors_are_shown_not_raised():
    def broken(seed):
        raise RuntimeError("model factory failed")
    cfg = train.TrainConfig(steps=2, progress=False)
    w = widgets.live_training(broken, data(), None, methods={"head": [None]}, config=cfg, background=False)
    w.controls.start.click()
    assert isinstance(w.state["error"], RuntimeError) and "model factory failed" in w.controls.status.value
    assert not w.controls.start.disabled
    with pytest.raises(ValueError, match="methods"):
        widgets.live_training(broken, data(), None, methods={})
