"""Execute every notebook in smoke mode in a fresh kernel; fail on any error; plot cells must draw."""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def kernel_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # a leaked Agg backend hides plots
    env["GPART_EDU_MODE"] = "smoke"
    return env


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=kernel_env())
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    for i, cell in enumerate(nb.cells):
        if "plot" in cell.get("metadata", {}).get("tags", []):
            images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            assert images, f"{path.name} cell {i} is tagged 'plot' but produced no image"
