"""Offline distillation: data sources, teacher pseudo-labels, student training, evaluation and ONNX export."""
