"""Shared model factories: every generic invariant runs over methods x model kinds."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("GPART_EDU_MODE", "smoke")
# One intra-op thread per process (pytest, the notebook kernels and JupyterLab's kernels inherit it) unless the
# caller sets OMP_NUM_THREADS. The suite is many small ops in several processes at once; with 2 threads on the
# 2-core machine and any other CPU load, each parallel region waits for the thread whose core is taken. Measured
# (test_geometry + test_spectrum_certified): 41 s with 2 threads vs 22 s with 1 beside one busy loop; 26 s vs 24 s
# idle. A loaded `make test` with 2 threads took 101 min and timed out in the browser test (issue 14).
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
except ValueError:
    raise RuntimeError(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']!r} is not a whole number; "
                       "unset it or give the number of threads, e.g. OMP_NUM_THREADS=1") from None


class MLP(nn.Module):
    def __init__(self, sizes=(6, 9, 7, 3)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-2], sizes[1:-1]))
        self.head = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def tiny_mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return MLP().to(dtype), (torch.randn(5, 6, dtype=dtype),), ["layers.0", "layers.1", "head"]


def tiny_bert(dtype=torch.float64):
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertModel(cfg).to(dtype).eval()
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    return model, (ids,), ["query", "value"]


def tiny_gpt2(dtype=torch.float64):
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2Model(cfg).to(dtype).eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    return model, (ids,), ["c_attn", "c_proj"]


MODEL_KINDS = {"mlp": tiny_mlp, "bert": tiny_bert, "gpt2": tiny_gpt2}
METHOD_CASES = {
    "gpart-balanced": ("gpart", {"d": 40, "seed": 3}),
    "gpart-multinomial": ("gpart", {"d": 20, "seed": 3, "assignment": "multinomial"}),
    "gpart-hashed": ("gpart", {"d": 40, "seed": 3, "assignment": "hashed"}),
    "gpart-bias": ("gpart", {"d": 40, "seed": 3, "include_bias": True}),
    "unilora": ("unilora", {"d": 30, "r": 2, "seed": 3}),
    "lora": ("lora", {"r": 2, "alpha": 4.0, "seed": 3}),
}


def output_of(model, inputs):
    out = model(*inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def state_hash(model: nn.Module) -> str:
    """sha256 over every state-dict tensor's bytes and every requires_grad flag (``landscape.fingerprint``)."""
    from gpart_edu.lab.landscape import fingerprint
    return fingerprint(model)


@pytest.fixture(params=list(MODEL_KINDS))
def model_kind(request):
    return request.param


@pytest.fixture(params=list(METHOD_CASES))
def method_case(request):
    return METHOD_CASES[request.param]


def minilm_or_skip():
    from gpart_edu import assets
    try:
        return assets.minilm_path()
    except assets.AssetMissing as e:
        pytest.skip(f"offline MiniLM missing: {e}")


# The book test builds the smoke book from the executed copies that tests/test_notebooks.py leaves in
# build/executed/smoke/ (scripts/book_exec.py), so in one pytest run it must come after the notebook tests;
# pytest collects files alphabetically (test_book < test_notebooks). Run alone, it executes what is missing.
RUN_LAST = ("test_book.py",)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name in RUN_LAST)     # stable: the rest keep their order
