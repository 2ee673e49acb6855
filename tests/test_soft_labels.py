import numpy as np
import pandas as pd
import pytest
import torch

from distil.data import PadCollator, to_dataset
from distil.soft_labels import SoftLabelCache, soft_labels_for


@pytest.fixture
def train_ds(tokenizer):
    texts = [f"the film number {i} was {'great' if i % 2 else 'dull and long'}" for i in range(40)]
    return to_dataset(pd.DataFrame({"text": texts, "label": [i % 2 for i in range(40)]}), tokenizer, 32)


def _soft(teacher, tokenizer, ds, cache):
    return soft_labels_for(
        teacher, tokenizer, ds, PadCollator(tokenizer.pad_token_id), cache, max_length=32, batch_size=16, bf16=False
    )


class CountingTeacher(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0
        self.config = model.config

    def forward(self, **kw):
        self.calls += 1
        return self.model(**kw)


def test_miss_then_hit_matches_teacher(tiny_bert, tokenizer, train_ds, tmp_path):
    teacher = CountingTeacher(tiny_bert)
    first = _soft(teacher, tokenizer, train_ds, tmp_path)
    assert first.status == "built" and teacher.calls == 3
    assert isinstance(first.logits, np.memmap) and first.logits.shape == (40, 2)
    batch = PadCollator(tokenizer.pad_token_id)([train_ds[i] for i in range(5)])
    batch.pop("idx"), batch.pop("labels")
    with torch.inference_mode():
        expected = tiny_bert(**batch).logits
    assert torch.allclose(first.lookup(torch.arange(5)), expected, atol=1e-5)
    second = _soft(teacher, tokenizer, train_ds, tmp_path)
    assert second.status == "hit" and teacher.calls == 3 and second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(np.asarray(second.logits), np.asarray(first.logits))


def test_changed_teacher_or_data_gets_a_new_key(tiny_bert, tokenizer, train_ds, tmp_path):
    first = _soft(tiny_bert, tokenizer, train_ds, tmp_path)
    with torch.no_grad():
        tiny_bert.classifier.bias += 0.5
    second = _soft(tiny_bert, tokenizer, train_ds, tmp_path)
    assert second.fingerprint != first.fingerprint and second.status == "built"
    third = _soft(tiny_bert, tokenizer, train_ds.select(range(30)), tmp_path)
    assert third.fingerprint not in (first.fingerprint, second.fingerprint)


def test_corrupt_entry_is_rebuilt_never_used(tiny_bert, tokenizer, train_ds, tmp_path):
    first = _soft(tiny_bert, tokenizer, train_ds, tmp_path)
    good = np.asarray(first.logits).copy()
    path = first.path / "logits.npy"
    raw = bytearray(path.read_bytes())
    raw[-8:] = b"\x00\x00\xc0\x7f" * 2  # NaNs over the last row
    path.write_bytes(bytes(raw))
    again = _soft(tiny_bert, tokenizer, train_ds, tmp_path)
    assert again.status == "rebuilt (corrupt)"
    np.testing.assert_allclose(np.asarray(again.logits), good, atol=1e-6)


def test_truncated_and_stale_meta(tiny_bert, tokenizer, train_ds, tmp_path):
    first = _soft(tiny_bert, tokenizer, train_ds, tmp_path)
    path = first.path / "logits.npy"
    path.write_bytes(path.read_bytes()[:100])
    assert _soft(tiny_bert, tokenizer, train_ds, tmp_path).status == "rebuilt (corrupt)"
    meta = first.path / "meta.json"
    meta.write_text(meta.read_text().replace(first.fingerprint, "0" * 32))
    assert _soft(tiny_bert, tokenizer, train_ds, tmp_path).status == "rebuilt (stale)"


def test_unfinished_entry_is_not_visible(tmp_path):
    cache = SoftLabelCache(tmp_path)

    def boom(path):
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(4, 2))
        raise RuntimeError("killed while computing")

    with pytest.raises(RuntimeError):
        cache.get_or_build("k" * 32, 4, boom)
    assert not cache.entry("k" * 32).exists()
    assert list(cache.root.iterdir()) == []  # no temporary left behind either
