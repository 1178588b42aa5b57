"""The `gpart-edu` command: usage errors (exit 2), finetune on MiniLM + tweets, verify (exit 0 / 1), recipes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gpart_edu as ge
from gpart_edu import assets, cli

from .conftest import minilm_or_skip
from .test_engine import strict_json, tiny_bert_dir  # noqa: F401  (fixture)

BIN = Path(sys.executable).parent / "gpart-edu"


def run_cli(*args, timeout=900):
    exe = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "gpart_edu.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=timeout)


def exit_code(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    return e.value.code, capsys.readouterr()


BASE = ["finetune", "--model", "minilm", "--task", "tweets", "--method", "gpart", "--d", "64", "--steps", "2",
        "--out", "unused"]


@pytest.mark.parametrize("flag,value,message", [
    ("--d", "0", "0 is out of range: must be >= 1"), ("--steps", "0", "--steps: 0 is out of range"),
    ("--lr", "-0.001", "--lr: -0.001 is out of range"), ("--warmup", "1.5", "--warmup: 1.5 is out of range"),
    ("--dropout", "1", "--dropout: 1 is out of range"), ("--batch-size", "0", "out of range"),
    ("--lr", "nan", "out of range"), ("--max-train", "two", "is not a positive integer"),
    ("--method", "dora", "invalid choice"), ("--task", "imagenet", "invalid choice")])
def test_out_of_range_arguments_are_usage_errors_with_exit_2(flag, value, message, capsys):
    argv = list(BASE)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    code, out = exit_code(argv, capsys)
    assert code == 2 and message in out.err and "usage: gpart-edu finetune" in out.err


@pytest.mark.parametrize("argv,message", [
    (["finetune", "--task", "tweets", "--steps", "2", "--out", "x"], "--model, --method required"),
    (["finetune", "--model", "m", "--task", "tweets", "--method", "gpart", "--d", "8", "--out", "x"],
     "give --steps N or --epochs E"),
    (["finetune", "--recipe", "roberta-base-sst", "--out", "x"], "did you mean roberta-base-sst2"),
    (["finetune", "--recipe", "roberta-base-sst2", "--batch-size", "10", "--grad-accum", "3", "--out", "x"],
     "not a multiple of 3 accumulation steps"),
    (["finetune", "--model", "m", "--task", "tweets", "--method", "unilora", "--steps", "2", "--out", "x"],
     "needs d"),
    (["verify", "--model", "minilm", "--d", "8"], "--method is required"),
])
def test_inconsistent_settings_are_usage_errors_with_exit_2(argv, message, capsys):
    code, out = exit_code(argv, capsys)
    assert code == 2 and message in out.err


def test_steps_and_epochs_are_mutually_exclusive(capsys):
    code, out = exit_code(BASE + ["--epochs", "1"], capsys)
    assert code == 2 and "not allowed with argument" in out.err


def test_recipes_command_lists_and_shows(capsys):
    assert cli.main(["recipes", "--family", "glue"]) == 0
    out = capsys.readouterr().out
    assert "roberta-base-sst2 " in out and "roberta-large-rte-unilora" in out and "math-7b" not in out
    assert cli.main(["recipes", "--show", "roberta-base-sst2"]) == 0
    out = capsys.readouterr().out
    assert "'d': 23040" in out and "gpart-edu finetune --recipe roberta-base-sst2" in out
    assert "2,460,680 bytes" in out                      # 4 (23,040 + 592,130): theta + RoBERTa's head


@pytest.mark.slow
def test_finetune_minilm_tweets_writes_results_adapter_and_summary(tmp_path):
    minilm_or_skip()
    out = tmp_path / "run"
    p = run_cli("finetune", "--model", "minilm", "--task", "tweets", "--method", "gpart", "--d", "23040",
                "--steps", "3", "--lr", "5e-2", "--head-lr", "1e-2", "--batch-size", "8", "--max-train", "64",
                "--max-eval", "32", "--max-length", "32", "--device", "cpu", "--no-progress", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 0:" in p.stdout and "step 3:" in p.stdout and f"done: {out}" in p.stdout
    r = strict_json(out / "results.json")
    assert r["global_step"] == 3 and [e["step"] for e in r["evals"]] == [0, 3]
    assert r["model"]["theta"] == 23_040 and r["model"]["D"] == 1_769_472
    assert r["command"].startswith("gpart-edu finetune --model minilm")
    assert (out / "summary.md").read_text().startswith("# gpart on tweets (minilm)")
    model, _ = assets.load_classifier("minilm", num_labels=2)
    adapter = ge.load_adapter(out / "adapter.safetensors", model)
    assert adapter.summary().startswith("gpart(d=23040, seed=0") and float(adapter.theta.detach().norm()) > 0


def test_two_seeds_write_one_folder_each_and_an_aggregate(tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    argv = ["finetune", "--model", str(tiny_bert_dir), "--task", "tweets", "--method", "lora", "--r", "2",
            "--steps", "2", "--seeds", "0", "1", "--batch-size", "8", "--max-train", "32", "--max-eval", "16",
            "--max-length", "32", "--device", "cpu", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    agg = strict_json(tmp_path / "results.json")
    assert agg["seeds"] == [0, 1] and set(agg["final"]["accuracy"]) == {"mean", "std"}
    a, b = (strict_json(tmp_path / f"seed-{s}" / "results.json") for s in (0, 1))
    assert (a["config"]["seed"], b["config"]["seed"]) == (0, 1)
    assert a["evals"][0] != b["evals"][0]                   # different seeds: different heads


# ------------------------------------------------------------------------------------------ verify
@pytest.mark.slow
def test_verify_gpart_on_minilm_exits_0_with_every_check_passing(tmp_path):
    minilm_or_skip()
    p = run_cli("verify", "--model", "minilm", "--method", "gpart", "--d", "23040", "--json", str(tmp_path / "v.json"))
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert "D = 1,769,472" in p.stdout and "every claimed property holds" in p.stdout
    v = json.loads((tmp_path / "v.json").read_text())
    assert [c["status"] for c in v["checks"]] == ["PASS", "PASS", "PASS"]
    assert all(c["deviation"] <= 1e-10 for c in v["checks"])


def test_verify_unilora_reports_non_isometry_and_exits_0(tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    argv = ["verify", "--model", str(tiny_bert_dir), "--method", "unilora", "--d", "256", "--json",
            str(tmp_path / "v.json")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "NOT isometric end to end; every claimed property holds" in out
    checks = json.loads((tmp_path / "v.json").read_text())["checks"]
    assert [(c["claimed"], c["holds"]) for c in checks] == [(True, True), (False, False), (False, False)]
    assert checks[1]["deviation"] > 0.1                       # ratios far from 1: the bilinear second hop


def test_verify_exits_1_when_a_claimed_property_fails(tiny_bert_dir, capsys):  # noqa: F811
    base = ["verify", "--model", str(tiny_bert_dir), "--pairs", "5", "--spectrum", "sample", "--samples", "16"]
    assert cli.main(base + ["--method", "unilora", "--d", "256", "--claim", "isometric"]) == 1
    assert "a CLAIMED PROPERTY FAILS" in capsys.readouterr().out
    # GPart holds in float32 at float32's tolerance, but not at a tolerance below float32 rounding (groups of
    # 13 or 14 weights: theta_j / sqrt(n_j) is rounded in float32)
    assert cli.main(base + ["--method", "gpart", "--d", "300", "--dtype", "float32"]) == 0
    capsys.readouterr()
    assert cli.main(base + ["--method", "gpart", "--d", "300", "--dtype", "float32", "--tol", "1e-12"]) == 1
    assert "a CLAIMED PROPERTY FAILS" in capsys.readouterr().out


def test_verify_a_trained_adapter_file(tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    assert cli.main(["finetune", "--model", str(tiny_bert_dir), "--task", "tweets", "--method", "gpart", "--d", "300",
                     "--steps", "2", "--batch-size", "8", "--max-train", "16", "--max-eval", "8", "--max-length",
                     "32", "--device", "cpu", "--no-progress", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(["verify", "--adapter", str(tmp_path / "adapter.safetensors"), "--pairs", "5"]) == 0
    out = capsys.readouterr().out
    assert "(trained theta)" in out and out.count("PASS") == 3


def test_console_script_is_installed():
    assert BIN.exists() or shutil.which("gpart-edu"), "pip install -e . should install the gpart-edu script"
