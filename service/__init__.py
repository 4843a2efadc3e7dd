"""The HTTP service: FastAPI routes, dynamic batching, ONNX Runtime sessions, workers.

No torch here (``tests/unit/test_core_boundary.py``). Images, preprocessing, the pyramid,
post-processing and the repository format come from :mod:`polynl_core`; ``service/README.md``
draws the data path through the modules of this package.
"""

__version__ = "0.1.0"
