"""Learning-rate sweep for notebook 05 section 5: SmolLM2-135M + GPart / LoRA on Grimm tales.

Validation = the last 64 training blocks (the held-out tales of the notebook are never used here).
    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python scripts/tune_smollm2.py --out results/tune_smollm2.jsonl
"""
import argparse
import json

import gpart_edu as ge
from gpart_edu import assets
from gpart_edu.finetune import train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--gpart-lrs", default="5e-3,2e-2,5e-2")
    ap.add_argument("--lora-lrs", default="1e-3,5e-3,2e-2")
    a = ap.parse_args()
    lm, tok = assets.load_causal_lm("smollm2")
    blocks, _ = assets.grimm_lm_data(tok, block=64, n_test_tales=6, seed=0)
    fit_blocks, val_blocks = blocks[:-64], blocks[-64:]
    val = train.lm_data(val_blocks)
    base = train.evaluate_lm(lm, val)["perplexity"]
    budget = 30 * (576 + 576 + 576 + 192)
    runs = [("gpart", {"d": budget}, float(x)) for x in a.gpart_lrs.split(",")]
    runs += [("lora", {"r": 1, "alpha": 8.0}, float(x)) for x in a.lora_lrs.split(",")]
    for method, kw, lr in runs:
        ad = ge.attach(lm, method, seed=0, targets=["q_proj", "v_proj"], trainable=(), **kw)
        h = train.fit(lm, train.lm_data(fit_blocks), None, loss_fn=train.causal_lm_loss,
                      config=train.TrainConfig(steps=a.steps, batch_size=4, lr=lr, warmup=0.1, progress=False,
                                               eval_at_start=False))
        row = {"method": method, "lr": lr, "steps": a.steps, "params": ad.num_trainable, "val_ppl_base": base,
               "val_ppl": train.evaluate_lm(lm, val)["perplexity"], "train_time_s": h.wall_time}
        ad.detach()
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
