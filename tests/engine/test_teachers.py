import numpy as np
import pandas as pd
import pytest
import torch

from distil.config import LossConfig
from distil.data import PadCollator, to_dataset
from distil.engine.distiller import Distiller
from distil.engine.teachers import MultiTeacherSoftLabels, combine_soft_labels, multi_teacher_soft_labels
from distil.errors import DistilError


def _logits(seed, shape=(6, 3)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mean_logits_is_the_weighted_mean():
    a, b = _logits(0), _logits(1)
    np.testing.assert_allclose(combine_soft_labels([a, b], how="mean_logits"), (a + b) / 2, rtol=1e-6)
    np.testing.assert_allclose(combine_soft_labels([a, b], [1, 3], how="mean_logits"), 0.25 * a + 0.75 * b, rtol=1e-6)


@pytest.mark.parametrize("kd_temperature", [1.0, 2.0, 4.0])
def test_mean_probs_is_the_mixture_at_the_temperature(kd_temperature):
    a, b, c = _logits(0), _logits(1), _logits(2)
    out = combine_soft_labels([a, b, c], [2, 1, 1], how="mean_probs", kd_temperature=kd_temperature)
    expected = (
        0.5 * _softmax(a / kd_temperature) + 0.25 * _softmax(b / kd_temperature) + 0.25 * _softmax(c / kd_temperature)
    )
    np.testing.assert_allclose(_softmax(out / kd_temperature), expected, atol=1e-6)
    assert out.dtype == np.float32 and out.shape == (6, 3)


def test_weights_are_normalised_and_zero_drops_a_teacher():
    a, b = _logits(0), _logits(1)
    np.testing.assert_allclose(
        combine_soft_labels([a, b], [2, 6]), combine_soft_labels([a, b], [0.25, 0.75]), rtol=1e-6
    )
    np.testing.assert_allclose(
        _softmax(combine_soft_labels([a, b], [1, 0], kd_temperature=2.0) / 2.0), _softmax(a / 2.0), atol=1e-6
    )
    np.testing.assert_allclose(combine_soft_labels([a]), a - np.log(np.exp(a).sum(-1, keepdims=True)), atol=1e-5)


def test_mismatches_and_bad_settings_are_refused():
    a = _logits(0)
    with pytest.raises(DistilError, match=r"teacher 1: soft labels have shape \(6, 2\) but teacher 0 has \(6, 3\)"):
        combine_soft_labels([a, _logits(1, (6, 2))])
    with pytest.raises(DistilError, match=r"teacher 2: soft labels have shape \(5, 3\)"):
        combine_soft_labels([a, a, _logits(1, (5, 3))])
    with pytest.raises(DistilError, match="2 weights for 3 teachers"):
        combine_soft_labels([a, a, a], [1, 1])
    with pytest.raises(DistilError, match="not all 0"):
        combine_soft_labels([a, a], [0, 0])
    with pytest.raises(DistilError, match="how='median'"):
        combine_soft_labels([a, a], how="median")
    with pytest.raises(DistilError, match="kd_temperature"):
        combine_soft_labels([a, a], kd_temperature=0)
    with pytest.raises(DistilError, match="no teachers"):
        combine_soft_labels([])


@pytest.fixture
def data(tokenizer):
    frame = pd.DataFrame(
        {
            "text": [f"review {i}: {'great' if i % 2 else 'dull'} film" for i in range(10)],
            "label": [i % 2 for i in range(10)],
        }
    )
    return to_dataset(frame, tokenizer, 16), PadCollator(tokenizer.pad_token_id)


def _direct_logits(teacher, dataset, collator):
    batch = collator([dataset[i] for i in range(len(dataset))])
    batch.pop("idx"), batch.pop("labels")
    with torch.no_grad():
        return teacher(**batch).logits.numpy()  # (N, C)


def test_two_teachers_have_separate_cache_entries(tokenizer, data, make_tiny_bert, tmp_path):
    dataset, collator = data
    teachers = [make_tiny_bert(), make_tiny_bert(num_hidden_layers=2)]
    kwargs = {"max_length": 16, "batch_size": 4, "bf16": False, "how": "mean_probs", "kd_temperature": 2.0}
    soft = multi_teacher_soft_labels(teachers, [1, 3], tokenizer, dataset, collator, tmp_path, **kwargs)
    assert isinstance(soft, MultiTeacherSoftLabels)
    entries = sorted(p.name for p in (tmp_path / "soft_labels").iterdir())
    assert entries == sorted(m.fingerprint for m in soft.members) and len(set(entries)) == 2
    assert soft.status == "teacher 0: built, teacher 1: built"
    direct = [_direct_logits(t, dataset, collator) for t in teachers]
    for member, logits in zip(soft.members, direct):
        np.testing.assert_allclose(member.logits, logits, atol=1e-5)
    expected = 0.25 * _softmax(direct[0] / 2.0) + 0.75 * _softmax(direct[1] / 2.0)  # the hand-computed mixture
    np.testing.assert_allclose(_softmax(soft.logits / 2.0), expected, atol=1e-5)

    again = multi_teacher_soft_labels(teachers, [1, 3], tokenizer, dataset, collator, tmp_path, **kwargs)
    assert again.status == "teacher 0: hit, teacher 1: hit" and again.fingerprint == soft.fingerprint
    reweighted = multi_teacher_soft_labels(teachers, [1, 1], tokenizer, dataset, collator, tmp_path, **kwargs)
    assert reweighted.status.count("hit") == 2 and reweighted.fingerprint != soft.fingerprint

    idx = torch.tensor([3, 0, 7])
    np.testing.assert_array_equal(soft.lookup(idx).numpy(), soft.logits[[3, 0, 7]])
    distiller = Distiller(LossConfig(kd_temperature=2.0), soft_labels=soft)  # the existing Distiller, unchanged
    assert torch.equal(distiller.teacher_logits({}, idx), soft.lookup(idx))


def test_teachers_of_different_tasks_are_refused(tokenizer, data, make_tiny_bert, tmp_path):
    dataset, collator = data
    with pytest.raises(DistilError, match="teacher 1 has 3 labels but teacher 0 has 2"):
        multi_teacher_soft_labels(
            [make_tiny_bert(), make_tiny_bert(num_labels=3)],
            None,
            tokenizer,
            dataset,
            collator,
            tmp_path,
            max_length=16,
            bf16=False,
        )
    assert not (tmp_path / "soft_labels").exists()  # refused before any teacher ran
    with pytest.raises(DistilError, match="dataset has 5 rows but teacher 0's has 10"):
        multi_teacher_soft_labels(
            [make_tiny_bert(), make_tiny_bert()],
            None,
            tokenizer,
            [dataset, dataset.select(range(5))],
            collator,
            tmp_path,
            max_length=16,
            bf16=False,
        )
