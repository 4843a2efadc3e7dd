"""RetinaFace with a Poly-NL context block: the project's face detector.

One small module per piece, shared by training, export, evaluation and tests
(torchvision-detection style):

- ``priors``: anchor boxes, generated from the input size (also inside the ONNX graph);
- ``codec``: box and landmark encode/decode against the priors (variances 0.1 / 0.2);
- ``backbones``, ``necks``, ``heads``: MobileNet-0.25 / ResNet-50, FPN + SSH, score/box/landmark heads;
- ``net``: :class:`RetinaFaceConfig` and :class:`RetinaFace` (raw head outputs);
- ``inference``: :class:`DecodedRetinaFace` (boxes, scores, landmarks in input pixels; what is exported);
- ``loss``: prior matching and the multi-task loss with hard negative mining;
- ``data``, ``synth``: training data (WIDER FACE label.txt, JSON/CSV box lists, synthetic composites);
- ``train``: ``python -m models.train detector``;
- ``import_weights``: loading the widely used public PyTorch RetinaFace key layout.
"""
