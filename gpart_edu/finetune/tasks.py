"""Tasks by name for the engine and the CLI: offline ones from gpart_edu.assets, online ones from the hub.

    spec = tasks.get("sst2");  data = tasks.load("tweets", tokenizer=tok, max_length=64)

Offline (no network): tweets, reuters-r8, mnist5k, grimm. Online (the ``datasets`` package, imported only
here, only for these): GLUE cola/sst2/mrpc/qnli/rte/stsb, cifar10/cifar100, metamath (MetaMathQA for
training, GSM8K test for evaluation). ``dataset_path=DIR`` loads an online task from a local directory
instead (``datasets.load_from_disk`` output, or a folder of train/validation/test .jsonl/.csv/.parquet
files with the task's columns) -- the same code path, and how the tests exercise it offline.
Every example is a dict of tensors (input_ids / pixel_values, labels); ``data.collator`` batches them.
Taught in notebooks/06_full_scale.ipynb, sections 4 and 5 (the offline task behind the CPU recipe).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import assets
from ..errors import ConfigError
from .gsm8k import LMCollator, answer_number, prompt_rows

KINDS = ("text", "image", "lm", "math")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str                         # text | image | lm | math
    metric: str                       # accuracy | matthews | pearson | perplexity | gsm8k_accuracy
    num_labels: int | None
    source: str                       # offline | hub
    hub_id: str | None = None
    hub_config: str | None = None
    columns: tuple = ()               # text column(s) / image column / (question, answer)
    label_column: str = "label"
    eval_split: str = "validation"
    eval_hub_id: str | None = None    # math: GSM8K
    eval_hub_config: str | None = None
    description: str = ""


def _glue(name, metric, cols, n=2, desc=""):
    return TaskSpec(name, "text", metric, n, "hub", "nyu-mll/glue", name, cols, description=desc)


TASKS = {t.name: t for t in [
    TaskSpec("tweets", "text", "accuracy", 2, "offline", description="election tweets 2016: who wrote it"),
    TaskSpec("reuters-r8", "text", "accuracy", 8, "offline", description="Reuters-21578 R8 news topics"),
    TaskSpec("mnist5k", "image", "accuracy", 10, "offline", description="5,000 real MNIST digits"),
    TaskSpec("grimm", "lm", "perplexity", None, "offline", description="Grimm tales, causal LM"),
    _glue("cola", "matthews", ("sentence",), desc="GLUE CoLA acceptability"),
    _glue("sst2", "accuracy", ("sentence",), desc="GLUE SST-2 sentiment"),
    _glue("mrpc", "accuracy", ("sentence1", "sentence2"), desc="GLUE MRPC paraphrase"),
    _glue("qnli", "accuracy", ("question", "sentence"), desc="GLUE QNLI"),
    _glue("rte", "accuracy", ("sentence1", "sentence2"), desc="GLUE RTE entailment"),
    _glue("stsb", "pearson", ("sentence1", "sentence2"), n=1, desc="GLUE STS-B similarity (regression)"),
    TaskSpec("cifar10", "image", "accuracy", 10, "hub", "uoft-cs/cifar10", None, ("img",), "label", "test"),
    TaskSpec("cifar100", "image", "accuracy", 100, "hub", "uoft-cs/cifar100", None, ("img",), "fine_label",
             "test"),
    TaskSpec("metamath", "math", "gsm8k_accuracy", None, "hub", "meta-math/MetaMathQA", None,
             ("query", "response"), "", "test", "openai/gsm8k", "main",
             "MetaMathQA training, GSM8K test accuracy (greedy decoding)"),
]}


def get(name: str) -> TaskSpec:
    """The task spec by name; unknown names list the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; offline: {', '.join(names('offline'))}; "
                          f"online (hub): {', '.join(names('hub'))}")
    return TASKS[name]


def names(source: str | None = None) -> list[str]:
    return [n for n, t in TASKS.items() if source is None or t.source == source]


# ----------------------------------------------------------------------------------- datasets
class ListDataset(torch.utils.data.Dataset):
    """A list of example dicts (tokenised text, LM blocks)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class ImageDataset(torch.utils.data.Dataset):
    """Images converted lazily to the model's input: resized, channels matched, normalised (+ flips).

    ``images[i]``: a PIL image, an (H, W[, C]) uint8 array or a float tensor in [0, 1] (C, H, W) / (H*W,).
    """

    def __init__(self, images, labels, size: int, channels: int, mean, std, train: bool, seed: int = 0):
        self.images, self.labels = images, labels
        self.size, self.channels, self.train, self.seed = size, channels, train, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.epoch = 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = to_chw(self.images[i])
        x = torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode="bilinear",
                                            align_corners=False)[0]
        if x.shape[0] != self.channels:
            x = x.mean(0, keepdim=True).expand(self.channels, -1, -1) if self.channels in (1, 3) else x
        if self.train and torch.rand(1, generator=torch.Generator().manual_seed(self.seed + i)).item() < 0.5:
            x = x.flip(-1)
        x = (x - self.mean[: self.channels]) / self.std[: self.channels]
        return {"pixel_values": x.contiguous(), "labels": torch.as_tensor(int(self.labels[i]))}


def to_chw(img) -> torch.Tensor:
    """An image as a float (C, H, W) tensor in [0, 1]; flat 784-vectors are taken as 28 x 28 grey."""
    if isinstance(img, torch.Tensor):
        x = img.float()
        if x.dim() == 1:
            side = int(math.isqrt(x.numel()))
            x = x.view(1, side, side)
        return x if x.dim() == 3 else x[None]
    arr = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)
    x = torch.from_numpy(arr.copy()).float() / 255.0
    return x.permute(2, 0, 1) if x.dim() == 3 else x[None]


@dataclass
class TaskData:
    spec: TaskSpec
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    collator: object = None
    num_labels: int | None = None
    label_names: list = field(default_factory=list)
    gsm8k: list = field(default_factory=list)        # math: [(question, answer number)] for generation eval


def _subset(n_max, n, seed):
    if n_max is None or n_max >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_max].tolist())


def tokenize_rows(tokenizer, texts, labels, max_length, pairs=None, float_labels=False) -> list[dict]:
    """Tokenise (optionally paired) texts without padding (the collator pads per batch)."""
    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                    max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    rows = []
    for i, y in enumerate(labels):
        row = {k: torch.tensor(enc[k][i]) for k in keys}
        row["labels"] = torch.tensor(float(y) if float_labels else int(y))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------- loading
def load(name: str, *, tokenizer=None, image_size: int = 224, channels: int = 3, mean=(0.5,) * 3,
         std=(0.5,) * 3, max_length: int | None = 128, max_train: int | None = None,
         max_eval: int | None = None, seed: int = 0, dataset_path: str | None = None) -> TaskData:
    """Load task ``name`` as datasets for the engine (tokenised / resized for the model at hand).

    Taught in notebooks/06_full_scale.ipynb, section "5 · Reload: base model + adapter + head = the same numbers".
    """
    spec = get(name)
    if spec.kind in ("text", "lm", "math") and tokenizer is None:
        raise ConfigError(f"task {name!r} is a {spec.kind} task: pass the model's tokenizer")
    if spec.source == "offline":
        if dataset_path is not None:
            raise ConfigError(f"task {name!r} is offline (gpart_edu.assets); --dataset-path is for hub tasks")
        return _load_offline(spec, tokenizer, image_size, channels, mean, std, max_length, max_train,
                             max_eval, seed)
    return _load_hub(spec, tokenizer, image_size, channels, mean, std, max_length, max_train, max_eval,
                     seed, dataset_path)


def _text_collator(tokenizer):
    from transformers import DataCollatorWithPadding
    return DataCollatorWithPadding(tokenizer)


def _load_offline(spec, tok, size, channels, mean, std, max_length, max_train, max_eval, seed):
    if spec.name in ("tweets", "reuters-r8"):
        tr, te = assets.load_tweets(seed=seed) if spec.name == "tweets" else assets.load_reuters_r8()
        out = []
        for split, n_max in ((tr, max_train), (te, max_eval)):
            idx = _subset(n_max, len(split), seed)
            out.append(ListDataset(tokenize_rows(tok, [split.texts[i] for i in idx], split.labels[idx].tolist(),
                                                 max_length)))
        return TaskData(spec, out[0], out[1], _text_collator(tok), spec.num_labels, tr.label_names)
    if spec.name == "mnist5k":
        (xtr, ytr), (xte, yte) = assets.load_mnist5k(seed=seed)
        dsets = []
        for x, y, n_max, train in ((xtr, ytr, max_train, True), (xte, yte, max_eval, False)):
            idx = torch.tensor(_subset(n_max, len(y), seed))
            dsets.append(ImageDataset(x[idx], y[idx], size, channels, mean, std, train, seed))
        return TaskData(spec, dsets[0], dsets[1], None, 10, [str(i) for i in range(10)])
    # grimm: causal LM blocks, split by tale
    tales = assets.load_grimm_tales()
    order = torch.randperm(len(tales), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, len(tales) // 7)
    block = max_length or 128
    splits = []
    for part, n_max in (([tales[i][1] for i in sorted(order[n_test:])], max_train),
                        ([tales[i][1] for i in sorted(order[:n_test])], max_eval)):
        blocks = assets.lm_blocks(tok, part, block=block)
        idx = _subset(n_max, len(blocks), seed)
        splits.append(ListDataset([{"input_ids": blocks[i], "attention_mask": torch.ones_like(blocks[i]),
                                    "labels": blocks[i].clone()} for i in idx]))
    return TaskData(spec, splits[0], splits[1], None, None, [])


def _hub_splits(spec, dataset_path):
    """{split: datasets.Dataset} of a hub task, or of its local copy at ``dataset_path``."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"task {spec.name!r} loads from the Hugging Face hub and needs the `datasets` package: "
                          f"pip install 'gpart_edu[hub]' (or pip install datasets)") from None
    try:
        if dataset_path is not None:
            p = Path(dataset_path)
            if not p.is_dir():
                raise ConfigError(f"--dataset-path {dataset_path} is not a directory")
            if (p / "dataset_dict.json").exists():
                return dict(datasets.load_from_disk(str(p)))
            return dict(datasets.load_dataset(str(p)))
        out = dict(datasets.load_dataset(spec.hub_id, spec.hub_config))
        if spec.eval_hub_id:
            out["eval"] = datasets.load_dataset(spec.eval_hub_id, spec.eval_hub_config, split=spec.eval_split)
        return out
    except ConfigError:
        raise
    except Exception as e:  # no network, missing files, ...: say what was tried and how to fix it
        where = dataset_path or f"hub dataset {spec.hub_id}" + (f"/{spec.hub_config}" if spec.hub_config else "")
        raise ConfigError(f"could not load task {spec.name!r} from {where}: {type(e).__name__}: {e}. Online tasks "
                          f"need network access to the Hugging Face hub, or --dataset-path DIR with a local "
                          f"copy (train/{spec.eval_split} files with columns {list(spec.columns)}"
                          f"{' + ' + spec.label_column if spec.label_column else ''})") from None


def _pick(splits, want, spec):
    for key in (want, *(("eval",) if want != "train" else ()), "validation", "test"):
        if key in splits:
            return splits[key]
    raise ConfigError(f"task {spec.name!r}: no {want!r} split in {sorted(splits)}")


def _load_hub(spec, tok, size, channels, mean, std, max_length, max_train, max_eval, seed, dataset_path):
    splits = _hub_splits(spec, dataset_path)
    train_ds = _pick(splits, "train", spec)
    eval_ds = _pick(splits, "eval" if "eval" in splits else spec.eval_split, spec)
    missing = [c for c in (*spec.columns, spec.label_column) if c and c not in train_ds.column_names]
    if spec.kind == "math":
        missing = [c for c in spec.columns if c not in train_ds.column_names]
    if missing:
        raise ConfigError(f"task {spec.name!r}: columns {missing} missing; the data has {train_ds.column_names}")
    tr_idx = _subset(max_train, len(train_ds), seed)
    ev_idx = _subset(max_eval, len(eval_ds), seed)
    train_ds, eval_ds = train_ds.select(tr_idx), eval_ds.select(ev_idx)
    if spec.kind == "text":
        out = []
        for ds in (train_ds, eval_ds):
            cols = [ds[c] for c in spec.columns]
            out.append(ListDataset(tokenize_rows(tok, cols[0], ds[spec.label_column], max_length,
                                                 cols[1] if len(cols) > 1 else None, spec.num_labels == 1)))
        return TaskData(spec, out[0], out[1], _text_collator(tok), spec.num_labels, [])
    if spec.kind == "image":
        img = spec.columns[0]
        return TaskData(spec, ImageDataset(train_ds[img], train_ds[spec.label_column], size, channels, mean, std,
                                           True, seed),
                        ImageDataset(eval_ds[img], eval_ds[spec.label_column], size, channels, mean, std, False,
                                     seed), None, spec.num_labels, [])
    rows = prompt_rows(tok, train_ds[spec.columns[0]], train_ds[spec.columns[1]], max_length or 2048)
    if "question" in eval_ds.column_names:            # GSM8K: question, answer ("... #### 42")
        questions, answers = list(eval_ds["question"]), list(eval_ds["answer"])
    else:                                             # a local copy in the training columns
        questions, answers = list(eval_ds[spec.columns[0]]), list(eval_ds[spec.columns[1]])
    qa = [(q, answer_number(a)) for q, a in zip(questions, answers)]
    return TaskData(spec, ListDataset(rows), ListDataset(prompt_rows(tok, questions, answers, max_length or 2048)),
                    LMCollator(tok.pad_token_id), None, [], qa)


# ------------------------------------------------------------------------------------ metrics
def matthews(pred, y) -> float:
    """Matthews correlation of integer predictions (multi-class form; 0 when undefined)."""
    k = int(max(pred.max(initial=0), y.max(initial=0))) + 1
    C = np.zeros((k, k))
    np.add.at(C, (y, pred), 1)
    t, p, c, s = C.sum(1), C.sum(0), np.trace(C), C.sum()
    den = math.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (t * p).sum()) / den) if den else 0.0


def compute_metrics(spec: TaskSpec):
    """A Trainer ``compute_metrics`` for classification / regression tasks (None for LM tasks)."""
    if spec.kind in ("lm", "math"):
        return None

    def fn(ev):
        logits, y = ev.predictions, ev.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        if spec.num_labels == 1:
            from scipy.stats import pearsonr, spearmanr
            p = np.asarray(logits).reshape(-1)
            return {"pearson": float(pearsonr(p, y)[0]), "spearman": float(spearmanr(p, y)[0])}
        pred = np.asarray(logits).argmax(-1)
        out = {"accuracy": float((pred == y).mean())}
        if spec.metric == "matthews":
            out["matthews"] = matthews(pred, np.asarray(y))
        return out
    return fn
