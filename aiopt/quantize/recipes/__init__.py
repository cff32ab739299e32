"""One module per runtime that quantizes: ONNX Runtime, OpenVINO (NNCF), PyTorch, weight-only INT8."""
