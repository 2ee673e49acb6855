"""`distil predict`: classify texts with any saved model or exported variant (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from distil.deploy.serving import load_student


def predict_texts(model_dir: str, texts: list, batch_size: int = 32, max_length: int | None = None) -> list[dict]:
    """Each input's answer (label, entities, or a QA span: `Predictor.predict`), from a saved model directory."""
    return load_student(model_dir).predict(texts, batch_size=batch_size, max_length=max_length)
