"""The export step: PyTorch checkpoints -> checked ONNX files -> the model repository.

``python -m export`` (see ``export/README.md``); the one arrow to the service is the
repository format of ``polynl_core.repository``.
"""
