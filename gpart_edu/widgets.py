"""Interactive explorers for the notebooks. Each function *returns* its widget (ipywidgets is imported
inside the function), so plain pytest can drive it by setting ``.value`` on its controls."""
from __future__ import annotations

import math

import torch


# ---- quickstart explorer
EXPLORER_CLASS = "gpart-explorer"            # CSS classes the browser test (tests/test_browser.py) looks for
READOUT_CLASS = "gpart-explorer-readout"


def _eval_at_theta(model, key: str, theta: torch.Tensor, data, batch_size: int) -> dict:
    """Mean cross-entropy and accuracy of ``model`` with its θ replaced by ``theta`` (no mutation).

    Uses ``torch.func.functional_call`` with θ overridden; only the train/eval flag is touched and it is
    restored in ``finally``. ``data`` is a dict with "labels" (HF inputs) or a tuple (x, y).
    """
    import torch.nn.functional as F
    from torch.func import functional_call

    y_all = data["labels"] if isinstance(data, dict) else data[1]
    n = len(y_all)
    dev = theta.device
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        with torch.no_grad():
            for a in range(0, n, batch_size):
                sl = slice(a, min(n, a + batch_size))
                if isinstance(data, dict):
                    inputs = {k: v[sl].to(dev) for k, v in data.items() if k != "labels"}
                    out = functional_call(model, {key: theta}, args=(), kwargs=inputs)
                else:
                    out = functional_call(model, {key: theta}, args=(data[0][sl].to(dev),))
                logits = (out.logits if hasattr(out, "logits") else out).float()
                y = y_all[sl].to(dev)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(-1) == y).sum())
    finally:
        model.train(was_training)
    return {"loss": loss_sum / n, "accuracy": correct / n}


def theta_scale_explorer(adapter, data=None, t_min: float = -1.0, t_max: float = 2.0, step: float = 0.25,
                         t: float = 1.0, max_examples: int = 128, batch_size: int = 64):
    """Return a slider over t that shows ‖ΔW(t·θ)‖ against |t|·‖θ‖ and the model's loss at t·θ.

    θ is a snapshot of ``adapter.theta`` taken now (the adapter and its model are never modified).
    t = 0 is the pretrained weights (with whatever head was trained), t = 1 the trained adapter.
    For GPart ΔW is linear and isometric, so ‖ΔW(t·θ)‖ = |t|·‖θ‖ exactly (computed in float64);
    for LoRA / Uni-LoRA ΔW is bilinear in θ and the ratio grows like |t|.
    ``data`` (optional, at most ``max_examples`` used): held-out examples for loss / accuracy at t·θ.

    The returned ``VBox`` has ``.slider`` (FloatSlider), ``.readout`` (HTML) and ``.results``
    ({t: {"t", "norm_dw", "predicted", "ratio", "loss", "accuracy"}}, filled as t values are visited).
    """
    import ipywidgets as widgets

    from .adapter import ADAPTER_ATTR

    if not (math.isfinite(t_min) and math.isfinite(t_max) and t_min < t_max):
        raise ValueError(f"need finite t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    if not (step > 0 and t_min <= t <= t_max):
        raise ValueError(f"need step > 0 and t_min <= t <= t_max, got step={step!r}, t={t!r}")
    if getattr(adapter, "model", None) is None:
        raise ValueError("the adapter is detached (or not an Adapter); pass ge.get_adapter(model) of a model")
    if adapter.merged:
        raise ValueError("the adapter is merged, so changing θ has no effect; call adapter.unmerge() first")
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples!r}")
    model = adapter.model
    theta = adapter.theta.detach().clone()
    theta64 = theta.double()
    theta_norm = float(theta64.norm())
    if data is not None:
        data = ({k: v[:max_examples] for k, v in data.items()} if isinstance(data, dict)
                else tuple(v[:max_examples] for v in data))

    results: dict = {}

    def measure(tv: float) -> dict:
        if tv not in results:
            dw = adapter.delta_weights(tv * theta64)
            norm_dw = math.sqrt(sum(float(v.pow(2).sum()) for v in dw.values()))
            predicted = abs(tv) * theta_norm
            row = {"t": tv, "norm_dw": norm_dw, "predicted": predicted,
                   "ratio": norm_dw / predicted if predicted > 0 else None}
            if data is not None:
                row.update(_eval_at_theta(model, f"{ADAPTER_ATTR}.theta", tv * theta, data, batch_size))
            results[tv] = row
        return results[tv]

    def render(row: dict) -> str:
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.12f}"
        lines = [f"<b>t = {row['t']:+.2f}</b> &nbsp; (t = 0: pretrained weights, t = 1: trained θ)",
                 f"‖ΔW(t·θ)‖ measured (float64) = <b>{row['norm_dw']:.6f}</b>",
                 f"|t|·‖θ‖ (isometry predicts) = <b>{row['predicted']:.6f}</b> &nbsp; ratio {ratio}"]
        if "loss" in row:
            n = len(data["labels"] if isinstance(data, dict) else data[1])
            lines.append(f"held-out loss at t·θ = <b>{row['loss']:.4f}</b>, accuracy <b>{row['accuracy']:.3f}</b>"
                         f" (n = {n})")
        return "<br>".join(lines)

    slider = widgets.FloatSlider(value=t, min=t_min, max=t_max, step=step, description="t",
                                 continuous_update=False, readout_format="+.2f",
                                 layout=widgets.Layout(width="420px"))
    readout = widgets.HTML()
    readout.add_class(READOUT_CLASS)

    def on_change(change=None):
        readout.value = render(measure(float(slider.value)))

    slider.observe(on_change, names="value")
    on_change()
    box = widgets.VBox([widgets.HTML(f"<b>Scale the trained θ</b> (d = {theta.numel():,}, "
                                     f"‖θ‖ = {theta_norm:.4f}): ΔW(t·θ)"), slider, readout])
    box.add_class(EXPLORER_CLASS)
    box.slider, box.readout, box.results = slider, readout, results
    return box
