"""Deployment: export (HF, ONNX, ONNX int8, checked against PyTorch), serving one interface over every variant,
and `distil predict`."""
