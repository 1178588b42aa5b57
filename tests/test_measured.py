"""The measured GPU run (results/gpu/*.json) read back as tables: the numbers the README and notebook 06 show."""
import json

import pytest

from gpart_edu.errors import ConfigError
from gpart_edu.finetune import measured


def test_the_committed_run_is_complete_and_internally_consistent():
    env = measured.gpu_env()
    assert "H200" in env["device"] and env["cuda_available"]
    rows = measured.gpu_bench()
    # 2 models x 2 precisions x (6 methods on q+v + 5 on all-linear: full FT is measured once)
    assert len(rows) == 2 * 2 * 11
    assert all(r["n_timed"] >= 20 and r["loss_finite"] and r["peak_bytes"] > 0 for r in rows)
    for r in rows:
        if r["method"].startswith("gpart") or r["method"] == "unilora":
            head = 768 * 768 + 768 + 768 * 2 + 2 if r["arch"] == "encoder" else 0    # RoBERTa classification head
            assert r["trainable"] == (23_040 if r["arch"] == "encoder" else 131_072) + head


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
@pytest.mark.parametrize("targets", ["qv", "all-linear"])
def test_table_ratios_are_recomputed_from_the_rows(arch, targets):
    rows = measured.gpu_bench()
    table = measured.bench_table(rows, arch, targets)
    assert [r["method"] for r in table if r["precision"] == "fp32"][0] == "full"
    for row in table:
        src = next(r for r in rows if r["arch"] == arch and r["precision"] == row["precision"]
                   and r["method"] == row["method"] and (r["targets"] == targets or r["method"] == "full"))
        full = next(r for r in rows if r["arch"] == arch and r["precision"] == row["precision"]
                    and r["method"] == "full")
        lora = next(r for r in rows if r["arch"] == arch and r["precision"] == row["precision"]
                    and r["method"] == "lora" and r["targets"] == targets)
        assert float(row["vs_full"]) == pytest.approx(src["median_step_s"] / full["median_step_s"], abs=0.006)
        assert float(row["vs_lora"]) == pytest.approx(src["median_step_s"] / lora["median_step_s"], abs=0.006)
        assert float(row["step_ms"]) == pytest.approx(1e3 * src["median_step_s"], abs=0.06)


def test_checks_take_the_minilm_part_from_its_own_call():
    lines = measured.gpu_checks()
    assert not [x for x in lines if x["kind"] == "FAIL"]
    names = [x["name"] for x in lines]
    assert any(n.startswith("gpart-edu finetune on cuda") for n in names)
    assert not any(n == "placement" for n in names)          # the failed line of the call without MiniLM is replaced
    det = {x["name"]: x for x in lines if "use_deterministic_algorithms" in x["name"] and x["kind"] == "INFO"}
    assert len(det) == 4 and all(x["distinct_of_5"] == 1 for n, x in det.items() if "(True)" in n)


def test_missing_or_foreign_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="gpu_validation.py"):
        measured.gpu_bench(tmp_path)
    (tmp_path / "bench.json").write_text(json.dumps({"format": "other", "rows": []}))
    with pytest.raises(ConfigError, match="format"):
        measured.gpu_bench(tmp_path)
    with pytest.raises(ConfigError, match="no rows"):
        measured.bench_table(measured.gpu_bench(), "vit", "qv")
