"""SentenceEncoder: pooling and the saved folder agree with sentence-transformers itself; loading is safetensors
only; students cut from it keep its pooling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_sentence_encoder

from distil.errors import DistilError
from distil.models.loading import load_classifier, load_pretrained
from distil.models.sentence import SentenceEncoder, pool
from distil.models.student import student_from_teacher

TEXTS = ["a cat sat on the mat", "the stock market fell sharply on monday after the report", "x"]


def tiny_encoder(seed: int = 0, **settings) -> SentenceEncoder:
    return tiny_sentence_encoder(seed, **settings)


def saved(tmp_path, model, tokenizer, name="enc"):
    path = tmp_path / name
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
@pytest.mark.parametrize("projection", [False, True])
def test_saved_encoder_gives_sentence_transformers_the_same_vectors(tmp_path, tokenizer, pooling, projection):
    from sentence_transformers import SentenceTransformer

    model = tiny_encoder(pooling=pooling, normalize=pooling != "max")
    if projection:
        model.set_projection(8)
    path = saved(tmp_path, model, tokenizer)
    ours = model.encode(TEXTS, tokenizer)
    theirs = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    assert ours.shape == theirs.shape == (3, 8 if projection else 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    again = load_pretrained(SentenceEncoder, str(path))  # and distil reads its own folder back
    assert again.settings["pooling"] == pooling and again.embedding_dim == ours.shape[1]
    np.testing.assert_allclose(again.encode(TEXTS, tokenizer), ours, atol=1e-6)


def test_pooling_closed_forms_ignore_padding():
    tokens = torch.tensor([[[1.0, 4.0], [3.0, -2.0], [100.0, 100.0]]])  # (1, 3, 2), last position is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pool(tokens, mask, "mean").tolist() == [[2.0, 1.0]]
    assert pool(tokens, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(tokens, mask, "cls").tolist() == [[1.0, 4.0]]
    with pytest.raises(DistilError, match="pooling: got 'sum'"):
        pool(tokens, mask, "sum")


def test_a_plain_encoder_folder_gets_mean_pooling_and_says_so(tmp_path, tokenizer, capsys):
    model = tiny_encoder()
    path = tmp_path / "plain"
    model.encoder.config.__dict__.pop("distil_sentence")
    model.encoder.save_pretrained(path)  # no modules.json, no distil settings
    loaded = load_pretrained(SentenceEncoder, str(path))
    assert loaded.settings["pooling"] == "mean" and loaded.settings["normalize"] is False
    assert "mean pooling assumed" in capsys.readouterr().err


def test_a_dense_module_without_safetensors_is_refused(tmp_path, tokenizer):
    model = tiny_encoder()
    model.set_projection(8)
    path = saved(tmp_path, model, tokenizer)
    weights = path / "2_Dense" / "model.safetensors"
    weights.rename(path / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(DistilError, match="2_Dense/ holds no model.safetensors; distil never unpickles"):
        load_pretrained(SentenceEncoder, str(path))


def test_unknown_modules_and_two_poolings_are_refused(tmp_path, tokenizer):
    path = saved(tmp_path, tiny_encoder(), tokenizer)
    modules = json.loads((path / "modules.json").read_text())
    layer_norm = {"idx": 9, "name": "9", "path": "x", "type": "sentence_transformers.models.LayerNorm"}
    (path / "modules.json").write_text(json.dumps([*modules, layer_norm]))
    with pytest.raises(DistilError, match="LayerNorm' module; distil reads Transformer"):
        load_pretrained(SentenceEncoder, str(path))
    (path / "modules.json").write_text(json.dumps(modules))
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    pooling["pooling_mode_cls_token"] = True
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(DistilError, match="exactly one of mean, cls or max"):
        load_pretrained(SentenceEncoder, str(path))


def test_load_classifier_reads_a_sentence_encoder_without_labels(tmp_path, tokenizer):
    path = saved(tmp_path, tiny_encoder(), tokenizer)
    model = load_classifier(str(path), num_labels=None, auto_class=SentenceEncoder)
    assert isinstance(model, SentenceEncoder) and model.embedding_dim == 32


def test_a_student_cut_from_the_teacher_keeps_its_pooling_and_projection(tokenizer):
    teacher = tiny_encoder(pooling="cls")
    teacher.set_projection(8)
    student = student_from_teacher(teacher, [0, 3]).eval()
    assert isinstance(student, SentenceEncoder) and student.config.num_hidden_layers == 2
    assert student.settings["pooling"] == "cls" and student.embedding_dim == 8
    assert torch.equal(student.dense.weight, teacher.dense.weight)
    assert torch.equal(student.encoder.encoder.layer[1].output.dense.weight,
                       teacher.encoder.encoder.layer[3].output.dense.weight)  # fmt: skip
    assert teacher.config.num_hidden_layers == 4  # the teacher's config is not touched
