"""Every model load goes through one loader that passes use_safetensors=True: a decoy directory (a stray
x.safetensors beside a pickled pytorch_model.bin) is refused by every command, and the pickle is never opened."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from distil.cli import main
from distil.deploy.export import load_hf_student
from distil.deploy.serving import load_student
from distil.errors import DistilError
from distil.models.loading import load_classifier, load_pretrained


class _Payload:
    """Unpickling this writes a marker file: proof that the pickle was read."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def decoy(tiny_bert, tokenizer, tmp_path, monkeypatch):
    """config.json + tokenizer + a decoy x.safetensors + a malicious pytorch_model.bin; torch.load fails the test."""
    directory, marker = tmp_path / "decoy", tmp_path / "unpickled"
    tiny_bert.config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "x.safetensors").write_bytes(b"decoy")
    with open(directory / "pytorch_model.bin", "wb") as f:
        pickle.dump({"payload": _Payload(marker)}, f)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle checkpoint was read")

    monkeypatch.setattr(torch, "load", refuse)
    yield directory
    assert not marker.exists(), "the pickle was unpickled"


def test_the_loader_refuses_the_decoy(decoy):
    for load in (
        lambda: load_classifier(str(decoy)),
        lambda: load_pretrained(AutoModelForSequenceClassification, str(decoy)),
        lambda: load_pretrained(AutoModelForMaskedLM, str(decoy)),
        lambda: load_hf_student(decoy),
        lambda: load_student(decoy),
    ):
        with pytest.raises(DistilError, match="pytorch_model.bin is not safetensors") as error:
            load()
        assert "\n" not in str(error.value)


def test_predict_and_export_refuse_the_decoy(decoy, tmp_path, capsys):
    assert main(["predict", str(decoy), "a fine film"]) == 2
    assert "pytorch_model.bin is not safetensors" in capsys.readouterr().err
    assert main(["export", str(decoy), str(tmp_path / "exported")]) == 2
    assert "pytorch_model.bin is not safetensors" in capsys.readouterr().err
    assert not (tmp_path / "exported").exists()


def test_the_loader_passes_use_safetensors_even_when_model_safetensors_exists(tiny_bert, tmp_path, monkeypatch):
    tiny_bert.save_pretrained(tmp_path)
    seen = {}
    original = AutoModelForSequenceClassification.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", classmethod(spy))
    load_classifier(str(tmp_path))
    assert seen["use_safetensors"] is True
