"""The BiLSTM student: forward/backward, padding invariance, save/load, embedding initialisation, the protocol."""

from __future__ import annotations

import json

import pytest
import torch

from distil.errors import DistilError
from distil.models import LSTMClassifier, LSTMConfig, StudentProtocol

VOCAB = 50


def _model(**overrides) -> LSTMClassifier:
    torch.manual_seed(0)
    fields = {"vocab_size": VOCAB, "embedding_dim": 16, "hidden_size": 12, "num_labels": 3, **overrides}
    return LSTMClassifier(LSTMConfig(**fields))


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, VOCAB, (4, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    attention_mask[3, 2:] = 0
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def test_forward_backward_and_loss():
    model = _model(num_layers=2)
    batch = _batch()
    labels = torch.tensor([0, 1, 2, 1])
    output = model(**batch, labels=labels, token_type_ids=torch.zeros_like(batch["input_ids"]))
    assert output.logits.shape == (4, 3)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
    output.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model(**batch).loss is None


@pytest.mark.parametrize("bidirectional", [True, False])
def test_padding_does_not_change_a_rows_logits(bidirectional):
    model = _model(bidirectional=bidirectional).eval()
    batch = _batch()
    with torch.no_grad():
        logits = model(**batch).logits  # (4, 3)
        row_alone = model(
            input_ids=batch["input_ids"][1:2, :5], attention_mask=batch["attention_mask"][1:2, :5]
        ).logits
        extra_padding = torch.nn.functional.pad(batch["input_ids"][1:2, :5], (0, 20))
        mask = torch.nn.functional.pad(batch["attention_mask"][1:2, :5], (0, 20))
        row_padded = model(input_ids=extra_padding, attention_mask=mask).logits
    torch.testing.assert_close(logits[1:2], row_alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(row_padded, row_alone, rtol=0, atol=1e-6)


def test_padding_tokens_are_ignored_whatever_their_id():
    model = _model().eval()
    batch = _batch()
    garbage = batch["input_ids"].clone()
    garbage[batch["attention_mask"] == 0] = 7
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(garbage, batch["attention_mask"]).logits)


def test_no_mask_means_every_token_is_real():
    model = _model().eval()
    input_ids = _batch()["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, model(input_ids, torch.ones_like(input_ids)).logits)


def test_save_load_round_trip(tmp_path):
    model = _model(id2label={0: "neg", 1: "neu", 2: "pos"}).eval()
    model.save_pretrained(tmp_path / "lstm")
    assert sorted(p.name for p in (tmp_path / "lstm").iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((tmp_path / "lstm" / "config.json").read_text())
    assert saved["distil_model"] == "lstm" and saved["vocab_size"] == VOCAB
    loaded = LSTMClassifier.from_pretrained(tmp_path / "lstm")
    assert loaded.config == model.config
    assert loaded.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and loaded.config.label2id["pos"] == 2
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(**_batch()).logits, model(**_batch()).logits)


def test_from_pretrained_refuses_other_directories(tmp_path):
    with pytest.raises(DistilError, match="config.json is missing"):
        LSTMClassifier.from_pretrained(tmp_path)
    _model().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(DistilError, match='no "distil_model": "lstm"'):
        LSTMClassifier.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dropout": 1.5}, r"LSTMConfig.dropout: got 1.5"),
        ({"pad_token_id": VOCAB}, rf"LSTMConfig.pad_token_id: got {VOCAB}; it must be a token id in 0\.\.{VOCAB - 1}"),
        ({"hidden_size": 0}, "LSTMConfig.hidden_size: got 0"),
        ({"id2label": {0: "a", 1: "b"}}, r"LSTMConfig.id2label: has indices \[0, 1\], expected 0\.\.2"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(DistilError, match=message):
        _model(**overrides)


def test_reset_classifier():
    model = _model()
    model.reset_classifier(5)
    assert model.num_labels == 5 and model.config.num_labels == 5 and model.config.id2label[4] == "LABEL_4"
    assert model(**_batch()).logits.shape == (4, 5)


def test_init_embeddings_same_width_copies(tiny_bert):
    model = LSTMClassifier(LSTMConfig(vocab_size=30522, embedding_dim=32, hidden_size=8))
    model.init_embeddings_from(tiny_bert)
    assert torch.equal(model.embeddings.weight, tiny_bert.bert.embeddings.word_embeddings.weight)


def test_init_embeddings_narrower_keeps_the_top_principal_components(tiny_bert):
    model = LSTMClassifier(LSTMConfig(vocab_size=30522, embedding_dim=8, hidden_size=8))
    model.init_embeddings_from(tiny_bert)
    teacher = tiny_bert.bert.embeddings.word_embeddings.weight.detach().double()  # (V, 32)
    projected = model.embeddings.weight.detach().double()  # (V, 8)
    covariance = torch.cov(projected.T)  # (8, 8)
    top_variances = torch.linalg.eigvalsh(torch.cov(teacher.T)).flip(0)[:8]  # descending
    torch.testing.assert_close(covariance.diagonal(), top_variances, rtol=1e-4, atol=1e-8)
    off_diagonal = covariance - torch.diag(covariance.diagonal())
    assert off_diagonal.abs().max() < 1e-4 * top_variances[0]


def test_init_embeddings_errors(tiny_bert):
    with pytest.raises(DistilError, match="the teacher has 30522 token embeddings, the student's vocab_size is 50"):
        _model().init_embeddings_from(tiny_bert)
    wide = LSTMClassifier(LSTMConfig(vocab_size=30522, embedding_dim=64, hidden_size=8))
    with pytest.raises(DistilError, match="embedding_dim 64 exceeds the teacher's embedding width 32"):
        wide.init_embeddings_from(tiny_bert)


def test_lstm_and_transformers_models_meet_the_student_protocol(tiny_bert):
    assert isinstance(_model(), StudentProtocol)
    assert isinstance(tiny_bert, StudentProtocol)
    assert not isinstance(torch.nn.Linear(2, 2), StudentProtocol)
