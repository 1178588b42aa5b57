#!/usr/bin/env python
"""GPU check of the full-scale path (issue 6): one short, offline script; exit status 1 if a check fails.

    python scripts/gpu_check_full_scale.py            # about 1-2 minutes on one GPU; CPU: CUDA parts skipped

Checks (PASS / FAIL lines; INFO lines are measurements, SKIP lines say why something did not run):
  1. hashed partition ids: identical on CPU and GPU (three ranges, one starting at position 2^40);
  2. device placement: after model.to("cuda"), theta and every projection buffer (counts, lazily built ids) of
     GPart (balanced, hashed) and Uni-LoRA live on the GPU; CPU and GPU agree on logits and dL/dtheta (fp32);
  3. `gpart-edu finetune` (the console entry, engine + Trainer) on MiniLM + tweets, bf16 on the GPU, 30 steps:
     results.json says cuda + bf16, accuracy > 0.75 (the CPU run of the same recipe reaches 0.888);
  4. the causal-LM path in bf16: SmolLM2-135M on Grimm tales, GPart on q,k,v,o, 20 steps: eval loss decreases;
  5. INFO timing: median training-step time of GPart / Uni-LoRA / LoRA on MiniLM (bf16, batch 32 x 128);
  6. INFO bf16 rounding: what GPart's forward sees of a small Delta W under autocast, bf16(W0 + Delta W) - bf16(W0).
Offline: only MiniLM and SmolLM2 from the installed asset packages; nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpart_edu as ge  # noqa: E402
from gpart_edu import assets  # noqa: E402
from gpart_edu.core.projections import hashed_group_ids  # noqa: E402
from gpart_edu.finetune import engine

RESULTS: list[bool] = []
CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")


def check(name: str, ok: bool, detail: str) -> None:
    RESULTS.append(bool(ok))
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def info(name: str, detail: str) -> None:
    print(f"INFO {name}: {detail}", flush=True)


def skip(name: str, why: str) -> None:
    print(f"SKIP {name}: {why}", flush=True)


def sync():
    if CUDA:
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------- 1
def hashed_ids():
    ranges = [(0, 0, 1_769_472, 23_040), (7, 2 ** 40, 2 ** 40 + 4_000_000, 131_072), (123, 0, 20_000_000, 524_288)]
    if not CUDA:
        a = hashed_group_ids(3, 0, 1_000_000, 997)
        b = torch.cat([hashed_group_ids(3, s, min(1_000_000, s + 65_536), 997) for s in range(0, 1_000_000, 65_536)])
        check("hashed ids are chunking-invariant (CPU)", torch.equal(a, b), "1,000,000 positions, chunks of 65,536")
        skip("hashed ids CPU == GPU", "no CUDA device")
        return
    for seed, start, stop, d in ranges:
        cpu = hashed_group_ids(seed, start, stop, d)
        gpu = hashed_group_ids(seed, start, stop, d, device="cuda").cpu()
        check(f"hashed ids CPU == GPU (seed {seed}, [{start:,}, {stop:,}), d {d:,})", torch.equal(cpu, gpu),
              f"{(cpu != gpu).sum().item()} of {stop - start:,} differ")


# ---------------------------------------------------------------------------------------- 2
def placement():
    if not CUDA:
        skip("device placement of theta and projection state", "no CUDA device")
        return
    model, tok = assets.load_classifier("minilm", num_labels=2, seed=0)
    batch = tok(["a short test sentence", "and another, slightly longer, one"], return_tensors="pt", padding=True)
    labels = torch.tensor([0, 1])
    for method, kw in (("gpart", {"d": 23_040}), ("gpart", {"d": 23_040, "assignment": "hashed"}),
                       ("unilora", {"d": 23_040, "r": 4})):
        tag = f"{method} {kw.get('assignment', 'balanced')}"
        ad = ge.attach(model, method, targets=["query", "value"], seed=0, **kw)
        with torch.no_grad():
            ad.theta.copy_(torch.randn(ad.num_trainable, generator=torch.Generator().manual_seed(1)) * 0.05)
        model.eval()
        out_cpu = model(**batch, labels=labels)
        out_cpu.loss.backward()
        g_cpu, logits_cpu = ad.theta.grad.clone(), out_cpu.logits.detach().clone()
        ad.theta.grad = None
        model.to("cuda")
        out = model(**{k: v.cuda() for k, v in batch.items()}, labels=labels.cuda())
        out.loss.backward()
        P = ad.method.P
        bufs = {n: b.device.type for n, b in ad.named_buffers()}
        where = {"theta": ad.theta.device.type, **bufs}
        check(f"{tag}: theta and projection buffers on cuda", set(where.values()) == {"cuda"}, str(where))
        if P.stores_ids:
            check(f"{tag}: lazily built group ids on cuda", P._ids is not None and P._ids.device.type == "cuda",
                  str(None if P._ids is None else P._ids.device))
        dl = (out.logits.detach().cpu() - logits_cpu).abs().max().item()
        dg = ((ad.theta.grad.cpu() - g_cpu).abs().max() / g_cpu.abs().max()).item()
        check(f"{tag}: CPU and GPU agree (fp32)", dl <= 1e-4 and dg <= 1e-3,
              f"max |logits diff| {dl:.1e}, max |dL/dtheta diff| / max |dL/dtheta| {dg:.1e}")
        ad.theta.grad = None
        model.to("cpu")
        ad.detach()


# ---------------------------------------------------------------------------------------- 3
def cli_bf16_run():
    out = Path(tempfile.mkdtemp(prefix="gpu_check_cli_"))
    steps = 30 if CUDA else 3
    cmd = [sys.executable, "-m", "gpart_edu.cli", "finetune", "--recipe", "minilm-tweets", "--steps", str(steps),
           "--max-eval", "500" if CUDA else "64", "--no-progress", "--out", str(out)]
    cmd += ["--device", "cuda", "--bf16"] if CUDA else ["--device", "cpu"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        check("gpart-edu finetune (MiniLM + tweets)", False, p.stderr[-1500:])
        return
    r = json.loads((out / "results.json").read_text())
    first, last = r["evals"][0], r["final"]
    detail = (f"device {r['device']}, bf16 {r['bf16']}, {r['global_step']} steps, accuracy {first['accuracy']:.3f} -> "
              f"{last['accuracy']:.3f}, loss {first['loss']:.3f} -> {last['loss']:.3f}, "
              f"training {r['train_time_s']:.1f} s "
              f"({r['train_time_s'] / max(1, r['global_step']):.3f} s/step incl. evaluations), process {wall:.1f} s, "
              f"peak {r['peak_memory_bytes'] / 2**20:.0f} MiB ({r['peak_memory_kind']})")
    if CUDA:
        check("gpart-edu finetune on cuda in bf16 reaches accuracy > 0.75",
              r["device"].startswith("cuda") and r["bf16"] and last["accuracy"] > 0.75, detail)
    else:
        check("gpart-edu finetune on CPU (3 steps; the bf16 GPU run needs CUDA)", r["global_step"] == 3, detail)


# ---------------------------------------------------------------------------------------- 4
def causal_lm_bf16():
    if not CUDA:
        skip("causal-LM bf16 training (SmolLM2)", "no CUDA device (CPU fp32 covered by the test suite's tiny models)")
        return
    out = Path(tempfile.mkdtemp(prefix="gpu_check_lm_"))
    cfg = engine.RunConfig(model="smollm2", task="grimm", method="gpart", d=16_384,
                           targets=("q_proj", "k_proj", "v_proj", "o_proj"), lr=5e-3, steps=20, batch_size=8,
                           max_length=256, max_eval=32, warmup=0.1, device="cuda", bf16=True, progress=False,
                           logging_steps=5)
    r = engine.run(cfg, out)
    a, b = r["evals"][0], r["final"]
    check("SmolLM2 + GPart (q,k,v,o) bf16 on cuda: held-out loss decreases", b["loss"] < a["loss"],
          f"loss {a['loss']:.4f} -> {b['loss']:.4f} (perplexity {a['perplexity']:.2f} -> {b['perplexity']:.2f}), "
          f"D {r['model']['D']:,}, {r['train_time_s']:.1f} s for 20 steps")


# ---------------------------------------------------------------------------------------- 5
def step_timing():
    if not CUDA:
        skip("step timing", "no CUDA device")
        return
    base, tok = assets.load_classifier("minilm", num_labels=2, seed=0)
    base.to("cuda")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 128), generator=g).cuda()
    y = torch.randint(0, 2, (32,), generator=g).cuda()
    times = {}
    for name, method, kw in (("gpart", "gpart", {"d": 23_040}),
                             ("gpart-hashed", "gpart", {"d": 23_040, "assignment": "hashed"}),
                             ("unilora", "unilora", {"d": 23_040, "r": 4}), ("lora", "lora", {"r": 8})):
        ad = ge.attach(base, method, targets=["query", "value"], seed=0, **kw)
        opt = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=1e-4)
        ts = []
        for i in range(25):
            sync()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = base(input_ids=ids, labels=y).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if i >= 5:
                ts.append(time.perf_counter() - t0)
        times[name] = statistics.median(ts)
        ad.detach()
    ref = times["lora"]
    info("median training step, MiniLM q+v, bf16, batch 32 x 128 (20 timed steps after 5 warm-up)",
         ", ".join(f"{k} {v * 1e3:.1f} ms ({v / ref:.2f}x LoRA)" for k, v in times.items()))


# ---------------------------------------------------------------------------------------- 6
def bf16_rounding():
    model, _ = assets.load_classifier("minilm", num_labels=2, seed=0)
    W0 = model.bert.encoder.layer[0].attention.self.query.weight.detach().double() \
        if hasattr(model.bert.encoder.layer[0].attention.self, "query") else None
    if W0 is None:
        skip("bf16 rounding", "layout not found")
        return
    g = torch.Generator().manual_seed(0)
    for rel in (1e-4, 1e-3, 1e-2, 1e-1):
        dW = torch.randn(W0.shape, generator=g, dtype=torch.float64) * rel * W0.abs().mean()
        seen = (W0 + dW).float().to(torch.bfloat16).double() - W0.float().to(torch.bfloat16).double()
        kept = (seen * dW).sum() / (dW * dW).sum()
        err = (seen - dW).norm() / dW.norm()
        info(f"bf16(W0 + dW) - bf16(W0) vs dW, |dW| ~ {rel:g} mean|W0|",
             f"projection onto dW {kept.item():.3f} (unbiased: 1), relative error {err.item():.2f}")


def main() -> int:
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(0) if CUDA else "none"
    print(f"torch {torch.__version__}, CUDA {CUDA} ({name}), bf16 supported "
          f"{CUDA and torch.cuda.is_bf16_supported()}, gpart_edu {ge.__version__}", flush=True)
    if not CUDA:
        print("note: no CUDA device: the CUDA-only parts are skipped (SKIP lines); the CPU parts still run")
    for part in (hashed_ids, placement, cli_bf16_run, causal_lm_bf16, step_timing, bf16_rounding):
        t = time.perf_counter()
        try:
            part()
        except Exception as e:  # noqa: BLE001 -- report and continue with the other checks
            check(part.__name__, False, f"{type(e).__name__}: {e}")
        print(f"      ({part.__name__}: {time.perf_counter() - t:.1f} s)", flush=True)
    n_fail = RESULTS.count(False)
    print(f"{len(RESULTS) - n_fail} passed, {n_fail} failed in {time.perf_counter() - t0:.0f} s")
    return 1 if n_fail else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
