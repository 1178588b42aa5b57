"""Put committed notebooks in their canonical form: no outputs, no volatile metadata (``make notebooks``).

    python scripts/clean_notebooks.py [NB ...]          rewrite in place (default: notebooks/NN_*.ipynb)
    python scripts/clean_notebooks.py --check [NB ...]  list what differs; exit 1 if any notebook is dirty

Policy (docs/notebook_qa.md): notebooks are committed WITHOUT outputs. The canonical form keeps
    notebook metadata  kernelspec (python3), language_info.name, execution (nbmake/nbclient timeout);
    cell metadata      tags (known tags only are allowed by tests/test_hygiene.py) and nbmake;
    code cells         outputs [] and execution_count null;
    cell ids           kept when valid and unique, else derived deterministically from name and position;
and is written as nbformat writes it (indent 1, sorted keys, trailing newline). Cleaning is idempotent.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
NB_METADATA_KEEP = ("execution",)
CELL_METADATA_KEEP = ("tags", "nbmake")
ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")


def notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks the policy covers: notebooks/NN_*.ipynb, sorted."""
    return sorted((root / "notebooks").glob(NOTEBOOK_GLOB))


def clean(nb: nbformat.NotebookNode, name: str = "") -> nbformat.NotebookNode:
    """Return a canonical copy of ``nb`` (outputs and volatile metadata removed; ``nb`` is not modified)."""
    nb = copy.deepcopy(nb)
    meta = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    meta.update({k: nb.metadata[k] for k in NB_METADATA_KEEP if k in nb.metadata})
    nb.metadata = nbformat.from_dict(meta)
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    seen = set()
    for i, cell in enumerate(nb.cells):
        keep = {k: cell.metadata[k] for k in CELL_METADATA_KEEP if k in cell.metadata}
        if "tags" in keep:
            keep["tags"] = list(dict.fromkeys(keep["tags"]))          # drop duplicate tags, keep order
            if not keep["tags"]:
                del keep["tags"]
        cell.metadata = nbformat.from_dict(keep)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cid = cell.get("id")
        if not (isinstance(cid, str) and ID_RE.match(cid)) or cid in seen:
            cid = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:8]
            while cid in seen:
                cid = hashlib.sha1(cid.encode()).hexdigest()[:8]
            cell.id = cid
        seen.add(cid)
        if isinstance(cell.source, list):
            cell.source = "".join(cell.source)
    nbformat.validate(nb)
    return nb


def canonical_text(text: str, name: str = "") -> str:
    """The canonical file content for the notebook JSON ``text``."""
    nb = nbformat.from_dict(json.loads(text))     # not nbformat.reads: it repairs duplicate ids randomly
    if nb.get("nbformat") != 4:
        nb = nbformat.convert(nb, 4)
    out = nbformat.writes(clean(nb, name), version=4)
    return out if out.endswith("\n") else out + "\n"


def problems(path: Path) -> list[str]:
    """Human-readable reasons why ``path`` is not in canonical form (empty list: clean)."""
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text)
    out = []
    for i, c in enumerate(raw.get("cells", [])):
        if c.get("outputs"):
            out.append(f"cell {i} has outputs")
        if c.get("execution_count") is not None:
            out.append(f"cell {i} has execution_count {c['execution_count']}")
        extra = set(c.get("metadata", {})) - set(CELL_METADATA_KEEP)
        if extra:
            out.append(f"cell {i} has volatile metadata {sorted(extra)}")
    extra = set(raw.get("metadata", {})) - {"kernelspec", "language_info", *NB_METADATA_KEEP}
    if extra:
        out.append(f"notebook metadata has volatile keys {sorted(extra)}")
    if not out and canonical_text(text, path.name) != text:
        out.append("formatting/ids/kernelspec differ from the canonical form")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="report dirty notebooks, change nothing")
    args = ap.parse_args(argv)
    paths = args.paths or notebooks()
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    dirty = 0
    for p in paths:
        text = p.read_text(encoding="utf-8")
        new = canonical_text(text, p.name)
        if new == text:
            print(f"clean      {p}")
            continue
        dirty += 1
        if args.check:
            print(f"DIRTY      {p}: " + "; ".join(problems(p)))
        else:
            p.write_text(new, encoding="utf-8")
            print(f"cleaned    {p} ({len(text.encode()):,} -> {len(new.encode()):,} bytes)")
    if args.check and dirty:
        print(f"{dirty} notebook(s) not in canonical form: run `make notebooks`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
