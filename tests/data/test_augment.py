import json

import numpy as np
import pandas as pd
import pytest
import torch

from distil.config import ConfigError
from distil.data import augment as augment_module
from distil.data.augment import (
    AugmentationConfig,
    augment_frame,
    augment_texts,
    cached_augment,
    candidate_vocab,
    mlm_candidates,
)
from distil.errors import DistilError

TEXTS = [
    "A wonderful film with a moving story.",
    "The plot is thin but the actors shine.",
    "Unbelievably dull, don't bother watching it.",
]


@pytest.fixture(scope="module")
def mlm_model():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertForMaskedLM(cfg).eval()


@pytest.fixture(scope="module")
def matrix():
    return torch.randn(30522, 16, generator=torch.Generator().manual_seed(0))  # (V, H)


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_variants", 0),
        ("replace_prob", 0.0),
        ("replace_prob", 1.5),
        ("top_k", 0),
        ("method", "glove"),
        ("batch_size", 0),
        ("max_length", 4),
    ],
)
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        AugmentationConfig(**{field: value})


def test_deterministic_under_seed_and_n_variants(tokenizer, matrix):
    cfg = AugmentationConfig(num_variants=3, seed=7)
    one = augment_texts(TEXTS, tokenizer, cfg, embedding_matrix=matrix)
    assert [i for i, _ in one] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert one == augment_texts(
        TEXTS, tokenizer, AugmentationConfig(num_variants=3, seed=7, batch_size=1), embedding_matrix=matrix
    )
    assert one != augment_texts(TEXTS, tokenizer, AugmentationConfig(num_variants=3, seed=8), embedding_matrix=matrix)
    assert augment_texts(TEXTS + ["one more row"], tokenizer, cfg, embedding_matrix=matrix)[:9] == one  # rows apart
    assert sum(t != TEXTS[i] for i, t in one) >= 7


def test_replacement_rate_is_about_p(tokenizer, matrix):
    vocab = [t for t in tokenizer.convert_ids_to_tokens(list(range(2000, 8000))) if t.isalpha() and len(t) >= 2]
    rng = np.random.default_rng(0)
    words = [vocab[i] for i in rng.integers(0, len(vocab), 3000)]
    ((_, variant),) = augment_texts(
        [" ".join(words)], tokenizer, AugmentationConfig(num_variants=1, replace_prob=0.4), embedding_matrix=matrix
    )
    new = variant.split()
    assert len(new) == len(words)
    rate = np.mean([a != b for a, b in zip(words, new)])
    assert 0.37 < rate < 0.43, rate


def _hand_made_matrix(tokenizer, matrix):
    m = matrix.clone()
    good, great, wow = tokenizer.convert_tokens_to_ids(["good", "great", "wow"])
    m[great] = m[good] + 1e-3  # the nearest neighbour of "good" is "great"
    pieces = tokenizer("unbelievably", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    m[wow] = m[pieces].mean(0)  # a multi-piece word is the mean of its pieces: its neighbour is "wow"
    return m


def test_embedding_nearest_neighbour_is_exact(tokenizer, matrix):
    m = _hand_made_matrix(tokenizer, matrix)
    cfg = AugmentationConfig(num_variants=2, replace_prob=1.0, top_k=1)
    out = augment_texts(["good", "Good, unbelievably GOOD!"], tokenizer, cfg, embedding_matrix=m)
    assert out == [(0, "great"), (0, "great"), (1, "Great, wow GREAT!"), (1, "Great, wow GREAT!")]


def test_candidates_are_whole_words(tokenizer):
    allowed = candidate_vocab(tokenizer, len(tokenizer))
    tokens = tokenizer.convert_ids_to_tokens(list(np.flatnonzero(allowed)))
    assert "good" in tokens and not any(t.startswith(("##", "[")) for t in tokens)
    assert not allowed[tokenizer.all_special_ids].any()
    with pytest.raises(DistilError, match="vocabulary rows"):
        candidate_vocab(tokenizer, 100)


def test_mlm_candidates_batched_equal_one_at_a_time(tokenizer, mlm_model):
    windows = [tokenizer(t)["input_ids"] for t in TEXTS]
    queries = [(0, 2), (1, 3), (2, 6), (0, 5)]
    allowed = candidate_vocab(tokenizer, 30522)
    args = (allowed, 5, tokenizer.mask_token_id, tokenizer.pad_token_id)
    batched = mlm_candidates(mlm_model, windows, queries, *args, batch_size=64)
    single = mlm_candidates(mlm_model, windows, queries, *args, batch_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(batched, single))
    for (row, pos), top in zip(queries, batched):  # against the full (1, L, V) logits of the unhooked model
        ids = torch.tensor([windows[row]])
        original = int(ids[0, pos])
        ids[0, pos] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = mlm_model(input_ids=ids).logits[0, pos]  # (V,)
        logits[~torch.from_numpy(allowed)] = float("-inf")
        logits[original] = float("-inf")
        assert top.tolist() == logits.topk(5).indices.tolist()


def test_mlm_method_replaces_with_the_top_prediction(tokenizer, mlm_model):
    cfg = AugmentationConfig(num_variants=1, replace_prob=1.0, top_k=1, method="mlm")
    text = "the actors shine"
    ((_, variant),) = augment_texts([text], tokenizer, cfg, mlm_model=mlm_model)
    ids = tokenizer(text)["input_ids"]
    allowed = candidate_vocab(tokenizer, 30522)
    expected = [
        tokenizer.convert_ids_to_tokens(int(c[0]))
        for c in mlm_candidates(mlm_model, [ids], [(0, 1), (0, 2), (0, 3)], allowed, 1, tokenizer.mask_token_id, 0, 8)
    ]
    assert variant == " ".join(expected)
    # deterministic, and a multi-piece word falls back to the embedding neighbours
    pairs = augment_texts(TEXTS, tokenizer, AugmentationConfig(method="mlm", num_variants=2), mlm_model=mlm_model)
    assert pairs == augment_texts(
        TEXTS, tokenizer, AugmentationConfig(method="mlm", num_variants=2, batch_size=3), mlm_model=mlm_model
    )


def test_missing_models_are_refused(tokenizer):
    with pytest.raises(DistilError, match="method 'mlm' needs mlm_model"):
        augment_texts(TEXTS, tokenizer, AugmentationConfig(method="mlm"))
    with pytest.raises(DistilError, match="needs embedding_matrix"):
        augment_texts(TEXTS, tokenizer, AugmentationConfig())


def _frame():
    return pd.DataFrame({"text": TEXTS, "label": [1, 0, 0]})


def test_augment_frame_appends_variants_with_their_labels(tokenizer, matrix):
    out = augment_frame(_frame(), tokenizer, AugmentationConfig(num_variants=2), embedding_matrix=matrix)
    assert len(out) == 9
    assert out["text"].tolist()[:3] == TEXTS
    assert out["augmented_from"].tolist() == [-1, -1, -1, 0, 0, 1, 1, 2, 2]
    assert out["label"].tolist() == [1, 0, 0, 1, 1, 0, 0, 0, 0]


def test_cache_hit_miss_and_corrupt(tokenizer, matrix, tmp_path, monkeypatch):
    cfg = AugmentationConfig(num_variants=2)
    built = cached_augment(_frame(), tokenizer, cfg, tmp_path, model_hash="m1", embedding_matrix=matrix)
    assert built.attrs["augment_cache"]["status"] == "built"
    entry = tmp_path / "augmented" / built.attrs["augment_cache"]["path"].split("/")[-1]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["rows"] == 9 and len(meta["sha256"]) == 64

    real = augment_module.augment_frame
    monkeypatch.setattr(augment_module, "augment_frame", lambda *a, **k: pytest.fail("a hit must not recompute"))
    hit = cached_augment(
        _frame(), tokenizer, AugmentationConfig(num_variants=2, batch_size=7), tmp_path, "m1", embedding_matrix=matrix
    )  # batch size does not change the result, so not the key
    assert hit.attrs["augment_cache"]["status"] == "hit"
    pd.testing.assert_frame_equal(hit, built)
    monkeypatch.setattr(augment_module, "augment_frame", real)

    data = entry / "augmented.parquet"
    data.write_bytes(data.read_bytes()[:-20])  # truncated
    again = cached_augment(_frame(), tokenizer, cfg, tmp_path, "m1", embedding_matrix=matrix)
    assert again.attrs["augment_cache"]["status"] == "rebuilt (corrupt)"
    pd.testing.assert_frame_equal(again, built)
    assert (
        cached_augment(_frame(), tokenizer, cfg, tmp_path, "m1", embedding_matrix=matrix).attrs["augment_cache"][
            "status"
        ]
        == "hit"
    )

    other = cached_augment(_frame(), tokenizer, cfg, tmp_path, "m2", embedding_matrix=matrix)
    assert other.attrs["augment_cache"]["status"] == "built"  # another model: another key
    assert len(list((tmp_path / "augmented").iterdir())) == 2
