#!/usr/bin/env python
"""The GPU validation run: every GPU check of the project in one short script, JSON results for results/gpu/.

    python scripts/gpu_validation.py --out results/gpu [--minilm PATH] [--budget 420]

Runs, each in its own process with its own time limit, and writes into ``--out``:
    env.json         device, driver, torch / CUDA / transformers versions, nvidia-smi, wall time of each part
    landscape.json   scripts/gpu_check_landscape.py: landscapes, HVPs and eigenvalues equal on CUDA and CPU (fp64)
    full_scale.json  scripts/gpu_check_full_scale.py: hashed ids CPU == GPU, device placement, `gpart-edu finetune`
                     on MiniLM + tweets in bf16, the causal-LM path at 0.5B size in bf16, step timing on MiniLM,
                     bf16 rounding, determinism of GPart's backward with and without deterministic algorithms
    bench.json       benchmarks/gpu_bench.py: step time and peak memory of full FT, full FT of the targets, LoRA,
                     Uni-LoRA and GPart (balanced, hashed), fp32 and bf16, RoBERTa-base- and 0.5B-decoder-sized
    log.txt          everything the three printed
A part that runs out of its time is stopped and reported; the others still run. On a machine without CUDA the
CUDA-only parts skip themselves (the CPU halves still run), which is how this script is tested before a GPU run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_part(name, cmd, limit, log, env) -> dict:
    t0 = time.perf_counter()
    log.write(f"\n===== {name}: {' '.join(cmd)} (limit {limit} s)\n")
    log.flush()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\nTIMEOUT after {limit} s"
        rc = "timeout"
    log.write(out)
    log.flush()
    secs = time.perf_counter() - t0
    print(f"{name}: exit {rc} in {secs:.0f} s", flush=True)
    return {"name": name, "returncode": rc, "seconds": secs, "output_tail": out[-3000:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu"))
    ap.add_argument("--minilm", default="minilm", help="'minilm' (asset package) or a folder with its checkpoint")
    ap.add_argument("--limits", type=int, nargs=3, default=(90, 200, 240), metavar=("LANDSCAPE", "FULL", "BENCH"),
                    help="seconds allowed for each part")
    ap.add_argument("--bench-args", default="", help="extra arguments for benchmarks/gpu_bench.py")
    ap.add_argument("--parts", nargs="+", default=["landscape", "full_scale", "bench"],
                    choices=["landscape", "full_scale", "bench"], help="which parts to run (default: all three)")
    ap.add_argument("--tag", default="", help="suffix of env.json / log.txt (several calls into one folder)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MPLBACKEND", None)
    import torch
    cuda = torch.cuda.is_available()
    info = {"format": "gpart_edu.gpu_validation", "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cuda_available": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = "missing"
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    py = sys.executable
    parts = []
    tag = f"_{args.tag}" if args.tag else ""
    log_path = out / f"log{tag}.txt"
    with open(log_path, "w") as log:
        if "landscape" in args.parts:
            parts.append(run_part("landscape", [py, "scripts/gpu_check_landscape.py", "--json",
                                                str(out / "landscape.json")], args.limits[0], log, env))
        if "full_scale" in args.parts:
            parts.append(run_part("full_scale", [py, "scripts/gpu_check_full_scale.py", "--minilm", args.minilm,
                                                 "--json", str(out / "full_scale.json")], args.limits[1], log, env))
        if "bench" in args.parts:
            bench = [py, "benchmarks/gpu_bench.py", "--json", str(out / "bench.json")]
            if not cuda:
                bench += ["--device", "cpu", "--tiny", "--warmup", "1", "--steps", "2"]
            parts.append(run_part("bench", bench + args.bench_args.split(), args.limits[2], log, env))
    info["parts"] = [{k: v for k, v in p.items() if k != "output_tail"} for p in parts]
    info["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (out / f"env{tag}.json").write_text(json.dumps(info, indent=1) + "\n")
    fails = [p["name"] for p in parts if p["returncode"] != 0]
    print(("all parts passed" if not fails else f"parts failing: {fails}") + f"; results in {out}")
    summary = re.findall(r"^(?:PASS|FAIL|INFO|SKIP|ok ).*$|^  \S.* ms.*$", log_path.read_text(), re.M)
    print("\n".join(summary[-80:]))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
