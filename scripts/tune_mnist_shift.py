"""Learning-rate sweep for notebook 04 (b): MLP pretrained on MNIST-5k digits 0-4, fine-tuned to 5-9.

Selection on a validation split carved from the 5-9 training images (never the test images); one seed.
    nice -n 10 .venv/bin/python scripts/tune_mnist_shift.py --out results/tune_mnist_shift.jsonl
"""
import argparse
import copy
import json

import torch

from gpart_edu import assets
from gpart_edu.finetune import compare, train
from gpart_edu.lab import toys

GRID = {"gpart": [256, 1024, 4096, 16384], "unilora": [256, 1024, 4096], "lora": [1, 4, 8],
        "head": [None], "full": [None]}
LRS = {"gpart": [3e-3, 1e-2, 3e-2, 1e-1], "unilora": [1e-3, 3e-3, 1e-2, 3e-2], "lora": [1e-3, 3e-3, 1e-2],
       "head": [3e-3, 1e-2, 3e-2], "full": [3e-4, 1e-3, 3e-3]}
KW = {"unilora": {"r": 8}, "lora": {"alpha": 8.0}}


def setup(hidden=(128, 128), pre_steps=400, seed=0):
    (x, y), (xt, yt) = assets.load_mnist5k(test_size=1000, seed=0)
    xa, ya = toys.select_classes(x, y, range(5))
    torch.manual_seed(seed)
    base = toys.MLP(784, hidden, 5)
    train.fit(base, (xa, ya), None, config=train.TrainConfig(steps=pre_steps, batch_size=64, lr=1e-3,
                                                              progress=False, eval_at_start=False))
    xb, yb = toys.select_classes(x, y, range(5, 10))
    xbt, ybt = toys.select_classes(xt, yt, range(5, 10))
    return base, (xb, yb), (xbt, ybt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--extra", default=None, help='JSON [[method, budget, lr], ...]: only these runs')
    a = ap.parse_args()
    torch.set_num_threads(1)
    base, (xb, yb), _ = setup()
    perm = torch.randperm(len(yb), generator=torch.Generator().manual_seed(0))
    val, fit_ = (xb[perm[:400]], yb[perm[:400]]), (xb[perm[400:]], yb[perm[400:]])

    def make(seed):
        return toys.new_head(copy.deepcopy(base), 5, seed=seed)

    cfg = train.TrainConfig(steps=a.steps, batch_size=64, progress=False, eval_at_start=False)
    runs = [(m, b, lr) for m, bs in GRID.items() for b in bs for lr in LRS[m]]
    if a.extra:
        runs = [tuple(r) for r in json.loads(a.extra)]
    for m, b, lr in runs:
        row = compare.run_one(make, m, b, 0, fit_, val, cfg, targets=["layers.0", "layers.1"], lr=lr,
                              head_lr=1e-2 if m not in ("head", "full") else None, method_kwargs=KW.get(m))
        print(m, b, lr, round(row["accuracy"], 4), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
