"""Measure the peak extra memory of building a partition's group ids: balanced (stored int32 ids), hashed (none
stored: counted, then consumed, one chunk at a time as the forward does) and, for reference, the old balanced
recipe (int64 randperm, int64 remainder, int32 copy).

    PYTHONPATH=. python benchmarks/id_memory.py [--D 1e8] [--d 1e6] [--out benchmarks/id_memory.json]

Each case runs in a fresh process: peak RSS (VmHWM of /proc/self/status, Linux) after building P and its ids,
minus the peak after the imports. The numbers are written to benchmarks/id_memory.json and read by
``gpart_edu.finetune.measured.id_memory``; notebooks/06_full_scale.ipynb prints only these measured numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, torch
from gpart_edu.core.projections import PartitionProjection


def peak():   # VmHWM: this process's own peak RSS (ru_maxrss would inherit the parent's peak across exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


D, d, case = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = peak()
if case == "old-balanced-int64":
    g = torch.Generator().manual_seed(0)
    ids = (torch.randperm(D, generator=g) % d).to(torch.int32)
else:
    P = PartitionProjection(D, d, seed=0, assignment=case)      # hashed: counts, chunk by chunk
    for _ in P.index_chunks(0, D):                              # what a forward consumes (balanced: all ids)
        pass
print(peak() - base)
"""
CASES = ("balanced", "hashed", "old-balanced-int64")


def measure(D: int, d: int, case: str) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", CHILD, str(D), str(d), case], env=env, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--D", type=float, default=1e8)
    ap.add_argument("--d", type=float, default=1e6)
    ap.add_argument("--out", default=str(Path(__file__).with_name("id_memory.json")))
    args = ap.parse_args()
    import torch
    D, d = int(args.D), int(args.d)
    rows = []
    for case in CASES:
        peak = measure(D, d, case)
        rows.append({"case": case, "D": D, "d": d, "peak_extra_bytes": peak, "bytes_per_weight": peak / D})
        print(f"{case:<20} D={D:,} d={d:,}: peak extra RSS {peak / 2**20:,.0f} MiB = {peak / D:.2f} B per weight")
    doc = {"format": "gpart_edu.id_memory", "torch": torch.__version__, "machine": platform.machine(),
           "python": platform.python_version(), "measure": "peak RSS (VmHWM) of a fresh process after building "
           "P and its ids, minus the peak after the imports", "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
