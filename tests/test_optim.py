"""One optimisation config and one schedule: the notebooks' ``fit`` and the Trainer engine share both.

The engine runs use the tiny random BERT of tests/test_engine.py (offline, CPU).
"""
from __future__ import annotations

import dataclasses
import io

import pytest
import torch

import gpart_edu as ge
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import engine, optim, train

from .conftest import MLP
from .test_engine import TINY, tiny_bert_dir  # noqa: F401  (fixture)
from .test_train import toy_classification

# RunConfig's keys in results.json before OptimConfig: a run's "config" may gain keys, never lose one
RESULTS_CONFIG_KEYS_V1 = {
    "model", "task", "method", "d", "r", "alpha", "assignment", "targets", "seed", "lr", "head_lr", "weight_decay",
    "batch_size", "per_device_batch_size", "grad_accum", "eval_batch_size", "warmup", "schedule", "epochs", "steps",
    "dropout", "max_length", "bf16", "device", "grad_clip", "max_train", "max_eval", "eval_steps", "save_steps",
    "logging_steps", "resume", "dataset_path", "progress", "stop_after_steps", "gsm8k_max_new_tokens", "workers",
    "recipe"}


def gpart_mlp():
    torch.manual_seed(0)
    model = MLP().double()
    ge.attach(model, "gpart", targets=["layers.0", "layers.1"], trainable=["head"], d=40, seed=3)
    return model


def test_both_configs_are_optim_configs_with_their_defaults():
    t, r = train.TrainConfig(), engine.RunConfig()
    assert isinstance(t, optim.OptimConfig) and isinstance(r, optim.OptimConfig)
    shared = [f.name for f in dataclasses.fields(optim.OptimConfig)]
    assert shared == ["lr", "head_lr", "weight_decay", "head_weight_decay", "warmup", "schedule", "grad_clip"]
    assert [getattr(t, k) for k in shared] == [5e-3, None, 0.0, 0.0, 0.06, "linear", 1.0]
    assert [getattr(r, k) for k in shared] == [5e-3, None, 0.0, None, 0.06, "linear", 1.0]
    assert RESULTS_CONFIG_KEYS_V1 <= set(dataclasses.asdict(r)) == set(engine.config_fields())


def test_head_weight_decay_none_follows_weight_decay_and_train_config_keeps_zero():
    model = gpart_mlp()
    wd = [{g["name"]: g["weight_decay"] for g in optim.param_groups(model, c)}
          for c in (engine.RunConfig(weight_decay=0.1), train.TrainConfig(weight_decay=0.1),
                    engine.RunConfig(weight_decay=0.1, head_weight_decay=0.2))]
    assert wd == [{"theta": 0.1, "head": 0.1}, {"theta": 0.1, "head": 0.0}, {"theta": 0.1, "head": 0.2}]
    opt = optim.build_optimizer(model, engine.RunConfig(lr=1e-2, head_lr=1e-3))
    assert isinstance(opt, torch.optim.AdamW) and [g["lr"] for g in opt.param_groups] == [1e-2, 1e-3]
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 for g in opt.param_groups)


@pytest.mark.parametrize("bad, pattern", [
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"head_weight_decay": float("inf")}, "head_weight_decay"), ({"grad_clip": -1.0}, "grad_clip"),
    ({"lr": 0.0}, "lr must be"), ({"schedule": "step"}, "choose one of linear, cosine, constant"),
    ({"warmup": -0.1}, r"warmup is a fraction of the steps in \[0, 1\)")])
@pytest.mark.parametrize("cls", [train.TrainConfig, engine.RunConfig])
def test_one_validation_names_the_config_and_the_fix(cls, bad, pattern):
    cfg = cls(**({"steps": 2, "d": 64} if cls is engine.RunConfig else {}), **bad)
    with pytest.raises(ConfigError, match=f"{cls.__name__}.*{pattern}"):
        cfg.validate()


def test_configs_are_keyword_only():
    with pytest.raises(TypeError):
        train.TrainConfig(100)


def test_scheduler_is_lr_factor_and_its_state_survives_a_checkpoint():
    """LambdaLR over lr_factor: step s runs at base * lr_factor(s); a saved state resumes the same sequence."""
    cfg = train.TrainConfig(steps=10, lr=1e-2, head_lr=1e-3, warmup=0.3, schedule="cosine")

    def lrs(opt, sched, n):
        out = []
        for _ in range(n):
            out.append([g["lr"] for g in opt.param_groups])
            opt.step()
            sched.step()
        return out

    opt = optim.build_optimizer(gpart_mlp(), cfg)
    sched = optim.build_scheduler(opt, cfg, 10)
    straight = lrs(opt, sched, 10)
    assert straight == [[1e-2 * optim.lr_factor(s, 10, 0.3, "cosine"), 1e-3 * optim.lr_factor(s, 10, 0.3, "cosine")]
                        for s in range(10)]
    opt = optim.build_optimizer(gpart_mlp(), cfg)
    sched = optim.build_scheduler(opt, cfg, 10)
    first = lrs(opt, sched, 4)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)   # as Trainer's checkpoints do
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    opt = optim.build_optimizer(gpart_mlp(), cfg)
    sched = optim.build_scheduler(opt, cfg, 10)
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert first + lrs(opt, sched, 6) == straight
    with pytest.raises(ConfigError, match="number of optimizer steps"):
        optim.build_scheduler(opt, cfg, 0)


SCHEDULE_CASES = [("linear", 0.3), ("cosine", 0.2), ("constant", 0.3)]


@pytest.mark.parametrize("schedule, warmup", SCHEDULE_CASES)
def test_fit_and_the_trainer_engine_run_the_same_lrs(schedule, warmup, tiny_bert_dir, tmp_path):  # noqa: F811
    """The notebooks' path (train.fit, History.lrs) and the CLI path (engine.run, Trainer's per-step
    learning_rate log) give the same theta learning rate at every step; the linear case is interrupted at
    step 4 and resumed from its checkpoint (Trainer restores the scheduler state)."""
    steps, lr = 10, 0.05
    hist = train.fit(gpart_mlp(), toy_classification(), config=train.TrainConfig(
        steps=steps, batch_size=16, lr=lr, head_lr=0.01, warmup=warmup, schedule=schedule, progress=False,
        eval_at_start=False))
    base = dict(TINY, steps=steps, batch_size=8, max_train=64, max_eval=16, lr=lr, head_lr=0.01, warmup=warmup,
                schedule=schedule)
    if schedule == "linear":
        engine.run(engine.RunConfig(model=str(tiny_bert_dir), save_steps=4, stop_after_steps=4, **base), tmp_path)
        res = engine.run(engine.RunConfig(model=str(tiny_bert_dir), save_steps=4, resume=True, **base), tmp_path)
        assert res["resumed_from"].endswith("checkpoint-4")
    else:
        res = engine.run(engine.RunConfig(model=str(tiny_bert_dir), **base), tmp_path)
    cli_lrs = [x["learning_rate"] for x in res["train_log"]]
    expected = [lr * optim.lr_factor(s, steps, warmup, schedule) for s in range(steps)]
    assert [x["step"] for x in res["train_log"]] == list(range(1, steps + 1))
    assert len(hist.lrs) == len(cli_lrs) == steps
    assert cli_lrs == pytest.approx(hist.lrs, rel=1e-12, abs=0)
    assert hist.lrs == pytest.approx(expected, rel=1e-12, abs=0)
    assert hist.lrs[0] > 0                       # warm-up starts at lr / w, not at 0
