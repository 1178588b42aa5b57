"""What the GPU validation run measured (``results/gpu/*.json``, written by scripts/gpu_validation.py), as tables.

    rows = measured.gpu_bench()                    # one row per (model, targets, precision, method)
    print(measured.bench_table(rows, "decoder", "qv").to_markdown())
    checks = measured.gpu_checks()                 # every PASS / FAIL / INFO line of the GPU checks

Nothing here runs on a GPU: it reads the files of a run made on one (an NVIDIA H200 in this repository) so that
notebooks/06_full_scale.ipynb and docs/full_scale.md show measured numbers beside the CPU ones. Taught in notebook 06
("Measured on one H200").
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from .compare import Table

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results" / "gpu"
METHOD_ORDER = ("full", "full-targets", "lora", "unilora", "gpart-balanced", "gpart-hashed")
BENCH_COLUMNS = ("method", "trainable", "step_ms", "vs_full", "vs_lora", "peak_GiB", "peak_vs_full")


def _read(name: str, folder=None) -> dict:
    path = Path(folder or RESULTS_DIR) / name
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run `python scripts/gpu_validation.py --out {path.parent}` on a "
                          f"machine with a CUDA GPU first (see docs/full_scale.md, 'Measured on one H200')")
    return json.loads(path.read_text())


def gpu_env(folder=None) -> dict:
    """Return the device, driver and library versions of the GPU run (env_call1.json)."""
    return _read("env_call1.json", folder)


def gpu_bench(folder=None) -> list[dict]:
    """Return the benchmark rows of bench.json: one per (arch, targets, precision, method), with ratios."""
    doc = _read("bench.json", folder)
    if doc.get("format") != "gpart_edu.gpu_bench":
        raise ConfigError(f"bench.json has format {doc.get('format')!r}, expected 'gpart_edu.gpu_bench'")
    return doc["rows"]


def bench_table(rows: list[dict], arch: str, targets: str, precision: str | None = None) -> Table:
    """Tabulate step time (ms, median of the timed steps) and peak CUDA memory of one model and target set.

    Ratios are computed here, within one precision: to full fine-tuning of every parameter (measured once per
    precision; it does not depend on the targets) and to LoRA r = 8 on the same targets.
    """
    sel = [r for r in rows if r["arch"] == arch and (r["targets"] == targets or r["method"] == "full")
           and (precision is None or r["precision"] == precision)]
    if not sel:
        raise ConfigError(f"no rows for arch={arch!r}, targets={targets!r}; archs: "
                          f"{sorted({r['arch'] for r in rows})}, "
                          f"targets: {sorted({r['targets'] for r in rows})}")
    sel.sort(key=lambda r: (r["precision"], METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 99))
    def fmt(x, spec):
        return None if x is None else format(x, spec)

    def ref(method, precision):
        return next((x for x in sel if x["method"] == method and x["precision"] == precision), None)

    out = []
    for r in sel:
        full, lora = ref("full", r["precision"]), ref("lora", r["precision"])
        peak = r.get("peak_bytes")
        out.append({"precision": r["precision"], "method": r["method"], "trainable": r["trainable"],
                    "step_ms": fmt(1e3 * r["median_step_s"], ".1f"),
                    "vs_full": fmt(r["median_step_s"] / full["median_step_s"], ".2f") if full else None,
                    "vs_lora": fmt(r["median_step_s"] / lora["median_step_s"], ".2f") if lora else None,
                    "peak_GiB": fmt(peak / 2 ** 30, ".2f") if peak else None,
                    "peak_vs_full": fmt(peak / full["peak_bytes"], ".2f") if peak and full and full.get("peak_bytes")
                    else None})
    return Table(out, ("precision",) + BENCH_COLUMNS)


def gpu_checks(folder=None) -> list[dict]:
    """Return every PASS / FAIL / INFO / SKIP line of the GPU checks (landscape, full scale, MiniLM part).

    The MiniLM-dependent checks were run in a separate call (full_scale_minilm.json): their lines replace the
    failed ones of full_scale.json, whose machine did not have the MiniLM checkpoint (see docs/full_scale.md).
    """
    lines = [dict(x, source="landscape") for x in _read("landscape.json", folder)["lines"]]
    minilm = [dict(x, source="full_scale_minilm") for x in _read("full_scale_minilm.json", folder)["lines"]
              if x["kind"] != "TIME"]
    redone = {"placement", "step_timing", "bf16_rounding"}
    for x in _read("full_scale.json", folder)["lines"]:
        if x["kind"] == "TIME" or x["name"] in redone or x["name"].startswith("gpart-edu finetune (MiniLM"):
            continue
        lines.append(dict(x, source="full_scale"))
    return lines + minilm


ID_MEMORY = Path(__file__).resolve().parents[2] / "benchmarks" / "id_memory.json"


def id_memory(path=None) -> dict[str, dict]:
    """Return {case: row} of benchmarks/id_memory.json: the measured peak extra RSS of building group ids.

    Cases: "balanced" (int32 ids, drawn without an int64 copy), "hashed" (no ids stored: counted and consumed in
    chunks) and "old-balanced-int64" (the former int64 recipe, for reference). Each row holds D, d,
    peak_extra_bytes and bytes_per_weight. Written by ``python benchmarks/id_memory.py``; read by
    notebooks/06_full_scale.ipynb (section 2, what the recipes cost) so that it prints only measured numbers.
    """
    path = Path(path or ID_MEMORY)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run `PYTHONPATH=. python benchmarks/id_memory.py` first")
    doc = json.loads(path.read_text())
    if doc.get("format") != "gpart_edu.id_memory":
        raise ConfigError(f"{path} has format {doc.get('format')!r}, expected 'gpart_edu.id_memory'")
    return {r["case"]: r for r in doc["rows"]}
