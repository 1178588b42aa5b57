"""Export every figure of the executed lecture notebooks: python scripts/book_figures.py --mode default|smoke.

The notebooks run (or are reused from build/executed/<mode>/ when their figures were exported with the same
notebook and package) with scripts/book_fighook.py loaded in the kernel, which saves each matplotlib figure
as PNG and SVG and records what its matplotlib objects say about title, axis labels and legend. This script
names the files by notebook and cell id, attaches the captions of book/figures.yml (keyed by notebook stem
and cell id), and writes build/figures/<mode>/manifest.json (also copied to build/figures/manifest.json):
figure id, notebook, cell id, caption, mode, commit, files and label checks. Exit status 1 when a figure
lacks a caption, a title, an axis label, or a legend for more than one series.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book_exec  # noqa: E402

FIGURES = ROOT / "build" / "figures"
CAPTIONS = ROOT / "book" / "figures.yml"


def load_captions(path: Path = CAPTIONS) -> dict:
    """{notebook stem: {cell id: caption}} (keys as strings, whatever YAML made of them)."""
    import yaml
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    return {str(nb): {str(k): v for k, v in (cells or {}).items()} for nb, cells in data.items()}


def cell_ids_by_seq(executed: Path) -> dict:
    """{n: id of the n-th code cell that ran} of an executed notebook (cells that ran have a count)."""
    import nbformat
    nb = nbformat.read(executed, as_version=4)
    ran = [c.get("id") for c in nb.cells if c.cell_type == "code" and c.execution_count]
    return {i + 1: cid for i, cid in enumerate(ran)}


def manifest(mode: str, executed: dict, raw: Path, captions: dict, commit: str) -> list[dict]:
    out_dir = raw.parent if raw.name == "_raw" else raw
    rows = []
    for name, path in sorted(executed.items()):
        stem = Path(name).stem
        records = raw / stem / "figures.jsonl"
        if not records.exists():
            continue
        ids = cell_ids_by_seq(path)
        recs = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
        per_cell: dict = {}
        for r in recs:
            per_cell.setdefault(r["cell_seq"], []).append(r)
        for count, group in per_cell.items():
            cell = ids.get(count, f"cell{count}")
            for r in group:
                fid = f"{stem}-{cell}-{r['index'] + 1}"
                files = {}
                for ext in ("png", "svg"):
                    dest = out_dir / stem / f"{fid}.{ext}"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(raw / stem / r[ext], dest)
                    files[ext] = dest.relative_to(FIGURES).as_posix()
                cap = (captions.get(stem) or {}).get(cell)
                if cap and len(group) > 1:
                    cap = f"{cap} ({r['index'] + 1} of {len(group)})"
                probs = list(r["problems"]) + ([] if cap else [f"no caption in book/figures.yml ({stem}: {cell})"])
                rows.append({"id": fid, "notebook": name, "cell": cell, "index": r["index"] + 1, "caption": cap,
                             "mode": mode, "commit": commit, **files, "axes": r["axes"],
                             "suptitle": r["suptitle"], "problems": probs})
    return rows


def export(mode: str, log=print) -> tuple[list[dict], Path]:
    import book
    raw = book_exec.figures_dir(mode)
    executed = book_exec.ensure(mode, figures_dir=raw, require_figures=True, log=log)
    rows = manifest(mode, executed, raw, load_captions(), book.git_commit())
    path = FIGURES / mode / "manifest.json"
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    shutil.copy2(path, FIGURES / "manifest.json")
    return rows, path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export every notebook figure to build/figures/.")
    ap.add_argument("--mode", default="default", choices=["smoke", "default", "full"])
    a = ap.parse_args(argv)
    rows, path = export(a.mode)
    bad = [f"{r['id']}: {p}" for r in rows for p in r["problems"]]
    print(f"{len(rows)} figures from {len({r['notebook'] for r in rows})} notebooks -> {path.parent}/ "
          f"(manifest {path})")
    if bad:
        print("figures that need a fix:\n  " + "\n  ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
