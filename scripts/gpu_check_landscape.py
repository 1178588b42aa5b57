"""GPU check for gpart_edu.lab.landscape / curvature: the same numbers on CUDA as on CPU, nothing mutated.

Run: python scripts/gpu_check_landscape.py   (exits non-zero on failure; on a machine without CUDA it runs the
CPU half, prints a note and exits 0). Float64 throughout, so CPU and CUDA must agree to ~1e-10.
"""
import sys

import torch
from torch import nn

import gpart_edu as ge
from gpart_edu.lab import curvature, landscape

failures = []


def report(name, ok, detail):
    print(f"{'ok ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


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


cpu = measure(torch.device("cpu"))
report("cpu: model unchanged", cpu["unchanged"], "sha256 equal before/after")
if not torch.cuda.is_available():
    print("note: CUDA not available; the CUDA comparison was skipped (CPU half ran)")
    sys.exit(1 if failures else 0)
gpu = measure(torch.device("cuda"))
report("cuda: model unchanged", gpu["unchanged"], "sha256 equal before/after")
err = float(abs(gpu["surf"].loss - cpu["surf"].loss).max())
report("grid losses cuda == cpu", err < 1e-10, f"max abs diff {err:.2e} (9x9 grid)")
rel = float((gpu["hv"] - cpu["hv"]).norm() / cpu["hv"].norm())
report("HVP cuda == cpu", rel < 1e-10, f"relative diff {rel:.2e}")
erel = float(abs(gpu["top"].eigenvalues - cpu["top"].eigenvalues).max() / abs(cpu["top"].eigenvalues).max())
report("top-3 eigenvalues cuda == cpu", erel < 1e-8, f"relative diff {erel:.2e}: {gpu['top'].eigenvalues}")
sys.exit(1 if failures else 0)
