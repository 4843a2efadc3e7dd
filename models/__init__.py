"""The model side: context blocks, networks, checkpoints, training and evaluation (torch).

Stands on :mod:`polynl_core` for preprocessing, decoding, NMS and the repository format, so
evaluation computes exactly what the service serves; never imports the service or the export.
"""
