"""Training-step benchmark: median step time and peak memory per method, ratios measured in the same run.

    python benchmarks/bench.py                      # MiniLM, batch 16 x 64 tokens, q+v and all-linear
    python benchmarks/bench.py --rounds 5 --steps 8 --targets qv

Each (method, targets) configuration runs in its own fresh process (so peak memory is its own); rounds are
interleaved (every configuration once per round, rotating the order) so that slow drifts of a shared machine
hit all configurations alike. A step = forward + backward + AdamW step. Peak memory: on CUDA
``max_memory_allocated``; on CPU the process's peak resident set size (VmHWM, reset after the model is built
via ``/proc/self/clear_refs``) with glibc told to mmap every allocation >= 64 KiB, so the resident set follows
live tensors. Both give the extra memory two training steps need (activations, gradients, optimizer state,
partition ids), measured in a separate process per configuration from the timing runs.
Also timed: the D = 1e8, d = 1e6 partition isometry check from group counts, per assignment.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = [
    ("full", {}), ("full-targets", {}), ("head", {}),
    ("lora", {"r": 8, "alpha": 8}), ("unilora", {"d": 23_040, "r": 4}),
    ("gpart", {"d": 23_040, "assignment": "balanced"}), ("gpart", {"d": 23_040, "assignment": "multinomial"}),
    ("gpart", {"d": 23_040, "assignment": "hashed"}),
]
TARGETS = {"qv": ["query", "value"], "all": "all-linear"}


def label(method, cfg):
    return method + (f"-{cfg['assignment']}" if "assignment" in cfg else "")


# ------------------------------------------------------------------------------------- worker
def _vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    import torch

    import gpart_edu as ge
    from gpart_edu import assets
    from gpart_edu.finetune.train import classification_loss

    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    model, tok = assets.load_classifier("minilm", num_labels=2)
    train_split, _ = assets.load_tweets()
    data = assets.tokenize(tok, train_split, max_length=spec["seq"])
    batch = {k: v[: spec["batch"]].to(dev) for k, v in data.items()}
    method, cfg, targets = spec["method"], spec["cfg"], TARGETS[spec["targets"]]
    adapter = None
    if method == "full":
        params = list(model.parameters())
    elif method in ("full-targets", "head"):
        for p in model.parameters():
            p.requires_grad_(False)
        heads = [model.classifier]
        if method == "full-targets":
            heads += [m for _, m in ge.find_targets(model, targets)]
        for m in heads:
            for p in m.parameters():
                p.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        adapter = ge.attach(model, method, targets=targets, **cfg)
        params = [p for p in model.parameters() if p.requires_grad]
    model.to(dev).train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    n_trainable = sum(p.numel() for p in params)

    def step():
        loss = classification_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = {"trainable": n_trainable, "D": adapter.D if adapter else None}
    if spec["measure"] == "memory":
        # everything a training step needs beyond the built model: activations, gradients, optimizer state,
        # partition ids (built lazily on the first forward)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        else:
            import gc
            gc.collect()
            if not _reset_peak_rss():
                return {**out, "peak_bytes": -1, "state_bytes": 0}
            base = _vm_hwm_bytes()
        for _ in range(2):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
            out["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - base
        else:
            out["peak_bytes"] = _vm_hwm_bytes() - base
        out["state_bytes"] = sum(b.numel() * b.element_size() for b in adapter.method.buffers()) if adapter else 0
        return out
    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["steps"]):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {**out, "times": times}


# ------------------------------------------------------------------------------- scale check
def scale_check(D: int = 10**8, d: int = 10**6) -> list[dict]:
    """Time the isometry check of a D x d partition from its group counts (no dense P, no ids kept)."""
    import gpart_edu as ge
    from gpart_edu.lab.geometry import partition_check
    out = []
    for assignment in ("balanced", "multinomial", "hashed"):
        t0 = time.perf_counter()
        P = ge.PartitionProjection(D, d, seed=0, assignment=assignment)   # counts: analytic / ids / one hash pass
        built = time.perf_counter() - t0
        rep = partition_check(P)
        out.append({"assignment": assignment, "D": D, "d": d, "build_s": built, "check_s": rep["seconds"],
                    "seconds": time.perf_counter() - t0, "max_abs_gram_residual": rep["max_abs"],
                    "ok": bool(rep["sums_to_D"] and rep["empty"] == 0 and rep["max_abs"] <= 1e-12)})
    return out


def jacobian_check(k: int = 20) -> dict:
    """Time the matrix-free top-k and bottom-k Jacobian singular values of GPart on MiniLM query+value."""
    import gpart_edu as ge
    from gpart_edu import assets
    from gpart_edu.lab.jacobian import singular_values
    model, _ = assets.load_classifier("minilm", num_labels=2)
    adapter = ge.attach(model, "gpart", d=23_040, seed=0, targets=["query", "value"])
    t0 = time.perf_counter()
    spec = singular_values(adapter, k=k, method="lanczos")
    secs = time.perf_counter() - t0
    err = float(max(abs(spec.top - 1).max(), abs(spec.bottom - 1).max()))
    return {"D": adapter.D, "d": adapter.num_trainable, "k": k, "seconds": secs, "max_abs_sigma_minus_1": err,
            "ok": err <= 1e-10}


# ------------------------------------------------------------------------------------- parent
def run(args) -> dict:
    import torch
    dev = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else (
        "cpu" if args.device == "auto" else args.device)
    configs = [(m, c, t) for t in args.targets.split(",") for m, c in METHODS
               if not (m == "head" and t != args.targets.split(",")[0])]
    samples = {i: [] for i in range(len(configs))}
    memory, results = {}, {}
    base_spec = {"device": dev, "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup}

    def launch(spec, env=None):
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, check=False, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # memory: one process per configuration; every allocation >= 64 KiB goes straight to mmap so that the
    # resident set follows live tensors (glibc would otherwise keep freed memory and hide the peak)
    mem_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    for i, (m, c, t) in enumerate(configs):
        memory[i] = launch({**base_spec, "method": m, "cfg": c, "targets": t, "measure": "memory"}, mem_env)
        print(f"memory {t:>3} {label(m, c):<18} {memory[i]['peak_bytes'] / 2**20:8.1f} MB", file=sys.stderr)
    for r in range(args.rounds):
        order = list(range(len(configs)))
        order = order[r % len(order):] + order[: r % len(order)]
        for i in order:
            m, c, t = configs[i]
            res = launch({**base_spec, "method": m, "cfg": c, "targets": t, "measure": "time"})
            samples[i].append(res)
            print(f"round {r + 1}/{args.rounds} {t:>3} {label(m, c):<18} "
                  f"median {statistics.median(res['times']) * 1e3:8.1f} ms", file=sys.stderr)
    for i, (m, c, t) in enumerate(configs):
        times = [x for s in samples[i] for x in s["times"]]
        results[f"{t}/{label(m, c)}"] = {
            "targets": t, "method": label(m, c), "median_step_s": statistics.median(times),
            "peak_extra_bytes": memory[i]["peak_bytes"], "trainable": memory[i]["trainable"],
            "D": memory[i]["D"], "state_bytes": memory[i]["state_bytes"], "n_steps": len(times)}
    return {"device": dev, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch": args.batch, "seq": args.seq, "rounds": args.rounds, "steps_per_round": args.steps,
            "configs": results, "scale_check": scale_check() if not args.no_scale else [],
            "jacobian_check": jacobian_check() if not args.no_scale else {}}


def table(res: dict) -> str:
    rows = ["| targets | method | trainable (incl. head) | median step (ms) | × full FT | × full FT (targets) | × LoRA r=8 "
            "| peak extra memory (MB) | × LoRA | partition state (B/weight) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cfgs = res["configs"]
    for key, v in cfgs.items():
        t = v["targets"]
        full, fullt, lora = (cfgs.get(f"{t}/{n}") for n in ("full", "full-targets", "lora"))

        def ratio(ref, field):
            return f"{v[field] / ref[field]:.2f}" if ref and ref[field] > 0 else "—"
        per_w = f"{v['state_bytes'] / v['D']:.2f}" if v["D"] else "—"
        rows.append(f"| {t} | {v['method']} | {v['trainable']:,} | {v['median_step_s'] * 1e3:.1f} | "
                    f"{ratio(full, 'median_step_s')} | {ratio(fullt, 'median_step_s')} | "
                    f"{ratio(lora, 'median_step_s')} | {v['peak_extra_bytes'] / 2**20:.1f} | "
                    f"{ratio(lora, 'peak_extra_bytes')} | {per_w} |")
    if res["scale_check"]:
        rows += ["", "| isometry check from counts | D | d | build P (s) | check (s) | max abs(PᵀP − I) | ok |",
                 "|---|---:|---:|---:|---:|---:|---|"]
        rows += [f"| {s['assignment']} | {s['D']:,} | {s['d']:,} | {s['build_s']:.2f} | {s['check_s']:.3f} | "
                 f"{s['max_abs_gram_residual']:.1e} | {s['ok']} |" for s in res["scale_check"]]
    j = res.get("jacobian_check")
    if j:
        rows += ["", f"GPart Jacobian on MiniLM q+v (D = {j['D']:,}, d = {j['d']:,}), matrix-free fp64: top-{j['k']} "
                     f"and bottom-{j['k']} singular values in {j['seconds']:.1f} s, max |σ − 1| = "
                     f"{j['max_abs_sigma_minus_1']:.1e} (ok: {j['ok']})"]
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--targets", default="qv,all")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-scale", action="store_true",
                    help="skip the D = 1e8 isometry check and the MiniLM Jacobian timing")
    ap.add_argument("--out", default="benchmarks/results.json")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    for name in ("rounds", "steps", "batch", "seq"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    res = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"device={res['device']} torch={res['torch']} threads={res['threads']} batch={res['batch']}x{res['seq']} "
          f"rounds={res['rounds']} x {res['steps_per_round']} steps (medians)\n")
    print(table(res))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
