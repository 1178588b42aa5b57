"""Execute every notebook in smoke and default mode; print measured seconds per notebook (markdown).

    python scripts/notebook_times.py                         all notebooks, smoke then default (`make notebook-times`)
    python scripts/notebook_times.py --modes default --keep artifacts/notebooks  notebooks/00_*.ipynb

Each run is a fresh kernel (nbclient), MPLBACKEND removed, GPART_EDU_MODE set; the time is wall-clock
from kernel start to the end of the last cell (what "Restart kernel and run all" costs a learner).
The hardware line and the load average before/after say how trustworthy the numbers are: on a shared
machine they are inflated. Exit status 1 if any notebook fails. ``--keep DIR`` saves the executed
notebooks (outputs included) for reading; they are not committed (see docs/notebook_qa.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def hardware() -> str:
    """One line: CPU model, cores, torch threads, GPU (if any)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def run(path: Path, mode: str, timeout: int, keep: Path | None) -> tuple[float, str | None]:
    """(seconds, error or None) for one fresh-kernel execution of ``path`` in ``mode``."""
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["GPART_EDU_MODE"] = mode
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    error = None
    try:
        client.execute(env=env)
    except Exception as exc:  # noqa: BLE001 -- reported in the table, exit status 1
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else ''}"
    seconds = time.perf_counter() - t0
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / f"{path.stem}.{mode}.ipynb")
    return seconds, error


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    ap.add_argument("--modes", nargs="+", default=["smoke", "default"], choices=["smoke", "default", "full"])
    ap.add_argument("--timeout", type=int, default=3600, help="per-cell time-out in seconds")
    ap.add_argument("--keep", type=Path, default=None, help="save the executed notebooks into this folder")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    print(f"hardware: {hardware()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows, failed = {}, 0
    for mode in args.modes:
        for p in paths:
            seconds, error = run(p, mode, args.timeout, args.keep)
            rows.setdefault(p.name, {})[mode] = f"{seconds:.0f} s" + (f" FAIL ({error})" if error else "")
            failed += error is not None
            print(f"  {p.name} [{mode}]: {rows[p.name][mode]}", file=sys.stderr, flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| notebook | " + " | ".join(args.modes) + " |")
    print("|---|" + "---|" * len(args.modes))
    for name, r in rows.items():
        print(f"| `{name}` | " + " | ".join(r.get(m, "") for m in args.modes) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
