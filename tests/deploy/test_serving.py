"""Serving: every exported variant behind one Predictor; PyTorch and ONNX agree; bad paths fail in one line."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from distil.deploy.export import export_all
from distil.deploy.serving import VARIANTS, load_student
from distil.errors import DistilError

TEXTS = ["ok", "the plot was thin but the acting carried it a long way", "dull", "a film I would watch again"]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, _tiny_bert_session, tokenizer):
    """export_all of the tiny BERT (labels neg/pos) saved with the real MiniLM tokenizer."""
    root = tmp_path_factory.mktemp("serving")
    model = copy.deepcopy(_tiny_bert_session)
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    export_all(root / "student", root / "out")
    return root / "out"


@pytest.fixture(scope="module")
def fp32_logits(deployed):
    return load_student(deployed / "hf").logits(TEXTS)  # (N, C)


def test_torch_dir_and_onnx_dir_give_the_same_labels(deployed):
    torch_p, onnx_p = load_student(deployed / "hf"), load_student(deployed / "onnx")
    assert (torch_p.variant, onnx_p.variant) == ("torch", "onnx")
    assert torch_p.labels == onnx_p.labels == ["neg", "pos"]
    np.testing.assert_allclose(onnx_p.logits(TEXTS), torch_p.logits(TEXTS), atol=1e-4, rtol=0)
    assert [p["label"] for p in onnx_p.predict(TEXTS)] == [p["label"] for p in torch_p.predict(TEXTS)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_serves_through_one_interface(deployed, fp32_logits, variant):
    predictor = load_student(deployed, variant=variant)  # the export_all root picks the sub-directory
    assert predictor.variant == variant
    logits = predictor.logits(TEXTS, batch_size=3)
    assert logits.shape == (len(TEXTS), 2) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, fp32_logits, atol=2e-2 if variant != "onnx" else 1e-4, rtol=0)
    out = predictor.predict(TEXTS)
    assert len(out) == len(TEXTS)
    for row, z in zip(out, logits):
        assert set(row) == {"label", "score", "probs"} and list(row["probs"]) == ["neg", "pos"]
        assert row["label"] == predictor.labels[int(z.argmax())] and row["score"] == max(row["probs"].values())
        assert abs(sum(row["probs"].values()) - 1) < 1e-5


def test_auto_variant_and_batching_keep_order(deployed):
    predictor = load_student(deployed / "onnx-int8" / "model.onnx")
    assert predictor.variant == "onnx-int8"
    torch_p = load_student(deployed)
    assert torch_p.variant == "torch"
    one_by_one = np.concatenate([torch_p.logits([t]) for t in TEXTS])
    np.testing.assert_allclose(torch_p.logits(TEXTS, batch_size=2), one_by_one, atol=1e-5, rtol=0)
    pairs = [("a premise", "a hypothesis"), ("short", "a far longer second segment of the pair")]
    np.testing.assert_allclose(load_student(deployed / "onnx").logits(pairs), torch_p.logits(pairs), atol=1e-4, rtol=0)
    assert torch_p.logits([]).shape == (0, 2)


def test_bad_paths_variants_and_texts_fail_in_one_line(deployed, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "lstm").mkdir()
    (tmp_path / "lstm" / "config.json").write_text('{"distil_model": "lstm"}')
    (tmp_path / "lstm" / "model.safetensors").write_bytes(b"")
    cases = [
        (lambda: load_student(tmp_path / "missing"), "does not exist"),
        (lambda: load_student(tmp_path / "empty"), "neither config.json"),
        (lambda: load_student(tmp_path / "lstm"), "LSTM"),
        (lambda: load_student(deployed / "hf", variant="tensorrt"), "expected None"),
        (lambda: load_student(deployed / "onnx", variant="torch"), "no safetensors"),
        (lambda: load_student(deployed / "hf", variant="onnx"), "no model.onnx"),
        (lambda: load_student(deployed / "onnx", variant="onnx-int8"), "holds the 'onnx' graph"),
        (lambda: load_student(deployed / "onnx").predict("one string"), "wrap one text"),
        (lambda: load_student(deployed / "onnx").predict(["ok", 3]), r"texts\[1\]"),
    ]
    for call, message in cases:
        with pytest.raises(DistilError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
