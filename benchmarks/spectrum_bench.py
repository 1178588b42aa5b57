"""Time the certified matrix-free Jacobian spectrum (lab.jacobian.singular_values, method="lanczos") at MiniLM
scale: GPart and LoRA on MiniLM query+value, top-k and bottom-k, medians of a few repeats.

    PYTHONPATH=. python benchmarks/spectrum_bench.py [--k 20] [--repeats 3]

Prints one line per configuration: median seconds, J^T J products, certified counts and the largest residual.
Taught in notebooks/02_lora_unilora_geometry.ipynb, section "5 · Jacobian singular values, matrix-free".
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    import gpart_edu as ge
    from gpart_edu import assets
    from gpart_edu.lab.jacobian import singular_values
    for method, cfg in (("gpart", {"d": 23_040}), ("lora", {"r": 4}), ("lora_moved", {"r": 4})):
        model, _ = assets.load_classifier("minilm", num_labels=2)
        ad = ge.attach(model, method.split("_")[0], seed=0, targets=["query", "value"], **cfg)
        if method.endswith("moved"):
            with torch.no_grad():
                ad.theta.add_(0.02 * torch.randn(ad.theta.shape, generator=torch.Generator().manual_seed(0)))
        secs, spec = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            spec = singular_values(ad, k=args.k, method="lanczos")
            secs.append(time.perf_counter() - t0)
        c = spec.converged
        print(f"{method:11s} D={spec.D:,} d={spec.d:,} k={args.k}: median {statistics.median(secs):.1f} s "
              f"({args.repeats} runs), {spec.n_matvec} J^T J products, certified top {c['top']['count']}/"
              f"{args.k} bottom {c['bottom']['count']}/{args.k}, sigma in [{spec.sigma_min:.6g}, "
              f"{spec.sigma_max:.6g}], max residual {max(c['top']['residual_max'], c['bottom']['residual_max']):.1e}"
              f", {c['top']['solver']}", flush=True)


if __name__ == "__main__":
    main()
