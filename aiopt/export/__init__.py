"""Export: PyTorch -> ONNX (validated), ONNX -> TensorRT engines, Triton model repositories."""
