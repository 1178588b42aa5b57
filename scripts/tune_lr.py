"""Learning-rate sweep for one method on MiniLM (tweets or Reuters R8), selected on a validation split.

    nice -n 10 .venv/bin/python scripts/tune_lr.py --data tweets --method gpart --budget 36864 \
        --lrs 5e-3,1e-2,2e-2,5e-2 --head-lr 1e-2 --steps 300 --out results/tune_tweets.jsonl

The validation split is carved from the training set (never the test set); the test accuracy at the end of
each run is recorded too, with the validation curve every --eval-every steps. One JSON line per run.
"""
import argparse
import copy
import json
import time

import torch

from gpart_edu import assets
from gpart_edu.finetune import compare, train


def load(data: str, max_length: int, n_val: int, n_test: int, seed: int = 0):
    model, tok = assets.load_classifier("minilm", num_labels=2 if data == "tweets" else 8, seed=0)
    if data == "tweets":
        tr, te = assets.load_tweets(test_size=1000, seed=0)
    else:
        tr, te = assets.load_reuters_r8()
    tr_data = assets.tokenize(tok, tr, max_length=max_length)
    te_data = assets.tokenize(tok, te, max_length=max_length)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(tr), generator=g)
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    sub = lambda d, i: {k: v[i] for k, v in d.items()}
    test_idx = torch.randperm(len(te), generator=g)[:n_test] if n_test < len(te) else torch.arange(len(te))
    return model, sub(tr_data, fit_idx), sub(tr_data, val_idx), sub(te_data, test_idx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="tweets", choices=["tweets", "r8"])
    ap.add_argument("--method", default="gpart")
    ap.add_argument("--budget", default=None)
    ap.add_argument("--lrs", required=True)
    ap.add_argument("--head-lr", type=float, default=1e-2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kwargs", default="{}", help='JSON attach options, e.g. {"r": 4}')
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    base, fit_data, val, test = load(a.data, a.max_length, a.n_val, a.n_test)
    budget = None if a.budget in (None, "None") else int(a.budget)
    for lr in [float(x) for x in a.lrs.split(",")]:
        model = copy.deepcopy(base)
        torch.manual_seed(a.seed)
        model.classifier.reset_parameters()
        params = compare.prepare(model, a.method, budget, seed=a.seed, targets=["query", "value"],
                                 **json.loads(a.kwargs))
        cfg = train.TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=lr, head_lr=a.head_lr, warmup=0.06,
                                eval_every=a.eval_every, seed=a.seed, progress=False, eval_at_start=False)
        hist = train.fit(model, fit_data, val, config=cfg)
        t = time.perf_counter()
        te = train.evaluate(model, test)
        row = {"data": a.data, "method": a.method, "budget": budget, "params": params, "lr": lr,
               "head_lr": a.head_lr, "steps": hist.steps_done, "batch_size": a.batch_size,
               "max_length": a.max_length, "seed": a.seed, "kwargs": json.loads(a.kwargs),
               "val_curve": hist.evals, "test_accuracy": te["accuracy"], "test_loss": te["loss"],
               "train_time_s": hist.wall_time, "test_eval_s": time.perf_counter() - t,
               "diverged": hist.diverged}
        print(json.dumps({k: v for k, v in row.items() if k != "val_curve"}),
              [round(e["accuracy"], 3) for e in hist.evals], flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
