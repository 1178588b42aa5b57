"""The isometry explorer, driven from plain pytest (no kernel): set control values, read widget.result."""
import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from gpart_edu import widgets  # noqa: E402


@pytest.fixture(scope="module")
def explorer():
    return widgets.isometry_explorer(n_pairs=40)


def test_explorer_starts_on_gpart_exact_isometry(explorer):
    res = explorer.result
    assert res["method"] == "gpart" and res["d"] == 64 and res["D"] == 576
    assert np.abs(res["ratios"] - 1).max() <= 1e-12
    assert np.abs(res["singular_values"] - 1).max() <= 1e-12 and len(res["singular_values"]) == 64
    assert explorer.children[-1].value[:8] == b"\x89PNG\r\n\x1a\n"     # the figure is a PNG image


def test_changing_controls_updates_result_and_picture(explorer):
    c = explorer.controls
    png_gpart = explorer.children[-1].value
    c["method"].value = "unilora"
    res = explorer.result
    assert res["method"].startswith("unilora") and res["cond"] > 1.2          # not isometric
    assert explorer.children[-1].value != png_gpart
    r1 = res["ratios"].copy()
    c["scale"].value = 10.0                                                  # 2-homogeneous: ratios x 10
    assert np.allclose(explorer.result["ratios"], 10 * r1, rtol=1e-10)
    c["scale"].value = 1.0
    c["d"].value = 32
    assert explorer.result["d"] == 32 and len(explorer.result["singular_values"]) == 32
    c["r"].value = 4
    assert explorer.result["method"] == "unilora (r=4)"
    c["method"].value = "lora"
    assert explorer.result["d"] == 4 * (12 + 16) + 4 * (16 + 16) + 4 * (16 + 8)  # sum of r (in + out)
    c["method"].value = "gaussian"
    g = explorer.result
    assert 0 < np.abs(g["ratios"] - 1).max() < 1 and g["cond"] > 1
    c["seed"].value = 3
    assert not np.array_equal(explorer.result["ratios"], g["ratios"])
    c["method"].value = "fastfood"
    assert explorer.result["method"] == "fastfood" and explorer.result["cond"] > 1


def test_invalid_combination_is_reported_not_raised(explorer):
    c = explorer.controls
    c["method"].value = "gpart-hashed"
    c["d"].value = 576                       # hashed ids with d = D leave groups empty -> ConfigError
    assert "error" in explorer.result and "empty" in explorer.result["error"]
    assert "cannot build this map" in explorer.children[3].value
    c["method"].value = "gpart"              # balanced with d = D is a permutation: fine
    assert "error" not in explorer.result and np.abs(explorer.result["singular_values"] - 1).max() <= 1e-12
