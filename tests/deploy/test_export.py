"""Export: ONNX matches PyTorch at several shapes; int8 is smaller and close; failures leave nothing."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from distil.deploy import export
from distil.deploy.export import export_all, export_onnx, quantize_onnx_int8, quantize_torch_int8, render_model_card
from distil.errors import DistilError


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, _tiny_bert_session, tokenizer):
    """The tiny random BERT and the real MiniLM tokenizer, saved as a student directory."""
    path = tmp_path_factory.mktemp("student") / "hf"
    model = copy.deepcopy(_tiny_bert_session)
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def onnx_dir(student_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    result = export_onnx(student_dir, out)
    return out, result


def _torch_and_onnx_logits(student_dir, onnx_path, tokenizer, texts):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model(**enc).logits.numpy()
    session = export.ort_session(onnx_path)
    got = session.run(["logits"], {i.name: enc[i.name].numpy() for i in session.get_inputs()})[0]
    return ref, got, enc["input_ids"].shape


def test_onnx_matches_torch_at_batch_1_and_3_with_other_lengths(onnx_dir, student_dir, tokenizer):
    out, result = onnx_dir
    assert result["max_abs_diff"] <= 1e-4 and result["size_bytes"] == (out / "model.onnx").stat().st_size
    assert {"config.json", "tokenizer.json", "distil_export.json"} <= {p.name for p in out.iterdir()}
    shapes = set()
    for texts in (["hi"], ["a", "a much longer text with many more word pieces than the traced batch had", "mid one"]):
        ref, got, shape = _torch_and_onnx_logits(student_dir, out / "model.onnx", tokenizer, texts)
        shapes.add(tuple(shape))
        assert got.shape == ref.shape == (len(texts), 2)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert len({s[1] for s in shapes}) == 2  # two sequence lengths, two batch sizes
    graph_inputs = onnx.load(str(out / "model.onnx")).graph.input
    assert [i.name for i in graph_inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    for i in graph_inputs:
        dims = i.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"]


def test_onnx_int8_is_smaller_and_close(onnx_dir, tmp_path):
    out, fp32 = onnx_dir
    result = quantize_onnx_int8(out, tmp_path / "int8")
    assert result["size_bytes"] < 0.5 * fp32["size_bytes"] and result["fp32_size_bytes"] == fp32["size_bytes"]
    assert result["max_abs_diff"] < 1e-2
    assert {"config.json", "tokenizer.json", "model.onnx"} <= {p.name for p in (tmp_path / "int8").iterdir()}


def test_failed_verification_leaves_nothing(student_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_verify_onnx", lambda *a, **k: 0.5)
    out = tmp_path / "onnx"
    with pytest.raises(DistilError, match="max_abs_tolerance") as err:
        export_onnx(student_dir, out)
    assert "\n" not in str(err.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temp sibling either
    with pytest.raises(DistilError):
        export_all(student_dir, tmp_path / "all")
    assert list(tmp_path.iterdir()) == []


def test_existing_out_dir_and_bad_model_dir_are_refused(student_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(DistilError, match="overwrite=True"):
        export_onnx(student_dir, tmp_path / "taken")
    with pytest.raises(DistilError, match="does not exist"):
        export_onnx(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "lstm").mkdir()
    (tmp_path / "lstm" / "config.json").write_text('{"distil_model": "lstm"}')
    with pytest.raises(DistilError, match="LSTM"):
        export_onnx(tmp_path / "lstm", tmp_path / "o")


def test_torch_int8_replaces_linears_and_stays_close(tiny_bert, tokenizer):
    enc = tokenizer(["a first text", "and a second, longer one"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = tiny_bert(**enc).logits
    q = quantize_torch_int8(tiny_bert)
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    with torch.inference_mode():
        got = q(**enc).logits
    assert (got - ref).abs().max() < 1e-2


def test_model_card_holds_the_numbers(tmp_path):
    report = {
        "model_name": "tiny-student",
        "teacher": "sentence-transformers/all-MiniLM-L6-v2",
        "recipe": "kd",
        "kd_temperature": 2.5,
        "alpha": 0.3,
        "metrics": {"accuracy": 0.9123},
        "teacher_metrics": {"accuracy": 0.9345},
        "params": 1234567,
        "size_bytes": 4153931,
        "latency_ms": {"p50": 1.25, "p95": 2.75},
        "variants": {"onnx-int8": {"accuracy": 0.9087, "size_bytes": 1184203}},
        "seed": 17,
    }
    path = export.write_model_card(tmp_path, report)
    text = path.read_text()
    assert text == render_model_card(report) and path.name == "README.md"
    for expected in ("tiny-student", "all-MiniLM-L6-v2", "kd", "2.5", "0.3", "0.9123", "0.9345", "1,234,567",
                     "4,153,931", "1.25", "2.75", "0.9087", "1,184,203", "seed", "17", "base_model:"):  # fmt: skip
        assert expected in text, expected


def test_export_all_writes_every_variant_and_a_card(student_dir, tmp_path):
    seen = []

    def evaluate(predictor):
        seen.append(predictor.variant)
        return {"accuracy": 0.5}

    out = tmp_path / "deploy"
    result = export_all(student_dir, out, report={"teacher": "t", "recipe": "kd"}, evaluate=evaluate)
    assert sorted(seen) == ["onnx", "onnx-int8", "torch", "torch-int8"]
    for variant in ("hf", "onnx", "onnx-int8"):
        assert result[variant]["dir"] == str(out / variant) and (out / variant).is_dir()
    assert result["onnx"]["path"] == str(out / "onnx" / "model.onnx")
    assert (out / "hf" / "model.safetensors").is_file() and (out / "export.json").is_file()
    card = (out / "hf" / "README.md").read_text()
    assert "onnx-int8" in card and f"{result['hf']['params']:,}" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
