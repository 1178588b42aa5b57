"""GPU training-step cost of full fine-tuning, LoRA, Uni-LoRA and GPart on two real architectures (random init).

    python benchmarks/gpu_bench.py --json results/gpu/bench.json         # one GPU, about 2-3 minutes on an H200
    python benchmarks/gpu_bench.py --tiny --device cpu                   # the same code paths on tiny configs

Models (random weights from a config: the cost of a step does not depend on the values):
    encoder  RoBERTa-base-sized sequence classifier (12 layers, hidden 768, 125M parameters), batch 32 x 128
    decoder  a Qwen2.5-0.5B-sized causal LM (24 layers, hidden 896, vocab 151,936, 494M parameters), batch 8 x 512
Targets: query+value (q_proj+v_proj) and all-linear (output heads excluded). Methods: full fine-tuning (every
parameter), full fine-tuning of the targets (the targeted weights and biases, plus the classification head),
LoRA r = 8 (alpha 8), Uni-LoRA (r = 4) and GPart (balanced and hashed assignment) at the paper's d (encoder
23,040; decoder 131,072); adapters keep the classification head trainable ("auto"). Precision: fp32 (torch's
default matmul precision, no TF32) and bf16 autocast (fp32 master weights).
A step = forward + backward + AdamW step. Per configuration: ``--warmup`` untimed steps (the first also builds
GPart's group ids), then the median of ``--steps`` timed steps, each bracketed by torch.cuda.synchronize().
Peak memory: torch.cuda.max_memory_allocated over the timed steps (reset before them), in total and above the
memory the model's weights take. Ratios (to full fine-tuning, to LoRA) are taken within the same run, model,
targets and precision. One model per architecture is built and reused: adapters are attached and detached
(detach restores the model), and each configuration's optimizer state is freed before the next.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpart_edu as ge  # noqa: E402

ARCH = {
    "encoder": dict(kind="roberta", batch=(32, 128), d=23_040, targets={"qv": ("query", "value")},
                    config=dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                                pad_token_id=1, num_labels=2)),
    "decoder": dict(kind="qwen2", batch=(8, 512), d=131_072, targets={"qv": ("q_proj", "v_proj")},
                    config=dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                                max_position_embeddings=4096)),
}
TINY = {
    "encoder": dict(batch=(4, 16), d=300, config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=2, intermediate_size=64,
                                                      max_position_embeddings=64, type_vocab_size=1,
                                                      pad_token_id=1, num_labels=2)),
    "decoder": dict(batch=(2, 16), d=300, config=dict(vocab_size=128, hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, tie_word_embeddings=True,
                                                      max_position_embeddings=64)),
}
METHODS = ("full", "full-targets", "lora", "unilora", "gpart-balanced", "gpart-hashed")
HEADS = ("classifier", "score")


def build(arch: str, tiny: bool, dev: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    spec = {**ARCH[arch], **(TINY[arch] if tiny else {})}
    cfg = AutoConfig.for_model(ARCH[arch]["kind"], **spec["config"])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(dev):
        model = (AutoModelForSequenceClassification if arch == "encoder" else AutoModelForCausalLM).from_config(cfg)
    model.float().train()
    g = torch.Generator().manual_seed(0)
    B, T = spec["batch"]
    ids = torch.randint(3, cfg.vocab_size, (B, T), generator=g).to(dev)
    labels = torch.randint(0, 2, (B,), generator=g).to(dev) if arch == "encoder" else ids.clone()
    return model, {"input_ids": ids, "labels": labels}, spec


def prepare(model, method: str, targets, d: int):
    """Attach the adapter or set requires_grad; returns (adapter or None, trainable parameter count)."""
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return None
    if method == "full-targets":
        names = {n for n, _ in ge.find_targets(model, targets)}
        for n, p in model.named_parameters():
            p.requires_grad_(n.rsplit(".", 1)[0] in names or n.split(".")[0] in HEADS)
        return None
    name, kw = {"lora": ("lora", {"r": 8, "alpha": 8.0}), "unilora": ("unilora", {"d": d, "r": 4}),
                "gpart-balanced": ("gpart", {"d": d, "assignment": "balanced"}),
                "gpart-hashed": ("gpart", {"d": d, "assignment": "hashed"})}[method]
    return ge.attach(model, name, targets=targets, seed=0, **kw)


def restore(model, adapter):
    if adapter is not None:
        adapter.detach()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_config(model, batch, method, targets, d, bf16, warmup, steps, dev) -> dict:
    t_setup = time.perf_counter()
    adapter = prepare(model, method, targets, d)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-7, weight_decay=0.0)
    n_train = sum(p.numel() for p in params)
    times, first_step = [], None
    try:
        for i in range(warmup + steps):
            if i == warmup and dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            sync(dev)
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(dev)
            dt = time.perf_counter() - t0
            if i == 0:
                first_step = dt
            if i >= warmup:
                times.append(dt)
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        finite = bool(torch.isfinite(loss.detach()).item())
    finally:
        del opt
        restore(model, adapter)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"method": method, "bf16": bf16, "trainable": n_train, "D": adapter.D if adapter is not None else None,
            "median_step_s": statistics.median(times), "min_step_s": min(times), "max_step_s": max(times),
            "first_step_s": first_step, "setup_and_steps_s": time.perf_counter() - t_setup,
            "peak_bytes": peak, "loss_finite": finite, "n_timed": len(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (a CPU check of the code paths)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--archs", nargs="+", default=list(ARCH))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --tiny to check the code paths")
        return 2
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "warmup": args.warmup, "steps": args.steps,
           "tiny": args.tiny}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    rows, t_all = [], time.perf_counter()
    for arch in args.archs:
        t0 = time.perf_counter()
        model, batch, spec = build(arch, args.tiny, dev)
        for p in model.parameters():
            p.requires_grad_(False)
        sync(dev)
        weights = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{arch}: {n_params:,} parameters, batch {spec['batch']}, built in {time.perf_counter() - t0:.1f} s",
              flush=True)
        for tname, targets in (("qv", spec["targets"]["qv"]), ("all-linear", "all-linear")):
            for prec in args.precisions:
                for method in args.methods:
                    if method == "full" and tname != "qv":
                        continue            # full fine-tuning does not depend on the targets: measured once
                    r = run_config(model, batch, method, targets, spec["d"], prec == "bf16", args.warmup,
                                   args.steps, dev)
                    r.update(arch=arch, targets=tname, precision=prec, model_params=n_params,
                             weights_bytes=weights, batch=list(spec["batch"]))
                    if r["peak_bytes"] is not None and weights is not None:
                        r["peak_above_weights_bytes"] = r["peak_bytes"] - weights
                    rows.append(r)
                    mem = f", peak {r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] is not None else ""
                    print(f"  {arch:<8} {tname:<10} {prec:<4} {method:<15} {r['median_step_s'] * 1e3:9.2f} ms"
                          f"{mem}, trainable {r['trainable']:,}, first step {r['first_step_s']:.2f} s", flush=True)
        del model, batch
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    # ratios within (arch, targets, precision); full FT (measured with qv) is the reference for both target sets
    for r in rows:
        full = next((x for x in rows if x["arch"] == r["arch"] and x["precision"] == r["precision"]
                     and x["method"] == "full"), None)
        lora = next((x for x in rows if x["arch"] == r["arch"] and x["precision"] == r["precision"]
                     and x["targets"] == r["targets"] and x["method"] == "lora"), None)
        if full:
            r["time_vs_full"] = r["median_step_s"] / full["median_step_s"]
            if r["peak_bytes"] and full["peak_bytes"]:
                r["peak_vs_full"] = r["peak_bytes"] / full["peak_bytes"]
        if lora:
            r["time_vs_lora"] = r["median_step_s"] / lora["median_step_s"]
    out = {"format": "gpart_edu.gpu_bench", "env": env, "rows": rows, "seconds": time.perf_counter() - t_all}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(rows)} configurations in {out['seconds']:.0f} s")
    return 0 if all(r["loss_finite"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
