"""The training loop: every method learns, runs are bit-reproducible on CPU, schedules, baselines, LM loss."""
import math

import pytest
import torch
from torch import nn

import gpart_edu as ge
from gpart_edu import losses
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import optim, train

from .conftest import METHOD_CASES, MLP


def toy_classification(n=96, seed=0, dtype=torch.float64):
    """Labels from a fixed random teacher: learnable, not separable by chance."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=dtype)
    w = torch.randn(6, 3, generator=g, dtype=dtype)
    return x, (x @ w).argmax(1)


def fresh_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP().double()


BASELINES = {"head": "head", "full": "full"}


def make(case):
    model = fresh_mlp()
    if case in BASELINES:
        train.set_trainable(model, case, heads="head")
    else:
        method, cfg = METHOD_CASES[case]
        ge.attach(model, method, targets=["layers.0", "layers.1"], trainable=["head"], **cfg)
    return model


@pytest.mark.parametrize("case", [*METHOD_CASES, *BASELINES])
def test_fit_decreases_loss_for_every_method(case):
    data = toy_classification()
    model = make(case)
    cfg = train.TrainConfig(steps=60, batch_size=32, lr=5e-2, head_lr=5e-2, progress=False, seed=0)
    hist = train.fit(model, data, data, config=cfg)
    before, after = hist.evals[0]["loss"], hist.evals[-1]["loss"]
    assert after < 0.8 * before, f"{case}: eval loss {before:.4f} -> {after:.4f}"
    assert hist.steps_done == 60 and len(hist.lrs) == 60 and not hist.diverged
    assert hist.num_trainable == train.count_trainable(model) > 0


@pytest.mark.parametrize("case", ["gpart-balanced", "gpart-hashed", "unilora", "lora", "full"])
def test_same_seed_gives_bit_identical_parameters_on_cpu(case):
    """Two runs with the same seed: identical bits; a different seed: different parameters."""
    from transformers import BertConfig, BertForSequenceClassification
    cfg_m = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=24, max_position_embeddings=32, num_labels=2)  # dropout 0.1 on
    g = torch.Generator().manual_seed(0)
    data = {"input_ids": torch.randint(0, 50, (40, 9), generator=g),
            "attention_mask": torch.ones(40, 9, dtype=torch.int64), "labels": torch.randint(0, 2, (40,), generator=g)}

    def run(seed):
        torch.manual_seed(0)
        model = BertForSequenceClassification(cfg_m)
        if case == "full":
            train.set_trainable(model, "full")
        else:
            method, kw = METHOD_CASES[case]
            ge.attach(model, method, targets=["query", "value"], **kw)
        cfg = train.TrainConfig(steps=8, batch_size=8, lr=1e-2, seed=seed, progress=False, eval_at_start=False)
        train.fit(model, data, None, config=cfg)
        return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_lr_schedules():
    f = [optim.lr_factor(s, 10, 0.2, "linear") for s in range(10)]
    assert f[:2] == [0.5, 1.0] and f[2] == 1.0 and f[-1] == pytest.approx(1 / 8)
    c = [optim.lr_factor(s, 10, 0.0, "cosine") for s in range(10)]
    assert c[0] == 1.0 and c[5] == pytest.approx(0.5) and all(x > y for x, y in zip(c, c[1:]))
    assert {optim.lr_factor(s, 10, 0.0, "constant") for s in range(10)} == {1.0}


def test_history_records_the_schedule_and_separate_head_lr():
    model = make("gpart-balanced")
    cfg = train.TrainConfig(steps=10, lr=1e-2, head_lr=1e-3, warmup=0.2, schedule="linear", progress=False)
    groups = optim.param_groups(model, cfg)
    assert [g["name"] for g in groups] == ["theta", "head"] and [g["lr"] for g in groups] == [1e-2, 1e-3]
    hist = train.fit(model, toy_classification(), config=cfg)
    assert hist.lrs[0] == pytest.approx(5e-3) and hist.lrs[1] == pytest.approx(1e-2)
    assert hist.evals == [] and hist.wall_time > 0 and hist.peak_memory_bytes > 0


@pytest.mark.parametrize("bad, pattern", [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"),
                                          ({"schedule": "step"}, "schedule"), ({"warmup": 1.0}, "warmup"),
                                          ({"head_lr": float("nan")}, "head_lr")])
def test_bad_config_is_a_clear_error(bad, pattern):
    with pytest.raises(ConfigError, match=pattern):
        train.fit(make("lora"), toy_classification(), config=train.TrainConfig(progress=False, **bad))


def test_nothing_trainable_is_a_clear_error():
    model = fresh_mlp()
    train.set_trainable(model, "none")
    with pytest.raises(ConfigError, match="nothing to train"):
        train.fit(model, toy_classification(), config=train.TrainConfig(steps=1, progress=False))


def test_callback_stops_training_and_evaluations_every_n():
    model = make("gpart-balanced")
    cfg = train.TrainConfig(steps=50, eval_every=4, progress=False)
    seen = []
    hist = train.fit(model, toy_classification(), toy_classification(seed=1), config=cfg,
                     callback=lambda h, s: seen.append(s) or s >= 10)
    assert hist.stopped_early and hist.steps_done == 10 and seen == list(range(1, 11))
    assert [e["step"] for e in hist.evals] == [0, 4, 8, 10]
    steps, acc = hist.curve("accuracy")
    assert steps == [0, 4, 8, 10] and all(0 <= a <= 1 for a in acc)


def test_non_finite_loss_stops_before_the_update():
    model = make("gpart-balanced")
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss = losses.classification_loss(m, batch)
        return loss * float("nan") if len(calls) == 4 else loss

    hist = train.fit(model, toy_classification(), config=train.TrainConfig(steps=10, progress=False),
                     loss_fn=loss_fn)
    assert hist.diverged and hist.stopped_early and hist.steps_done == 4 and math.isnan(hist.losses[-1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_set_trainable_head_full_none_and_restore():
    model = fresh_mlp()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = train.set_trainable(model, "head", heads="head")
    assert before == flags
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    train.set_trainable(model, "full")
    assert all(p.requires_grad for p in model.parameters())
    train.set_trainable(model, "none")
    assert train.count_trainable(model) == 0
    train.restore_trainable(model, flags)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with pytest.raises(ConfigError, match="no head module named classifier"):
        train.set_trainable(model, "head")
    with pytest.raises(ConfigError, match="choose one of"):
        train.set_trainable(model, "partial")
    ge.attach(model, "lora", r=2, targets=["layers.0"])
    with pytest.raises(ConfigError, match="detach"):
        train.set_trainable(model, "full")


def test_head_only_leaves_the_body_bit_identical():
    model = make("head")
    body = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head")}
    train.fit(model, toy_classification(), config=train.TrainConfig(steps=5, progress=False))
    assert all(torch.equal(body[n], p) for n, p in model.named_parameters() if n in body)


def test_trim_padding_gives_the_same_logits_and_loss():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    clf = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=24,
                                                   max_position_embeddings=32)).double().eval()
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(3, 12, (20,), generator=g)
    mask = (torch.arange(20)[None, :] < lengths[:, None]).long()
    data = {"input_ids": torch.randint(1, 50, (20, 20), generator=g) * mask, "attention_mask": mask,
            "labels": torch.randint(0, 2, (20,), generator=g)}
    batch = losses.take(data, torch.arange(20), "cpu", trim=True)
    assert batch["input_ids"].shape == (20, int(lengths.max()))
    with torch.no_grad():
        full = clf(**{k: v for k, v in data.items() if k != "labels"}).logits
        trimmed = losses.forward_logits(clf, batch)
    assert torch.allclose(full, trimmed, atol=1e-12, rtol=0)
    a, b = train.evaluate(clf, data, 8, trim_padding=False), train.evaluate(clf, data, 8, trim_padding=True)
    assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], abs=1e-12)


def test_causal_lm_loss_matches_transformers_and_perplexity_is_exp():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    blocks = torch.randint(0, 40, (6, 12), generator=torch.Generator().manual_seed(0))
    data = train.lm_data(blocks)
    with torch.no_grad():
        ref = lm(input_ids=blocks, labels=blocks).loss
        ours = train.causal_lm_loss(lm, data)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    ev = train.evaluate_lm(lm, data, batch_size=4)
    assert ev["loss"] == pytest.approx(ref.item(), rel=1e-5) and ev["perplexity"] == pytest.approx(math.exp(ev["loss"]))
    ge.attach(lm, "gpart", d=64, targets=["c_attn"], trainable=())
    hist = train.fit(lm, data, config=train.TrainConfig(steps=30, batch_size=6, lr=5e-2, progress=False,
                                                        eval_at_start=False), loss_fn=train.causal_lm_loss,
                     eval_fn=lambda m: train.evaluate_lm(m, data))
    assert hist.final["loss"] < ev["loss"]
    with pytest.raises(ConfigError, match="token blocks"):
        train.lm_data(torch.randn(3, 4))


def test_regression_loss_evaluates_loss_only():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    out = train.evaluate(model, (x, torch.zeros(10, 2, dtype=torch.float64)),
                         loss_fn=lambda m, b: ((m(b[0]) - b[1]) ** 2).mean())
    assert set(out) == {"loss"}
    with torch.no_grad():
        assert out["loss"] == pytest.approx((model(x) ** 2).mean().item())


@pytest.mark.slow
def test_minilm_gpart_reaches_090_on_tweets_within_300_steps():
    """Acceptance: GPart, d = 36,864 (<= 40,000) on MiniLM query+value, batch 16, 300 steps -> held-out >= 0.90.

    lr 2e-2 / head 1e-2 were chosen on a validation split of the training tweets (scripts/tune_lr.py,
    results/tune_tweets.jsonl: 0.952 on the test tweets with the validation split held out of training).
    """
    from gpart_edu import assets

    from .conftest import minilm_or_skip
    minilm_or_skip()
    base, tok = assets.load_classifier("minilm", num_labels=2, seed=0)
    tr, te = assets.load_tweets(test_size=1000, seed=0)
    ge.attach(base, "gpart", d=36_864, seed=0, targets=["query", "value"])
    cfg = train.TrainConfig(steps=300, batch_size=16, lr=2e-2, head_lr=1e-2, warmup=0.06, seed=0, progress=False,
                            eval_at_start=False)
    hist = train.fit(base, assets.tokenize(tok, tr, 64), assets.tokenize(tok, te, 64), config=cfg)
    acc = hist.final["accuracy"]
    print(f"GPart d=36,864, 300 steps: held-out accuracy {acc:.4f} on 1000 tweets ({hist.wall_time:.0f} s)")
    assert acc >= 0.90
