"""The torch-free core shared by the service, the export, the evaluation and the benchmarks.

Depends on numpy, Pillow and pydantic only (``tests/unit/test_core_boundary.py`` keeps it so).
The data path it owns, in order::

    images      bytes -> checked, oriented RGB image (one decoder; errors carry a code)
    preprocess  RGB image -> input tensor (classifier crop, detector letterbox)
    buckets     the detector's size buckets: default, HxW parsing, choice per image
    pyramid     the detector's extra passes on smaller copies, and their merge
    postprocess outputs -> answers (softmax, top-k, NMS, box mapping)
    repository  the model repository contract (config.json, versions, checksums, batching)
    tasks       the one Task vocabulary and each task's output names
"""
