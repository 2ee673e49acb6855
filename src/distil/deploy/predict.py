"""`distil predict`: classify texts with any saved model or exported variant (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from distil.deploy.serving import load_student


def predict_texts(model_dir: str, texts: list[str], batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Label, score and per-class probabilities of each text, from a saved model directory."""
    return load_student(model_dir).predict(texts, batch_size=batch_size, max_length=max_length)
