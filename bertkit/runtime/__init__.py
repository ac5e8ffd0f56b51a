"""Runtimes other than PyTorch that run an exported bertkit model: onnx.py (onnxruntime)."""
