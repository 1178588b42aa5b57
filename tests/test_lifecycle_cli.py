"""The command line on users' paths (issue 14 A, rows 3, 11, 13, 14): distinct exit codes, a refused non-empty --out,
a --resume under other settings refused, missing or wrong paths named before anything runs."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from gpart_edu import cli
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import engine

from .test_engine import TINY, tiny_bert_dir  # noqa: F401  (fixture)


def _exit(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def test_internal_errors_exit_3_and_interrupts_130(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(cli, "cmd_recipes", boom)
    assert _exit(["recipes"]) == cli.EXIT_INTERNAL == 3
    assert "internal error (RuntimeError: a bug)" in capsys.readouterr().err

    def interrupt(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_recipes", interrupt)
    assert _exit(["recipes"]) == 130


def test_verify_of_a_file_claiming_huge_layers_is_an_input_error(tmp_path, capsys):
    targets = [["a", "linear", 1 << 25, 1 << 25, False]]
    text = "\n".join(",".join(map(str, t)) for t in targets)
    theta = torch.zeros(20)
    meta = {"format": "gpart_edu.adapter", "format_version": "1", "method": "gpart",
            "config": json.dumps({"d": 20, "seed": 0}), "targets": json.dumps(targets),
            "fingerprint": hashlib.sha256(text.encode()).hexdigest(),
            "theta_sha256": hashlib.sha256(theta.view(torch.uint8).numpy().tobytes()).hexdigest()}
    save_file({"theta": theta}, str(tmp_path / "huge.safetensors"), metadata=meta)
    assert _exit(["verify", "--adapter", str(tmp_path / "huge.safetensors")]) == 2
    assert "in_features" in capsys.readouterr().err


def test_missing_model_folder_and_out_file_are_usage_errors(tmp_path, capsys):
    base = ["finetune", "--task", "tweets", "--method", "gpart", "--d", "10", "--steps", "1", "--device", "cpu",
            "--max-train", "8", "--max-eval", "8", "--batch-size", "8", "--no-progress"]
    assert _exit(base + ["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert _exit(base + ["--model", "minilm", "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_non_empty_out_is_refused_without_overwrite_or_resume(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    argv = ["finetune", "--model", "minilm", "--task", "tweets", "--method", "gpart", "--d", "10", "--steps", "1",
            "--device", "cpu", "--max-train", "8", "--max-eval", "8", "--batch-size", "8", "--no-progress",
            "--out", str(tmp_path)]
    assert _exit(argv) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err
    assert (tmp_path / "results.json").read_text() == "{}"
    args = cli.build_parser().parse_args(argv + ["--overwrite"])
    cli.check_out(tmp_path, args.resume, args.overwrite)          # accepted


@pytest.mark.parametrize("change", [{"seed": 1}, {"d": 400}, {"method": "lora", "d": None, "r": 2}],
                         ids=["seed", "d", "method"])
def test_resume_with_other_settings_is_refused(change, tiny_bert_dir, tmp_path):  # noqa: F811
    base = dict(TINY, steps=4, batch_size=8, max_train=32, max_eval=16)
    engine.run(engine.RunConfig(model=str(tiny_bert_dir), save_steps=2, stop_after_steps=2, **base), tmp_path)
    with pytest.raises(ConfigError, match="other settings"):
        engine.run(engine.RunConfig(model=str(tiny_bert_dir), save_steps=2, resume=True, **{**base, **change}),
                   tmp_path)
