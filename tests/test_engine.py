"""The Trainer engine: outputs, reload, resume, data parallel (torchrun, gloo), hub tasks from a local folder.

Engine runs use a tiny random BERT saved to a folder (MiniLM's tokenizer), so they load through the same
path as a real checkpoint; initializer_range 0.3 gives the random head confident logits, so a few steps of
training measurably lower the held-out loss.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpart_edu as ge
from gpart_edu import assets
from gpart_edu.errors import ConfigError
from gpart_edu.finetune import engine, gsm8k, optim, results, tasks

from .conftest import minilm_or_skip

ROOT = Path(__file__).resolve().parents[1]


def make_tiny_bert(folder: Path, init_range: float = 0.3) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    tok = AutoTokenizer.from_pretrained(minilm_or_skip())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2, initializer_range=init_range)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


TINY = dict(task="tweets", method="gpart", d=500, lr=0.05, head_lr=0.05, batch_size=16, max_train=384,
            max_eval=128, max_length=32, device="cpu", dropout=0.0, progress=False, logging_steps=1)


def strict_json(path):
    def bad(c):
        raise ValueError(f"{path} contains {c}: not valid JSON")
    return json.loads(Path(path).read_text(), parse_constant=bad)


def theta_of(folder):
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / "adapter.safetensors"))["theta"]


# --------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("batch,per_device,world,accum,expected", [
    (32, None, 1, None, (32, 1)), (32, 8, 1, None, (8, 4)), (32, None, 4, None, (8, 1)), (32, 4, 2, None, (4, 4)),
    (32, None, 2, 4, (4, 4)), (16, 64, 1, None, (16, 1))])
def test_split_batch_keeps_the_global_batch(batch, per_device, world, accum, expected):
    per, acc = engine.split_batch(batch, per_device, world, accum)
    assert (per, acc) == expected and per * acc * world == batch


@pytest.mark.parametrize("args", [(32, 5, 1, None), (10, None, 1, 3), (32, 4, 1, 2), (8, None, 16, None)])
def test_split_batch_refuses_what_does_not_divide(args):
    with pytest.raises(ConfigError):
        engine.split_batch(*args)


def test_allreduce_bytes_are_theta_and_head_only(tiny_bert_dir):
    cfg = engine.RunConfig(model=str(tiny_bert_dir), **{**TINY, "d": 123}, steps=1)
    model, _, _ = engine.load_model(cfg, tasks.get("tweets"))
    full = optim.allreduce_bytes(model)
    adapter = engine.prepare(model, cfg)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier."))
    assert adapter.num_trainable == 123
    assert optim.allreduce_bytes(model) == 4 * (123 + head) < full
    assert set(optim.trainable_state(model)) == {"gpart_edu_adapter.theta", "classifier.weight", "classifier.bias"}


@pytest.mark.parametrize("bad,match", [(dict(method="gpart", d=None), "needs d"), (dict(steps=None), "exactly one"),
                                       (dict(method="dora"), "choose one of"), (dict(task="imagenet"), "unknown task"),
                                       (dict(warmup=1.0), "warmup"), (dict(schedule="step"), "schedule")])
def test_run_config_validation_names_the_problem(bad, match):
    cfg = engine.RunConfig(**{**dict(TINY, steps=2), **bad})
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


# ------------------------------------------------------------------------------------ one run
def test_run_writes_results_adapter_summary_and_reloads_to_the_same_metrics(tiny_bert_dir, tmp_path):
    cfg = engine.RunConfig(model=str(tiny_bert_dir), steps=6, eval_steps=3, **TINY)
    res = engine.run(cfg, tmp_path)
    r = strict_json(tmp_path / "results.json")
    assert r == json.loads(json.dumps(res))
    assert r["format"] == "gpart_edu.results" and r["global_step"] == 6
    assert [e["step"] for e in r["evals"]] == [0, 3, 6]
    assert all({"loss", "accuracy"} <= set(e) for e in r["evals"])
    assert r["config"]["d"] == 500 and r["config"]["model"] == str(tiny_bert_dir)
    assert {"torch", "transformers", "accelerate", "gpart_edu"} <= set(r["versions"])
    assert r["wall_time_s"] > 0 and r["peak_memory_bytes"] > 0 and r["peak_memory_kind"]
    assert r["model"]["theta"] == 500 and r["model"]["D"] == 2 * 2 * 32 * 32
    assert [x["step"] for x in r["train_log"]] == [1, 2, 3, 4, 5, 6]
    assert r["allreduce_bytes_per_step"] == 4 * (500 + 2 * 32 + 2)
    summary = (tmp_path / "summary.md").read_text()
    assert "gpart on tweets" in summary and f"{r['final']['accuracy']:.4f}" in summary
    # the adapter file is a normal gpart_edu adapter: theta + seed + config
    model, _, _ = engine.load_model(cfg, tasks.get("tweets"))
    adapter = ge.load_adapter(tmp_path / "adapter.safetensors", model)
    assert adapter.method.config()["d"] == 500 and adapter.theta.abs().sum() > 0
    # load_finetuned rebuilds base + adapter + head: the same held-out metrics as the run's last evaluation
    model, tok, saved = engine.load_finetuned(tmp_path)
    data = tasks.load("tweets", tokenizer=tok, max_length=32, max_train=8, max_eval=128, seed=0)
    again = results.evaluate_model(model, data, batch_size=cfg.eval_batch_size)
    assert again["accuracy"] == r["final"]["accuracy"]
    assert again["loss"] == pytest.approx(r["final"]["loss"], abs=1e-6)


def test_head_and_full_baselines_save_their_trainable_tensors(tiny_bert_dir, tmp_path):
    for method in ("head", "full"):
        cfg = engine.RunConfig(model=str(tiny_bert_dir), steps=2, **{**TINY, "method": method, "d": None,
                                                                      "max_train": 64, "max_eval": 32})
        r = engine.run(cfg, tmp_path / method)
        assert "adapter" not in r["files"] and r["files"]["trainable"] == "trainable.safetensors"
        model, _, _ = engine.load_finetuned(tmp_path / method)
        n_params = sum(p.numel() for p in model.parameters())
        assert r["model"]["trainable"] == (2 * 32 + 2 if method == "head" else n_params)


# -------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tiny_bert_dir, tmp_path):
    base = dict(TINY, steps=8, batch_size=8, max_train=128, max_eval=64)
    straight = engine.run(engine.RunConfig(model=str(tiny_bert_dir), **base), tmp_path / "straight")
    first = engine.run(engine.RunConfig(model=str(tiny_bert_dir), save_steps=4, stop_after_steps=4, **base),
                       tmp_path / "resumed")
    assert first["global_step"] == 4 and first["stopped_early"]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["checkpoint-4"]
    second = engine.run(engine.RunConfig(model=str(tiny_bert_dir), save_steps=4, resume=True, **base),
                        tmp_path / "resumed")
    assert second["resumed_from"].endswith("checkpoint-4") and second["global_step"] == 8
    assert [x["step"] for x in second["train_log"]] == list(range(1, 9))       # steps 5..8 follow 1..4
    assert [x["loss"] for x in second["train_log"]] == [x["loss"] for x in straight["train_log"]]
    assert torch.equal(theta_of(tmp_path / "resumed"), theta_of(tmp_path / "straight"))
    assert second["evals"][0]["step"] == 0                                      # history survives the restart


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        engine.run(engine.RunConfig(model=str(tiny_bert_dir), steps=2, resume=True, **TINY), tmp_path)


# ------------------------------------------------------------------------------- data parallel
def _cli_args(model_dir, out, steps=24):
    return ["finetune", "--model", str(model_dir), "--task", "tweets", "--method", "gpart", "--dim", "500",
            "--steps", str(steps), "--lr", "0.05", "--head-lr", "0.05", "--batch-size", "16", "--max-train", "384",
            "--max-eval", "128", "--max-length", "32", "--device", "cpu", "--dropout", "0", "--no-progress",
            "--out", str(out)]


@pytest.mark.slow
def test_torchrun_two_processes_gloo_equals_one_process_and_all_reduces_only_theta_and_head(tiny_bert_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29517", "-m", "gpart_edu.cli", *_cli_args(tiny_bert_dir, tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[:3000] + "\n...\n" + two.stderr[-2000:]
    one = engine.run(engine.RunConfig(model=str(tiny_bert_dir), steps=24, **TINY), tmp_path / "one")
    r = strict_json(tmp_path / "two" / "results.json")
    dist = r["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo" and dist["per_device_batch_size"] == 8
    assert dist["theta_max_abs_diff_across_ranks"] == 0.0 and dist["trainable_max_abs_diff_across_ranks"] == 0.0
    expected = 4 * (500 + 2 * 32 + 2)                  # fp32 gradients of theta and the 32 x 2 head
    assert dist["allreduce_bytes_per_step_expected"] == expected
    assert dist["allreduce_bytes_per_step_measured"] == expected and dist["allreduce_calls"] >= 24
    assert r["global_step"] == 24
    # 2 processes x 8 examples = 1 process x 16: the same global batches, so the same theta
    t2, t1 = theta_of(tmp_path / "two"), theta_of(tmp_path / "one")
    assert (t2 - t1).abs().max() <= 1e-5 * t1.abs().max()
    assert r["evals"][0]["loss"] == pytest.approx(one["evals"][0]["loss"], rel=1e-6)
    assert r["final"]["loss"] < r["evals"][0]["loss"]


# -------------------------------------------------------------------------------------- tasks
def test_offline_text_task_is_tokenised_without_padding_and_collated(tiny_bert_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    data = tasks.load("tweets", tokenizer=tok, max_length=64, max_train=10, max_eval=6, seed=1)
    assert (len(data.train), len(data.eval), data.num_labels) == (10, 6, 2)
    lengths = {len(data.train[i]["input_ids"]) for i in range(10)}
    assert max(lengths) <= 64 and len(lengths) > 1
    batch = data.collator([data.train[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 4 and batch["attention_mask"].shape == batch["input_ids"].shape


def test_offline_image_and_lm_tasks():
    data = tasks.load("mnist5k", image_size=32, channels=3, max_train=5, max_eval=3)
    x = data.train[0]["pixel_values"]
    assert x.shape == (3, 32, 32) and data.num_labels == 10 and len(data.eval) == 3
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(minilm_or_skip())
    lm = tasks.load("grimm", tokenizer=tok, max_length=24, max_train=4, max_eval=2)
    row = lm.train[0]
    assert row["input_ids"].shape == (24,) and torch.equal(row["labels"], row["input_ids"])


def test_metrics():
    import numpy as np
    y = np.array([0, 1, 1, 0, 1])
    assert tasks.matthews(y, y) == pytest.approx(1.0)
    assert tasks.matthews(1 - y, y) == pytest.approx(-1.0)
    assert tasks.matthews(np.zeros(5, dtype=int), y) == 0.0
    from sklearn.metrics import matthews_corrcoef
    p = np.array([0, 1, 0, 0, 1])
    assert tasks.matthews(p, y) == pytest.approx(matthews_corrcoef(y, p))
    assert gsm8k.answer_number("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert gsm8k.answer_number("The answer is: 42.") == "42" and gsm8k.answer_number("none") is None


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hub_text_task_from_a_local_folder_runs_end_to_end(tiny_bert_dir, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    tr, te = assets.load_tweets()
    folder = tmp_path / "mrpc"
    folder.mkdir()
    for name, split, n in (("train", tr, 48), ("validation", te, 16)):
        _write_jsonl(folder / f"{name}.jsonl", [{"sentence1": split.texts[i], "sentence2": split.texts[i + 1],
                                                 "label": int(split.labels[i])} for i in range(n)])
    cfg = engine.RunConfig(model=str(tiny_bert_dir), steps=2, **{**TINY, "task": "mrpc", "max_train": None,
                                                                  "max_eval": None}, dataset_path=str(folder))
    r = engine.run(cfg, tmp_path / "out")
    assert r["task"] == {"name": "mrpc", "kind": "text", "metric": "accuracy", "source": "hub",
                         "n_train": 48, "n_eval": 16}
    assert "accuracy" in r["final"]
    with pytest.raises(ConfigError, match="columns"):
        from transformers import AutoTokenizer
        tasks.load("qnli", tokenizer=AutoTokenizer.from_pretrained(tiny_bert_dir), dataset_path=str(folder))


def test_hub_image_and_math_tasks_from_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(6)]
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"img": imgs, "label": [1, 2, 3, 4, 5, 6]},
                                                             features=feats) for s in ("train", "test")})
    dd.save_to_disk(str(tmp_path / "cifar"))
    data = tasks.load("cifar10", image_size=16, channels=3, dataset_path=str(tmp_path / "cifar"))
    item = data.eval[2]
    assert item["pixel_values"].shape == (3, 16, 16) and int(item["labels"]) == 3
    math_dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"query": ["What is 2+2?"] * 3,
                                             "response": ["2+2=4. The answer is: 4"] * 3}),
        "test": datasets.Dataset.from_dict({"question": ["What is 3+3?"], "answer": ["3+3=6\n#### 6"]})})
    math_dd.save_to_disk(str(tmp_path / "math"))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(minilm_or_skip())
    m = tasks.load("metamath", tokenizer=tok, max_length=64, dataset_path=str(tmp_path / "math"))
    row = m.train[0]
    prompt_len = int((row["labels"] == -100).sum())
    assert prompt_len > 0 and (row["labels"][prompt_len:] == row["input_ids"][prompt_len:]).all()
    assert m.gsm8k == [("What is 3+3?", "6")]


def test_hub_task_without_network_or_files_says_how_to_fix_it(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(ConfigError, match="dataset-path"):
        tasks.load("cifar10", dataset_path=str(tmp_path / "missing"))


def test_gsm8k_accuracy_decodes_greedily_and_matches_the_final_number():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(minilm_or_skip())
    answers = iter([" so 40 + 2 = 42 question : next", " it is 8"])

    class Scripted(torch.nn.Module):
        """Stands in for a causal LM: generate() appends a scripted answer to the (left-padded) prompt."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
            assert not do_sample and tok.padding_side == "left"
            new = [tok(next(answers), add_special_tokens=False)["input_ids"] for _ in range(len(input_ids))]
            width = max(map(len, new))
            new = torch.tensor([n + [tok.pad_token_id] * (width - len(n)) for n in new])
            return torch.cat([input_ids, new], dim=1)

    out = gsm8k.gsm8k_accuracy(Scripted(), tok, [("What is 40 + 2?", "42"), ("What is 3 + 4?", "7")], batch_size=2)
    assert out == {"gsm8k_accuracy": 0.5, "gsm8k_n": 2}
    assert tok.padding_side == "right"                  # restored
