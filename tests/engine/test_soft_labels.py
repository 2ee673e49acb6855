import json

import numpy as np
import pandas as pd
import pytest
import torch

from distil.data import PadCollator, to_dataset
from distil.engine.teacher_cache import SoftLabelCache, SoftLabels, soft_labels_for


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


def test_meta_records_each_array_and_a_version_1_entry_is_rebuilt(tiny_bert, tokenizer, train_ds, tmp_path):
    first = _soft(tiny_bert, tokenizer, train_ds, tmp_path)
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["version"] == 2 and meta["fingerprint"] == first.fingerprint and meta["num_rows"] == 40
    assert meta["arrays"] == [
        {
            "name": "logits",
            "kind": "fixed",
            "dtype": "float32",
            "shape": [40, 2],
            "sha256": {"logits.npy": meta["arrays"][0]["sha256"]["logits.npy"]},
        }
    ]
    assert first.signal == {"logits": "fixed"} and first.lookup(torch.arange(3)).shape == (3, 2)
    meta["version"] = 1
    (first.path / "meta.json").write_text(json.dumps(meta))
    assert _soft(tiny_bert, tokenizer, train_ds, tmp_path).status == "rebuilt (stale)"


def test_single_array_compute_and_bare_array_soft_labels(tmp_path):
    """The b3 benchmark's use: a compute writing one (N, C) array at the path it is given, and SoftLabels built
    from a bare array."""
    cache = SoftLabelCache(tmp_path)

    def compute(path):
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(6, 3))
        out[:] = np.arange(18, dtype=np.float32).reshape(6, 3)
        return out

    built = cache.get_or_build("s" * 32, 6, compute)
    assert built.status == "built" and built.signal == {"logits": "fixed"}
    arrays, status = cache.check("s" * 32, 6)
    assert status == "hit" and cache.check("s" * 32, 7) == (None, "stale")
    in_memory = SoftLabels(np.load(built.path / "logits.npy"), "s" * 32, "in-memory", tmp_path)
    for soft in (built, SoftLabels(arrays, "s" * 32, status, tmp_path), in_memory):
        assert torch.equal(soft.lookup(torch.tensor([4, 1])), torch.tensor([[12.0, 13.0, 14.0], [3.0, 4.0, 5.0]]))
