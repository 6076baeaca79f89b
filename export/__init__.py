"""Deployment export: ONNX with the visual prompt folded into the preprocessing; TensorRT engines."""
