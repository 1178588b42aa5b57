"""Learning-rate sweep for notebook 04 (c): an MLP trained from scratch in a random d-dim subspace.

Selection on a validation split carved from the MNIST-5k training images; one seed.
    nice -n 10 .venv/bin/python scripts/tune_intrinsic.py --out results/tune_intrinsic.jsonl
"""
import argparse
import json
import time

import torch

from gpart_edu import assets
from gpart_edu.finetune import train
from gpart_edu.lab import intrinsic, toys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", default="32,32")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--dims", default="100,400,1600")
    ap.add_argument("--lrs", default="0.03,0.1,0.3,1.0")
    ap.add_argument("--kinds", default="partition,gaussian")
    ap.add_argument("--direct-lrs", default="1e-3,3e-3,1e-2")
    a = ap.parse_args()
    torch.set_num_threads(1)
    (x, y), _ = assets.load_mnist5k(test_size=1000, seed=0)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, fit_ = (x[perm[:500]], y[perm[:500]]), (x[perm[500:]], y[perm[500:]])
    hidden = tuple(int(h) for h in a.hidden.split(","))
    cfg = train.TrainConfig(steps=a.steps, batch_size=128, progress=False, eval_at_start=False, grad_clip=None)
    runs = [("direct", None, float(lr)) for lr in a.direct_lrs.split(",") if lr]
    runs += [(k, int(d), float(lr)) for k in a.kinds.split(",") for d in a.dims.split(",")
             for lr in a.lrs.split(",")]
    for kind, d, lr in runs:
        torch.manual_seed(0)
        net = toys.MLP(784, hidden, 10)
        D = sum(p.numel() for p in net.parameters())
        model = net if kind == "direct" else intrinsic.SubspaceModel(net, intrinsic.make_projection(kind, D, d, 0))
        t = time.perf_counter()
        hist = train.fit(model, fit_, val, config=train.TrainConfig(**{**cfg.__dict__, "lr": lr}))
        row = {"kind": kind, "d": d, "D": D, "hidden": hidden, "lr": lr, "steps": a.steps,
               "val_accuracy": hist.final["accuracy"], "time_s": time.perf_counter() - t}
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
