"""The ``gpart-edu`` command: fine-tune with a recipe or explicit settings, verify the isometry claims.

    gpart-edu finetune --model minilm --task tweets --method gpart --d 23040 --steps 30 --out runs/tweets
    gpart-edu finetune --recipe roberta-base-sst2 --out runs/sst2           # the paper's settings
    torchrun --nproc_per_node 4 --no-python gpart-edu finetune --recipe roberta-base-sst2 --out runs/sst2
(under torchrun / accelerate launch write --dim / --rank for --d / --r: their own parsers would read --d and
--r as ambiguous abbreviations of their options)
    gpart-edu verify --model minilm --method gpart --d 23040                # exit 0: every claim holds
    gpart-edu verify --adapter my-peft-lora --model minilm                   # a peft folder (notebook 07)
    gpart-edu recipes [--family glue] [--show roberta-base-sst2]
    gpart-edu audit --model minilm --adapter my-peft-folder --json audit.json   # isometry audit (notebook 08)
    gpart-edu audit --recipe minilm-tweets                                     # the recipe's map at its init
    python -m gpart_edu ...  is the same command;  gpart-edu --version

Exit status (``EXIT_*``; docs/errors.md): 0 success / every claimed property holds; 1 a claimed property fails
(verify, audit); 2 usage or input error (out-of-range values, unknown names, a missing --model folder, a damaged
adapter file, a non-empty --out), with a message saying what to change; 3 internal error (a bug: the traceback is
printed); 130 interrupted (Ctrl-C).
Taught in notebooks/06_full_scale.ipynb, sections 3 and 7 (how to launch; verify from a terminal).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path
from statistics import mean, pstdev

import torch.distributed as dist

from . import __version__, assets
from .core import registry
from .core.projections import ASSIGNMENTS
from .errors import GPartEduError
from .finetune import engine, optim, recipes, tasks
from .lab.audit import cmd_audit
from .lab.verify import cmd_verify


EXIT_OK, EXIT_CLAIM_FAILS, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# --------------------------------------------------------------------------------- arg types
def _number(kind, low=None, high=None, low_open=False, high_open=False, what="a number"):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        bad = (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
               or (high is not None and (v >= high if high_open else v > high)))
        if bad:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            bounds = " and ".join(x for x in (lo, hi) if x)
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return v
    return parse


POS_INT = _number(int, 1, what="a positive integer")
NONNEG_INT = _number(int, 0, what="an integer >= 0")
POS_FLOAT = _number(float, 0, low_open=True, what="a positive number")
NONNEG_FLOAT = _number(float, 0, what="a number >= 0")
FRACTION = _number(float, 0, 1, high_open=True, what="a fraction in [0, 1)")


def _norms(text):
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals or any(not v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, e.g. 0.1,1,10; got {text!r}")
    return vals


def _targets(text):
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give layer name suffixes separated by commas, e.g. query,value")
    return parts[0] if parts == ["all-linear"] else tuple(parts)


def _taking(option: str) -> str:
    """Return the registry's methods that take ``option``, for the help texts, e.g. 'gpart, unilora'."""
    return ", ".join(n for n in registry.NAMES if option in registry.options(n))


# ---------------------------------------------------------------------------------- parsers
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpart-edu", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"gpart-edu {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{finetune,verify,recipes,audit}")
    f = sub.add_parser("finetune", help="fine-tune a model and write results.json, the adapter and a summary")
    f.add_argument("--recipe", help="start from a named recipe (gpart-edu recipes); flags below override it")
    f.add_argument("--model", help="'minilm', 'smollm2', a hub id or a local folder")
    f.add_argument("--task", choices=sorted(tasks.TASKS), metavar="TASK",
                   help=f"offline: {', '.join(tasks.names('offline'))}; hub: {', '.join(tasks.names('hub'))}")
    f.add_argument("--method", choices=engine.METHODS)
    f.add_argument("--d", "--dim", dest="d", type=POS_INT,
                   help=f"length of theta ({_taking('d')}); write --dim under torchrun / accelerate launch")
    f.add_argument("--r", "--rank", dest="r", type=POS_INT, help=f"rank ({_taking('r')}); --rank under launchers")
    f.add_argument("--alpha", type=POS_FLOAT, help="LoRA alpha")
    f.add_argument("--assignment", choices=ASSIGNMENTS)
    f.add_argument("--targets", type=_targets, help="comma-separated layer names (default query,value)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--steps", type=POS_INT, help="optimizer steps")
    g.add_argument("--epochs", type=POS_FLOAT, help="epochs over the training set")
    f.add_argument("--seeds", type=NONNEG_INT, nargs="+", metavar="SEED", help="one run per seed (default 0)")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--lr", type=POS_FLOAT, help="learning rate of theta (baselines: of every trained tensor)")
    f.add_argument("--head-lr", type=POS_FLOAT, help="learning rate of the task head")
    f.add_argument("--weight-decay", type=NONNEG_FLOAT, help="AdamW weight decay of theta")
    f.add_argument("--head-weight-decay", type=NONNEG_FLOAT, help="of the task head (default: --weight-decay)")
    f.add_argument("--batch-size", type=POS_INT, help="global batch (all processes and accumulation steps)")
    b = f.add_mutually_exclusive_group()
    b.add_argument("--per-device-batch-size", type=POS_INT)
    b.add_argument("--grad-accum", type=POS_INT, help="gradient accumulation steps")
    f.add_argument("--eval-batch-size", type=POS_INT)
    f.add_argument("--warmup", type=FRACTION, help="warm-up fraction of the steps")
    f.add_argument("--schedule", choices=optim.SCHEDULES)
    f.add_argument("--dropout", type=FRACTION, help="model hidden/attention dropout")
    f.add_argument("--max-length", type=POS_INT, help="tokens per example (LM: block length)")
    f.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on when the GPU supports it)")
    f.add_argument("--device", choices=("auto", "cpu", "cuda"))
    f.add_argument("--max-train", type=POS_INT, help="use a seeded subset of the training set")
    f.add_argument("--max-eval", type=POS_INT, help="use a seeded subset of the evaluation set")
    f.add_argument("--eval-steps", type=POS_INT, help="evaluate every N steps (default: start, epochs, end)")
    f.add_argument("--save-steps", type=POS_INT, help="checkpoint every N steps (for --resume)")
    f.add_argument("--logging-steps", type=POS_INT)
    f.add_argument("--stop-after-steps", type=POS_INT, help="stop and checkpoint at this step (time budget)")
    f.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT")
    f.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT, replacing its results")
    f.add_argument("--dataset-path", help="a local copy of a hub task's data (folder)")
    f.add_argument("--workers", type=NONNEG_INT, help="data-loading worker processes (default 0)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar (evaluations are printed)")
    v = sub.add_parser("verify", help="check the isometry claims of a method on a model's layers")
    v.add_argument("--model", help="'minilm', a hub id or a local folder (only its config is read)")
    v.add_argument("--adapter", help="an adapter file (from finetune) or a peft folder (peft LoRA / Uni-LoRA, the "
                                     "official GPart fork; its layers from --model or its base_model_name_or_path): "
                                     "verify the trained theta")
    v.add_argument("--method", choices=registry.NAMES)
    v.add_argument("--d", "--dim", dest="d", type=POS_INT)
    v.add_argument("--r", "--rank", dest="r", type=POS_INT)
    v.add_argument("--alpha", type=POS_FLOAT)
    v.add_argument("--seed", type=NONNEG_INT, default=0)
    v.add_argument("--assignment", choices=ASSIGNMENTS, default="balanced")
    v.add_argument("--targets", type=_targets, default=None, help="default: query,value (or q_proj,v_proj)")
    v.add_argument("--pairs", type=POS_INT, default=20, help="random pairs for the distance ratios")
    v.add_argument("--k", type=POS_INT, default=6, help="top-k and bottom-k Jacobian singular values")
    v.add_argument("--spectrum", choices=("lanczos", "sample", "none"), default="lanczos",
                   help="Jacobian singular values: extremes by Lanczos, or a quick sample of columns")
    v.add_argument("--samples", type=POS_INT, default=128, help="theta coordinates for --spectrum sample")
    v.add_argument("--pair-norm", type=POS_FLOAT, default=1.0, help="||x|| = ||y|| of the random pairs")
    v.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    v.add_argument("--tol", type=POS_FLOAT, help="tolerance (default 1e-10 in float64, 1e-5 in float32)")
    v.add_argument("--claim", choices=("auto", "isometric"), default="auto",
                   help="auto: check what the method claims; isometric: require end-to-end isometry")
    v.add_argument("--json", help="also write the checks to this JSON file")
    r = sub.add_parser("recipes", help="list the paper's recipes, or show one with its cost")
    r.add_argument("--family", choices=("glue", "vit", "math", "cpu"))
    r.add_argument("--show", metavar="NAME", help="one recipe: every value, its cost and the command")
    a = sub.add_parser("audit", help="isometry audit of a PEFT method: Jacobian spectrum, distance ratios, degree")
    a.add_argument("--model", help="'minilm', a hub id or a local model folder (default: the peft folder's base)")
    a.add_argument("--adapter", help="a peft adapter folder (any supported tuner) or a gpart_edu adapter file")
    a.add_argument("--recipe", help="audit the recipe's method on its model at its initial theta (no folder)")
    a.add_argument("--norms", type=_norms, default=(0.1, 1.0, 10.0), help="||theta|| of the random points")
    a.add_argument("--pairs", type=POS_INT, default=20, help="random pairs for the distance ratios")
    a.add_argument("--k", type=POS_INT, default=10, help="extremes per end when the spectrum is matrix-free")
    a.add_argument("--spectrum", choices=("auto", "dense", "lanczos"), default="auto")
    a.add_argument("--seed", type=NONNEG_INT, default=0)
    a.add_argument("--json", help="also write the report to this JSON file")
    return p


# ---------------------------------------------------------------------------------- finetune
FLAG_FIELDS = ("model", "task", "method", "d", "r", "alpha", "assignment", "targets", "steps", "epochs", "lr",
               "head_lr", "weight_decay", "head_weight_decay", "batch_size", "per_device_batch_size", "grad_accum",
               "eval_batch_size", "warmup", "schedule", "dropout", "max_length", "bf16", "device", "max_train",
               "max_eval", "eval_steps", "save_steps", "logging_steps", "stop_after_steps", "dataset_path", "workers")


def config_from_args(args) -> engine.RunConfig:
    """RunConfig from a recipe (if any) overridden by the explicit flags; ConfigError on bad combinations."""
    given = {k: getattr(args, k) for k in FLAG_FIELDS if getattr(args, k) is not None}
    given.update(resume=args.resume, progress=not args.no_progress)
    if args.recipe:
        cfg = engine.RunConfig.from_recipe(args.recipe, **given)
    else:
        missing = [f"--{k}" for k in ("model", "task", "method") if k not in given]
        if missing:
            raise GPartEduError(f"{', '.join(missing)} required (or start from --recipe NAME)")
        if "steps" not in given and "epochs" not in given:
            raise GPartEduError("give --steps N or --epochs E")
        if given["method"] in ("head", "full") and "head_lr" not in given and "lr" not in given:
            given["lr"] = 1e-3
        cfg = engine.RunConfig(**given)
    cfg.model = check_model(cfg.model)
    cfg.validate()
    return cfg


def check_model(name: str) -> str:
    """Return --model with ``~`` expanded; a name that is a local path must be an existing folder."""
    if name in (assets.MINILM, assets.SMOLLM2):
        return name
    path = Path(name).expanduser()
    local = name.startswith(("/", ".", "~")) or name.count("/") >= 2 or path.exists()
    if local and not path.is_dir():
        raise GPartEduError(f"--model {name}: no such folder ({'a file' if path.exists() else 'missing'}); give a "
                            f"folder saved with save_pretrained, 'minilm', or a hub id such as org/name")
    return str(path) if local else name


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """--out must be a folder (or not exist yet); a non-empty one only with --resume or --overwrite."""
    if out.exists() and not out.is_dir():
        raise GPartEduError(f"--out {out} is a file; give a folder (it will hold results.json, the adapter and "
                            f"the checkpoints)")
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise GPartEduError(f"--out {out} is not empty (it holds {held}): pass --resume to continue its checkpoint, "
                            f"--overwrite to replace its results, or choose a new folder")


def _synchronize() -> None:
    """Under torchrun: wait until every rank has finished writing (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _leave_process_group() -> None:
    """Destroy the process group Trainer created before the interpreter exits: left to interpreter teardown,
    gloo's worker threads can be destroyed while still joinable, and the rank dies with SIGABRT
    ("terminate called without an active exception") after a successful run."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_finetune(args) -> int:
    cfg = config_from_args(args)
    seeds = args.seeds or [cfg.seed]
    out, runs = Path(args.out).expanduser(), []
    check_out(out, args.resume, args.overwrite)
    command = "gpart-edu " + " ".join(sys.argv[1:])
    try:
        for s in seeds:
            cfg.seed = s
            target = out if len(seeds) == 1 else out / f"seed-{s}"
            runs.append(engine.run(cfg, target, extra={"command": command}))
        _synchronize()
    finally:
        _leave_process_group()
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if len(seeds) > 1 and rank0:
        finals = [r["final"] for r in runs]
        keys = [k for k in finals[0] if isinstance(finals[0][k], (int, float)) and k != "step"]
        agg = {k: {"mean": mean(f[k] for f in finals), "std": pstdev(f[k] for f in finals)} for k in keys}
        (out / "results.json").write_text(json.dumps({"format": "gpart_edu.results.seeds", "seeds": seeds,
                                                      "runs": [f"seed-{s}" for s in seeds], "final": agg},
                                                     indent=2) + "\n")
        lines = [f"# {cfg.method} on {cfg.task} ({cfg.model}), {len(seeds)} seeds", "",
                 "| metric | mean | std |", "|---|---|---|"]
        lines += [f"| {k} | {v['mean']:.4f} | {v['std']:.4f} |" for k, v in agg.items()]
        (out / "summary.md").write_text("\n".join(lines) + "\n")
    if rank0:
        last = runs[-1]
        print(f"done: {out} (final: " + ", ".join(f"{k} {v:.4f}" for k, v in last["final"].items()
                                                   if isinstance(v, float)) + ")")
    return 0


# ------------------------------------------------------------------------------------ recipes
def cmd_recipes(args) -> int:
    if args.show:
        r = recipes.get(args.show)
        for k, v in r.as_dict().items():
            print(f"{k:>22}: {v}")
        c = recipes.cost(r)
        print(f"{'parameters':>22}: model {c['model_params']:,}, adapted D {c['D']:,}, theta {c['theta']:,}, "
              f"head {c['head']:,}")
        print(f"{'all-reduce / step':>22}: {c['allreduce_bytes']:,} bytes (full fine-tuning: "
              f"{c['full_ft_allreduce_bytes']:,})")
        print(f"{'command':>22}: gpart-edu finetune --recipe {r.name} --out runs/{r.name}")
        return 0
    rows = recipes.table(args.family, methods=("gpart", "lora", "unilora"))
    print(f"{'recipe':<28} {'model':<36} {'method':<8} {'d/r':>8} {'lr':>7} {'head lr':>8} {'epochs':>6} "
          f"{'batch':>5}")
    for row in rows:
        size = row.get("d") or row.get("r")
        print(f"{row['recipe']:<28} {row['model']:<36} {row['method']:<8} {size:>8} {row['lr']:>7g} "
              f"{row['head_lr'] if row['head_lr'] is not None else '-':>8} {row['epochs']:>6g} {row['batch']:>5}")
    return 0


def run_command(args) -> int:
    if args.command == "finetune":
        return cmd_finetune(args)
    if args.command == "verify":
        return cmd_verify(args)
    if args.command == "audit":
        return cmd_audit(args, recipes.get(args.recipe) if args.recipe else None)
    return cmd_recipes(args)


def main(argv=None) -> int:
    """Run the command; return its exit status (0 / 1 claim fails / 2 usage or input / 3 internal / 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)    # usage errors exit 2 here
    try:
        return run_command(args)
    except GPartEduError as e:
        parser.error(str(e))          # usage + message, exit 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"gpart-edu: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gpart-edu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 -- anything else is a bug: say so, with the traceback, and exit 3
        traceback.print_exc()
        print(f"gpart-edu: internal error ({type(e).__name__}: {e}); this is a bug, please report it with the "
              f"traceback above", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
