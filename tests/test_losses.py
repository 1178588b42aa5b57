"""The one evaluator, ``losses.evaluate``: theta override, no mutation, input forms, float64 exactness, errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpart_edu as ge
from gpart_edu import losses
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import train
from gpart_edu.lab import landscape as L

from .conftest import METHOD_CASES, state_hash, tiny_mlp


def attached(case="gpart-balanced", n=11, seed=0):
    """Tiny float64 MLP (6-9-7-3) with ``case`` attached at a random theta; n examples, 3 classes."""
    name, cfg = METHOD_CASES[case]
    model, _, targets = tiny_mlp()
    adapter = ge.attach(model, name, targets=targets, trainable=(), **cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        adapter.theta.add_(0.3 * torch.randn(adapter.num_trainable, generator=g, dtype=torch.float64))
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, adapter, (x, y)


@pytest.mark.parametrize("case", ["gpart-balanced", "unilora", "lora"])
def test_theta_override_equals_attaching_that_theta_and_mutates_nothing(case):
    model, adapter, data = attached(case)
    t = torch.randn(adapter.num_trainable, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        ge.get_adapter(twin).theta.copy_(t)
    model.train()
    model.layers[0].eval()                                   # mixed train flags must come back as they were
    flags, before, theta_obj = [m.training for m in model.modules()], state_hash(model), adapter.theta
    at_t = losses.evaluate(model, data, batch_size=4, theta=t)
    assert at_t == losses.evaluate(twin, data, batch_size=4)              # bit for bit
    assert at_t != losses.evaluate(model, data, batch_size=4)             # so the override did something
    assert state_hash(model) == before and adapter.theta is theta_obj
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_dict_tuple_and_dataloader_inputs_agree():
    from transformers import BatchEncoding

    def hf_collate(rows):                                    # a Hugging Face collator returns a BatchEncoding
        return BatchEncoding(torch.utils.data.default_collate(rows))

    model, _, (x, y) = attached()
    ref = losses.evaluate(model, (x, y), batch_size=4)
    assert set(ref) == {"loss", "accuracy"}
    rows = [{"x": x[i], "labels": y[i]} for i in range(len(y))]
    same = [
        losses.evaluate(model, {"x": x, "labels": y}, batch_size=4),           # dict: model(x=...)
        losses.evaluate(model, [x, y], batch_size=4),
        losses.evaluate(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)),
        losses.evaluate(model, torch.utils.data.DataLoader(rows, batch_size=4)),  # dict batches
        losses.evaluate(model, torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=hf_collate)),
        losses.evaluate(model, [(x[a: a + 4], y[a: a + 4]) for a in range(0, len(y), 4)]),
    ]
    assert all(r == ref for r in same)


def test_float64_stays_float64_exact():
    model, _, (x, y) = attached(n=13)
    with torch.no_grad():
        logits = model(x)
        plain = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(-1) == y).sum().item() / len(y)
        means = [F.cross_entropy(model(x[a: a + 5]), y[a: a + 5]).item() for a in (0, 5, 10)]
    one = losses.evaluate(model, (x, y), batch_size=13)               # one batch: the model's own forward
    assert one == {"loss": plain, "accuracy": acc}
    chunked = losses.evaluate(model, (x, y), batch_size=5)["loss"]    # sum_b L_b n_b / n, in float64
    assert chunked == means[0] * (5 / 13) + means[1] * (5 / 13) + means[2] * (3 / 13)
    assert chunked == pytest.approx(plain, rel=1e-14)


def test_the_lab_the_training_loop_and_the_explorer_use_the_same_evaluator():
    model, adapter, data = attached()
    obj = L.Objective(model, data, batch_size=4)
    t = 0.5 * adapter.theta.detach()
    assert obj.loss(t) == losses.evaluate(model, obj.batches, theta=t)["loss"]
    assert train.evaluate(model, data, 4) == losses.evaluate(model, data, 4)
    assert obj.loss() == losses.evaluate(model, data, 4)["loss"]       # no attention mask: the same batches


def test_custom_loss_gives_the_loss_only_and_model_loss_is_the_models_own():
    model, _, (x, y) = attached()
    out = losses.evaluate(model, (x, y), 4, loss_fn=lambda m, b: m(b[0]).pow(2).mean())
    with torch.no_grad():
        assert set(out) == {"loss"} and out["loss"] == pytest.approx(model(x).pow(2).mean().item(), rel=1e-14)
    from transformers import BertConfig, BertForSequenceClassification
    cfg = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
               max_position_embeddings=32)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (10, 8), generator=g)
    for num_labels, target in ((3, torch.randint(0, 3, (10,), generator=g)), (1, torch.rand(10, generator=g))):
        torch.manual_seed(0)
        clf = BertForSequenceClassification(BertConfig(num_labels=num_labels, **cfg)).double()
        data = {"input_ids": ids, "labels": target.double() if num_labels == 1 else target}
        own = losses.evaluate(clf, data, 10, loss_fn="model")
        clf.eval()
        with torch.no_grad():
            assert own["loss"] == clf(**data).loss.item()                   # CE, or MSE for a regression head
        if num_labels == 1:
            assert set(own) == {"loss"}
        else:
            assert own == pytest.approx(losses.evaluate(clf, data, 10), rel=1e-14)


def test_eval_mode_inside_train_flags_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double().train()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    a, b = losses.evaluate(model, (x, y)), losses.evaluate(model, (x, y))
    assert a == b and model.training and all(m.training for m in model.modules())   # dropout was off


def test_bad_input_raises_with_a_fix():
    model, adapter, data = attached()
    bare = tiny_mlp()[0]
    cases = [
        (lambda: losses.evaluate(bare, data, theta=torch.zeros(3)), "attach one"),
        (lambda: losses.evaluate(model, data, theta=torch.zeros(3)), r"theta must have shape \(40,\)"),
        (lambda: losses.evaluate(model, data[0]), "data must be"),
        (lambda: losses.evaluate(model, (data[0], data[1][:3])), "different lengths"),
        (lambda: losses.evaluate(model, (data[0][:0], data[1][:0])), "empty"),
        (lambda: losses.evaluate(model, []), "empty"),
        (lambda: losses.evaluate(model, data, 0), "batch_size"),
        (lambda: losses.evaluate(model, data, loss_fn="mse"), "loss_fn must be"),
        (lambda: losses.evaluate(model, data, loss_fn="model"), "needs dict batches"),
        (lambda: losses.evaluate(model, data, loss_fn=lambda m, b: m(b[0])), "one number"),
        (lambda: losses.evaluate(model, [data[0]]), "a batch must be"),
    ]
    for call, match in cases:
        with pytest.raises(ConfigError, match=match):
            call()
    adapter.merge()
    with pytest.raises(ConfigError, match="unmerge"):
        losses.evaluate(model, data, theta=adapter.theta.detach())
