"""Model compression: quantization, pruning, distillation, ONNX export."""
