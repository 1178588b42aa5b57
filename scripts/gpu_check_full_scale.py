#!/usr/bin/env python
"""GPU check of the full-scale path (issue 6): one short, offline script; exit status 1 if a check fails.

    python scripts/gpu_check_full_scale.py [--minilm PATH] [--json FILE]   # ~2 minutes on one GPU; CPU: CUDA parts skipped

Checks (PASS / FAIL lines; INFO lines are measurements, SKIP lines say why something did not run):
  1. hashed partition ids: identical on CPU and GPU (three ranges, one starting at position 2^40);
  2. device placement: after model.to("cuda"), theta and every projection buffer (counts, lazily built ids) of
     GPart (balanced, hashed) and Uni-LoRA live on the GPU; CPU and GPU agree on logits and dL/dtheta (fp32);
  3. `gpart-edu finetune` (the console entry, engine + Trainer) on MiniLM + tweets, bf16 on the GPU, 30 steps:
     results.json says cuda + bf16, accuracy > 0.75 (the CPU run of the same recipe reaches 0.888);
  4. the causal-LM path in bf16 at real size: a Qwen2.5-0.5B-sized decoder (random init from its config), GPart
     d = 131,072 on q,k,v,o, 20 AdamW steps on one fixed batch of 8 x 512 tokens: the loss must fall (it memorises
     the batch); and SmolLM2-135M on Grimm tales through ``engine.run`` when that offline asset is installed;
  5. INFO timing: median training-step time of GPart / Uni-LoRA / LoRA on MiniLM (bf16, batch 32 x 128);
  6. INFO bf16 rounding: what GPart's forward sees of a small Delta W under autocast, bf16(W0 + Delta W) - bf16(W0);
  7. determinism of GPart's backward (an index_add of the weight gradient into theta): d L / d theta computed 5
     times on a RoBERTa-base-sized encoder (random init, all linear layers, d = 23,040), with and without
     torch.use_deterministic_algorithms(True): how many distinct results, the largest difference, the time.
Offline: MiniLM (``--minilm``: the asset package, or a local copy of its folder) and, optionally, SmolLM2 from the
installed asset packages; nothing is downloaded. ``--json`` writes every line and number to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # lets check 7 turn deterministic algorithms on
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpart_edu as ge  # noqa: E402
from gpart_edu import assets  # noqa: E402
from gpart_edu.core.projections import hashed_group_ids  # noqa: E402
from gpart_edu.finetune import engine  # noqa: E402

RESULTS: list[bool] = []
LINES: list[dict] = []          # every PASS / FAIL / INFO / SKIP line with its numbers (--json)
CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
MINILM = "minilm"               # --minilm: the asset package's name, or a folder holding the same checkpoint


def check(name: str, ok: bool, detail: str, **numbers) -> None:
    RESULTS.append(bool(ok))
    LINES.append({"kind": "PASS" if ok else "FAIL", "name": name, "detail": detail, **numbers})
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def info(name: str, detail: str, **numbers) -> None:
    LINES.append({"kind": "INFO", "name": name, "detail": detail, **numbers})
    print(f"INFO {name}: {detail}", flush=True)


def skip(name: str, why: str) -> None:
    LINES.append({"kind": "SKIP", "name": name, "detail": why})
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
    model, tok = assets.load_classifier(MINILM, num_labels=2, seed=0)
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
    cmd = [sys.executable, "-m", "gpart_edu.cli", "finetune", "--recipe", "minilm-tweets", "--model", MINILM,
           "--steps", str(steps),
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
    numbers = {"device": r["device"], "bf16": r["bf16"], "steps": r["global_step"], "accuracy_before": first["accuracy"],
               "accuracy_after": last["accuracy"], "loss_before": first["loss"], "loss_after": last["loss"],
               "train_time_s": r["train_time_s"], "process_s": wall, "peak_memory_bytes": r["peak_memory_bytes"],
               "n_eval": r["task"]["n_eval"], "versions": r["versions"]}
    if CUDA:
        check("gpart-edu finetune on cuda in bf16 reaches accuracy > 0.75",
              r["device"].startswith("cuda") and r["bf16"] and last["accuracy"] > 0.75, detail, **numbers)
    else:
        check("gpart-edu finetune on CPU (3 steps; the bf16 GPU run needs CUDA)", r["global_step"] == 3, detail,
              **numbers)


# ---------------------------------------------------------------------------------------- 4
QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096)
QWEN_TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64)


def causal_lm_bf16():
    from transformers import AutoConfig, AutoModelForCausalLM
    size, batch = (QWEN_05B, (8, 512)) if CUDA else (QWEN_TINY, (2, 16))
    torch.manual_seed(0)
    with torch.device(DEV):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **size)).float()
    ad = ge.attach(model, "gpart", d=131_072 if CUDA else 512, seed=0, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    ids = torch.randint(3, size["vocab_size"], batch, generator=torch.Generator().manual_seed(0)).to(DEV)
    opt = torch.optim.AdamW([ad.theta], lr=5e-2)
    losses = []
    sync()
    t0 = time.perf_counter()
    for _ in range(20):
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=CUDA):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    sync()
    secs = time.perf_counter() - t0
    n = sum(p.numel() for n_, p in model.named_parameters() if not n_.startswith("gpart_edu_adapter"))
    tag = "Qwen2.5-0.5B-sized decoder" if CUDA else "tiny Qwen2 decoder (CPU)"
    check(f"{tag} (random init) + GPart (q,k,v,o) {'bf16 on cuda' if CUDA else 'fp32 on CPU'}: the training loss "
          f"falls on a fixed batch", losses[-1] < losses[0] - 0.1 and all(map(torch.isfinite, torch.tensor(losses))),
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in 20 steps ({secs:.1f} s), {n:,} parameters, D {ad.D:,}, "
          f"d {ad.num_trainable:,}, batch {batch[0]} x {batch[1]}",
          losses=losses, seconds=secs, params=n, D=ad.D, d=ad.num_trainable)
    ad.detach()
    del model, opt
    if not CUDA:
        skip("causal-LM bf16 through engine.run (SmolLM2)", "no CUDA device")
        return
    try:
        assets.smollm2_gguf_dir()
    except assets.AssetMissing as e:
        skip("causal-LM bf16 through engine.run (SmolLM2)", f"offline SmolLM2 not installed here ({e})")
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
    base, tok = assets.load_classifier(MINILM, num_labels=2, seed=0)
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
    model, _ = assets.load_classifier(MINILM, num_labels=2, seed=0)
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


# ---------------------------------------------------------------------------------------- 7
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, num_labels=2)
ROBERTA_TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=64, type_vocab_size=1, pad_token_id=1, num_labels=2)


def determinism():
    from transformers import AutoConfig, AutoModelForSequenceClassification
    size, batch = (ROBERTA_BASE, (32, 128)) if CUDA else (ROBERTA_TINY, (4, 16))
    torch.manual_seed(0)
    config = AutoConfig.for_model("roberta", **size)
    config._attn_implementation = "eager"       # isolate GPart's reduction from the attention kernels' own choices
    with torch.device(DEV):
        model = AutoModelForSequenceClassification.from_config(config).float().eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, size["vocab_size"], batch, generator=g).to(DEV)
    y = torch.randint(0, 2, (batch[0],), generator=g).to(DEV)
    out = {}
    for assignment in ("balanced", "hashed"):
        ad = ge.attach(model, "gpart", d=23_040 if CUDA else 300, seed=0, targets="all-linear",
                       assignment=assignment, trainable=())
        with torch.no_grad():
            ad.theta.normal_(0, 1e-3, generator=torch.Generator(device=DEV).manual_seed(1))
        for det in (False, True):
            torch.use_deterministic_algorithms(det)
            grads, times = [], []
            try:
                for _ in range(5):
                    ad.theta.grad = None
                    sync()
                    t0 = time.perf_counter()
                    model(input_ids=ids, labels=y).loss.backward()
                    sync()
                    times.append(time.perf_counter() - t0)
                    grads.append(ad.theta.grad.detach().clone())
            finally:
                torch.use_deterministic_algorithms(False)
            distinct = len({g_.cpu().numpy().tobytes() for g_ in grads})
            diff = max(float((g_ - grads[0]).abs().max()) for g_ in grads)
            rel = diff / max(float(grads[0].abs().max()), 1e-30)
            key = f"{assignment}, deterministic={det}"
            out[key] = {"distinct_of_5": distinct, "max_abs_diff": diff, "max_rel_diff": rel,
                        "median_forward_backward_s": statistics.median(times[1:])}
            info(f"GPart d L/d theta, {assignment}, use_deterministic_algorithms({det}), 5 repeats",
                 f"{distinct} distinct result(s), max |diff| {diff:.2e} ({rel:.1e} of max |grad|), median "
                 f"forward+backward {statistics.median(times[1:]) * 1e3:.1f} ms", **out[key])
        ad.detach()
    for assignment in ("balanced", "hashed"):
        det = out[f"{assignment}, deterministic=True"]
        check(f"GPart backward ({assignment}) is bitwise reproducible under torch.use_deterministic_algorithms(True)",
              det["distinct_of_5"] == 1, f"{det['distinct_of_5']} distinct of 5, max |diff| {det['max_abs_diff']:.1e}")


def main(argv=None) -> int:
    global MINILM
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minilm", default="minilm", help="'minilm' (the asset package) or a folder with its checkpoint")
    ap.add_argument("--json", help="write every line and its numbers to this file")
    ap.add_argument("--only", nargs="+", help="run only these parts (function names)")
    args = ap.parse_args(argv)
    MINILM = args.minilm
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(0) if CUDA else "none"
    print(f"torch {torch.__version__}, CUDA {CUDA} ({name}), bf16 supported "
          f"{CUDA and torch.cuda.is_bf16_supported()}, gpart_edu {ge.__version__}", flush=True)
    if not CUDA:
        print("note: no CUDA device: the CUDA-only parts are skipped (SKIP lines); the CPU parts still run")
    parts = (hashed_ids, placement, cli_bf16_run, causal_lm_bf16, step_timing, bf16_rounding, determinism)
    for part in parts:
        if args.only and part.__name__ not in args.only:
            continue
        t = time.perf_counter()
        try:
            part()
        except Exception as e:  # noqa: BLE001 -- report and continue with the other checks
            check(part.__name__, False, f"{type(e).__name__}: {e}")
        print(f"      ({part.__name__}: {time.perf_counter() - t:.1f} s)", flush=True)
        LINES.append({"kind": "TIME", "name": part.__name__, "seconds": time.perf_counter() - t})
        if args.json:
            _write(args.json, name, t0)
    n_fail = RESULTS.count(False)
    print(f"{len(RESULTS) - n_fail} passed, {n_fail} failed in {time.perf_counter() - t0:.0f} s")
    if args.json:
        _write(args.json, name, t0)
    return 1 if n_fail else 0


def _write(path, device_name, t0):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": "gpart_edu.gpu_check_full_scale", "device": device_name, "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpart_edu": ge.__version__, "seconds": time.perf_counter() - t0,
           "passed": RESULTS.count(True), "failed": RESULTS.count(False), "lines": LINES}
    Path(path).write_text(json.dumps(doc, indent=1, default=str) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
