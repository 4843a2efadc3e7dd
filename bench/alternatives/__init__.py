"""Alternative servers for the same ONNX model, compared with ours by ``bench.service``."""
