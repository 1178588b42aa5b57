"""GPU check for gpart_edu.lab.landscape / curvature: the same numbers on CUDA as on CPU, nothing mutated.

Run: python scripts/gpu_check_landscape.py [--json FILE]   (exit 1 on a failed check; on a machine without CUDA it
runs the CPU half, prints a note and exits 0). Float64 throughout, so CPU and CUDA must agree to ~1e-10.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import gpart_edu as ge
from gpart_edu.lab import curvature, landscape

LINES = []


def report(name, ok, detail, **numbers):
    print(f"{'ok ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    LINES.append({"kind": "PASS" if ok else "FAIL", "name": name, "detail": detail, **numbers})


def build(dev):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 5)).double()
    ge.attach(model, "gpart", d=48, seed=1, targets="all-linear", trainable=())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ge.get_adapter(model).theta.normal_(0, 0.3, generator=g)
    x = torch.randn(64, 20, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (64,), generator=g)
    model.to(dev)
    return model, landscape.Objective(model, (x, y), batch_size=32)


def measure(dev):
    model, obj = build(dev)
    before = landscape.fingerprint(model)
    u, v = landscape.random_directions(obj.d, 2, seed=0, dtype=torch.float64, device=dev)
    surf = landscape.grid(obj, u, v, span=1.0, n=9, progress=False)
    hv = curvature.hvp(obj)(u.theta).cpu()
    top = curvature.top_eigenvalues(obj, k=3, tol=1e-12)
    after = landscape.fingerprint(model)
    return dict(surf=surf, hv=hv, top=top, unchanged=before == after)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the checks to this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cpu = measure(torch.device("cpu"))
    report("cpu: model unchanged", cpu["unchanged"], "sha256 equal before/after")
    cuda = torch.cuda.is_available()
    if not cuda:
        print("note: CUDA not available; the CUDA comparison was skipped (CPU half ran)")
    else:
        gpu = measure(torch.device("cuda"))
        report("cuda: model unchanged", gpu["unchanged"], "sha256 equal before/after")
        err = float(abs(gpu["surf"].loss - cpu["surf"].loss).max())
        report("grid losses cuda == cpu", err < 1e-10, f"max abs diff {err:.2e} (9x9 grid)", max_abs_diff=err)
        rel = float((gpu["hv"] - cpu["hv"]).norm() / cpu["hv"].norm())
        report("HVP cuda == cpu", rel < 1e-10, f"relative diff {rel:.2e}", rel_diff=rel)
        erel = float(abs(gpu["top"].eigenvalues - cpu["top"].eigenvalues).max() / abs(cpu["top"].eigenvalues).max())
        report("top-3 eigenvalues cuda == cpu", erel < 1e-8, f"relative diff {erel:.2e}: {gpu['top'].eigenvalues}",
               rel_diff=erel, eigenvalues=[float(x) for x in gpu["top"].eigenvalues])
    failed = sum(line["kind"] == "FAIL" for line in LINES)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"format": "gpart_edu.gpu_check_landscape", "cuda": cuda,
                                               "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                                               "torch": torch.__version__, "seconds": time.perf_counter() - t0,
                                               "failed": failed, "lines": LINES}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
