"""The Open Inference Protocol (KServe v2, as NVIDIA Triton speaks it) in front of the same
pipelines and batchers as ``/classify`` and ``/detect-faces``.

Modules, in the order a request meets them:

- :mod:`service.oip.rest`: ``/v2/...`` over HTTP (FastAPI router on the service's port):
  JSON tensors and the binary tensor data extension -> :class:`~service.oip.tensors.Tensor`.
- :mod:`service.oip.grpc_server`: ``inference.GRPCInferenceService`` (grpc.aio, same process
  and event loop, its own port): protobuf tensors -> :class:`~service.oip.tensors.Tensor`.
- :mod:`service.oip.tensors`: the protocol's datatypes, tensors and BYTES serialisation
  (no HTTP, no gRPC).
- :mod:`service.oip.models`: a served model version as the protocol sees it: metadata (both
  ways in, each optional) and ``infer``: tensor in -> raw outputs, or encoded images in ->
  answers as tensors, both through the model's one batcher.
- :mod:`service.oip.errors`: service errors -> the protocol's HTTP statuses and gRPC codes.
"""
