"""The teacher cache's named per-row arrays: per-token (ragged) storage, lookup/mask, verification, keys."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from distil.data import PadCollator
from distil.engine.teacher_cache import (
    CLASSIFICATION_SIGNAL,
    RowArray,
    SoftLabelCache,
    SoftLabels,
    fingerprint,
    soft_labels_for,
)
from distil.io import sha256_file
from distil.models.inference import logits_of

NUM_LABELS = 5


@pytest.fixture(scope="module")
def token_teacher():
    """A random 2-layer BertForTokenClassification (hidden 32, 4 heads, 5 labels, vocab 30,522)."""
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=NUM_LABELS,
    )
    return BertForTokenClassification(cfg).eval()


@pytest.fixture(scope="module")
def token_ds(tokenizer):
    """13 rows of 3 to 27 tokens (no padding), with idx and length."""
    texts = [" ".join(["the", "film", "was", "long"][: 1 + i % 4] * (1 + i // 2)) for i in range(13)]
    enc = tokenizer(texts, truncation=True, max_length=32)
    lengths = [len(ids) for ids in enc["input_ids"]]
    assert len(set(lengths)) > 5
    columns = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return Dataset.from_dict({**columns, "idx": list(range(len(texts))), "length": lengths})


class CountingTeacher(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0
        self.config = model.config

    def forward(self, **kw):
        self.calls += 1
        return self.model(**kw)


def _per_token(teacher, tokenizer, ds, cache, **kw):
    collator = PadCollator(tokenizer.pad_token_id)
    return soft_labels_for(
        teacher, tokenizer, ds, collator, cache, max_length=32, batch_size=4, bf16=False, per_token=True, **kw
    )


def test_per_token_entry_equals_the_teacher_row_by_row(token_teacher, tokenizer, token_ds, tmp_path):
    teacher = CountingTeacher(token_teacher)
    soft = _per_token(teacher, tokenizer, token_ds, tmp_path, task="token-classification")
    assert soft.status == "built" and teacher.calls == 4  # 13 rows in batches of 4
    assert soft.signal == {"logits": "per_token"}
    lengths = np.asarray(token_ds["length"])
    logits, offsets = soft.logits, soft.arrays["logits"].offsets
    assert isinstance(logits, np.memmap) and logits.shape == (lengths.sum(), NUM_LABELS)  # no padding stored
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(lengths)]))
    for i in range(len(token_ds)):
        row = token_ds[i]
        with torch.inference_mode():
            expected = token_teacher(
                input_ids=torch.tensor([row["input_ids"]]), attention_mask=torch.tensor([row["attention_mask"]])
            ).logits[0]  # (L_i, C)
        np.testing.assert_allclose(logits[offsets[i] : offsets[i + 1]], expected.numpy(), atol=1e-5)
    meta = json.loads((soft.path / "meta.json").read_text())
    assert meta["version"] == 2 and meta["num_rows"] == len(token_ds)
    (spec,) = meta["arrays"]
    assert spec["name"] == "logits" and spec["kind"] == "per_token" and spec["shape"] == [int(lengths.sum()), 5]
    assert sorted(spec["sha256"]) == ["logits.npy", "logits.offsets.npy"]

    again = _per_token(teacher, tokenizer, token_ds, tmp_path, task="token-classification")
    assert again.status == "hit" and teacher.calls == 4 and again.fingerprint == soft.fingerprint


def test_lookup_and_mask_match_the_teacher_on_a_padded_batch(token_teacher, tokenizer, token_ds, tmp_path):
    soft = _per_token(token_teacher, tokenizer, token_ds, tmp_path)
    rows = [2, 11, 0, 7]
    batch = PadCollator(tokenizer.pad_token_id)([token_ds[i] for i in rows])
    idx = batch.pop("idx")
    length = batch["input_ids"].shape[1]
    with torch.inference_mode():
        live = token_teacher(**batch).logits  # (B, T, C)
    cached = soft.lookup(idx, length=length)
    mask = soft.mask(idx, length)
    assert cached.dtype == torch.float32 and cached.shape == (4, length, NUM_LABELS)
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert torch.allclose(cached[mask], live[mask], atol=1e-5)
    assert not cached[~mask].any()  # zero padding
    assert torch.equal(soft.lookup(idx), cached)  # None = the longest row of the batch


def test_lookup_pads_and_crops_exactly():
    data = np.arange(12, dtype=np.float32).reshape(6, 2)  # rows of 3, 0, 1, 2 positions
    soft_rows = RowArray(data, np.array([0, 3, 3, 4, 6], dtype=np.int64))
    soft = SoftLabels({"logits": soft_rows, "pooled": np.ones((4, 3), np.float32)}, "k", "hit", Path("in-memory"))
    idx = torch.tensor([3, 0, 1])
    padded = soft.lookup(idx, length=4)  # (3, 4, 2)
    expected = torch.zeros(3, 4, 2)
    expected[0, :2] = torch.tensor([[8.0, 9.0], [10.0, 11.0]])
    expected[1, :3] = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    assert torch.equal(padded, expected)
    assert torch.equal(soft.lookup(idx), expected[:, :3])  # longest row of the batch
    assert torch.equal(soft.lookup(idx, length=1), expected[:, :1])  # cropped
    assert soft.mask(idx, 4).tolist() == [[True, True, False, False], [True] * 3 + [False], [False] * 4]
    assert soft.mask(idx).shape == (3, 3)
    assert soft.lookup(idx, name="pooled").shape == (3, 3)  # a fixed array beside it
    with pytest.raises(ValueError, match="fixed-shape array has no per-row lengths"):
        soft.mask(idx, 4, name="pooled")
    with pytest.raises(KeyError, match="no array 'embedding'"):
        soft.lookup(idx, name="embedding")


@pytest.mark.parametrize("file", ["logits.npy", "logits.offsets.npy"])
def test_corrupt_per_token_file_is_rebuilt_never_used(token_teacher, tokenizer, token_ds, tmp_path, file):
    first = _per_token(token_teacher, tokenizer, token_ds, tmp_path)
    good = np.asarray(first.logits).copy()
    path = first.path / file
    raw = bytearray(path.read_bytes())
    raw[-8:] = b"\x01" * 8
    path.write_bytes(bytes(raw))
    again = _per_token(token_teacher, tokenizer, token_ds, tmp_path)
    assert again.status == "rebuilt (corrupt)"
    np.testing.assert_allclose(np.asarray(again.logits), good, atol=1e-6)


def test_offsets_are_verified_beyond_the_checksum(token_teacher, tokenizer, token_ds, tmp_path):
    """Non-monotone offsets with a matching checksum in meta.json are still refused."""
    first = _per_token(token_teacher, tokenizer, token_ds, tmp_path)
    offsets = np.load(first.path / "logits.offsets.npy")
    offsets[[3, 4]] = offsets[[4, 3]]
    np.save(first.path / "logits.offsets.npy", offsets)
    meta = json.loads((first.path / "meta.json").read_text())
    meta["arrays"][0]["sha256"]["logits.offsets.npy"] = sha256_file(first.path / "logits.offsets.npy")
    (first.path / "meta.json").write_text(json.dumps(meta))
    assert SoftLabelCache(tmp_path).check(first.fingerprint, len(token_ds)) == (None, "corrupt")
    assert _per_token(token_teacher, tokenizer, token_ds, tmp_path).status == "rebuilt (corrupt)"


def test_key_differs_by_signal_kind_and_task(token_teacher, tokenizer, token_ds, tmp_path):
    args = ("t" * 64, "d" * 64, {"max_length": 32})
    assert fingerprint(*args) == fingerprint(*args, task="classification", signal=CLASSIFICATION_SIGNAL)
    keys = {
        fingerprint(*args),
        fingerprint(*args, signal={"logits": "per_token"}),
        fingerprint(*args, task="token-classification", signal={"logits": "per_token"}),
        fingerprint(*args, signal={"logits": "fixed", "embedding": "fixed"}),
    }
    assert len(keys) == 4
    with pytest.raises(ValueError, match="kind 'ragged'"):
        fingerprint(*args, signal={"logits": "ragged"})

    per_token = _per_token(token_teacher, tokenizer, token_ds, tmp_path)
    at_cls = soft_labels_for(  # a fixed signal of the same teacher on the same data: its own entry
        token_teacher,
        tokenizer,
        token_ds,
        PadCollator(tokenizer.pad_token_id),
        tmp_path,
        max_length=32,
        batch_size=4,
        bf16=False,
        signals={"logits": lambda out: logits_of(out)[:, 0]},  # (B, C) at [CLS]
    )
    assert at_cls.status == "built" and at_cls.fingerprint != per_token.fingerprint
    assert at_cls.logits.shape == (len(token_ds), NUM_LABELS)
    np.testing.assert_allclose(at_cls.logits, per_token.logits[per_token.arrays["logits"].offsets[:-1]])


def test_several_signals_with_their_own_shapes_and_dtypes(token_teacher, tokenizer, token_ds, tmp_path):
    signals = {
        "logits": logits_of,
        "top2_ids": lambda out: out.logits.topk(2, dim=-1).indices,  # (B, T, 2) int64
        "max_logit": lambda out: out.logits.max(dim=-1).values,  # (B, T)
    }
    soft = _per_token(token_teacher, tokenizer, token_ds, tmp_path, signals=signals)
    total = sum(token_ds["length"])
    assert soft.arrays["top2_ids"].data.shape == (total, 2) and soft.arrays["top2_ids"].data.dtype == np.int64
    assert soft.arrays["max_logit"].data.shape == (total,)
    idx = torch.tensor([5, 1])
    logits, ids = soft.lookup(idx), soft.lookup(idx, name="top2_ids")
    mask = soft.mask(idx)
    assert ids.dtype == torch.int64 and ids.shape == (*mask.shape, 2)
    assert torch.equal(ids[mask], logits[mask].topk(2, dim=-1).indices)
    assert torch.equal(soft.lookup(idx, name="max_logit")[mask], logits[mask].max(-1).values)
    again = _per_token(token_teacher, tokenizer, token_ds, tmp_path, signals=signals)
    assert again.status == "hit" and again.signal == dict.fromkeys(signals, "per_token")


def test_a_length_column_that_disagrees_with_the_mask_is_refused(token_teacher, tokenizer, token_ds, tmp_path):
    bad = token_ds.map(lambda row: {"length": row["length"] + 1})
    with pytest.raises(ValueError, match="attention_mask has .* real tokens but the dataset's 'length'"):
        _per_token(token_teacher, tokenizer, bad, tmp_path)
    assert not [p for p in (tmp_path / "soft_labels").iterdir()]  # nothing half-written left
