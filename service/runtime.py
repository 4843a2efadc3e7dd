"""ONNX Runtime sessions: the inference step of the data path.

Creates one session per model with the execution providers asked for in the settings,
records the providers the session really got (a CUDA request on a host without a GPU
silently becomes CPU), applies ONNX Runtime's CUDA tuning options (conv algorithm search,
arena growth) or the CPU intra-op thread count, and runs a batch, with I/O binding on CUDA
so outputs land in host memory in one copy. Knows nothing about images or HTTP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.settings import Settings

logger = logging.getLogger("service.runtime")

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def provider_options(name: str, settings: Settings) -> dict[str, Any]:
    """Options per ORT's performance guidance; providers not listed get none."""
    if name == "CUDAExecutionProvider":
        return {
            "device_id": settings.cuda_device_id,
            # EXHAUSTIVE benchmarks every conv for every new shape (each batch size and
            # bucket): slow first calls; HEURISTIC is the default here, tunable.
            "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
            # Grow the arena by what is asked, not to the next power of two: bounded memory
            # with variable batch sizes.
            "arena_extend_strategy": settings.cuda_arena_extend_strategy,
            "do_copy_in_default_stream": True,
            "cudnn_conv_use_max_workspace": "1",
        }
    return {}


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = settings.session_threads
    # Batches run one at a time per model; parallelism is inside each op.
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a failed CUDA load is reported by us
    if not settings.intra_op_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def requested_providers(settings: Settings) -> list[str]:
    """The settings' providers that this onnxruntime build has, in order; CPU as last resort."""
    available = set(ort.get_available_providers())
    chosen = [p for p in settings.providers if p in available]
    missing = [p for p in settings.providers if p not in available]
    if missing:
        logger.info("providers not in this onnxruntime build, skipped: %s", ", ".join(missing))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


@dataclass
class ModelSession:
    """One ONNX model ready to run batches."""

    name: str
    path: Path
    session: ort.InferenceSession
    input_name: str
    input_dtype: Any
    output_names: list[str]
    providers: list[str]  # what the session actually runs on, in priority order
    io_binding: bool
    input_shape: list[Any] = field(default_factory=list)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(B, ...) input -> {output name: (B, ...) array} in host memory."""
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        batch = np.ascontiguousarray(batch)
        if self.io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            for name in self.output_names:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(self.output_names, {self.input_name: batch})
        return {name: np.asarray(value) for name, value in zip(self.output_names, values, strict=True)}


def create_session(name: str, path: Path, settings: Settings) -> ModelSession:
    """Open ``path`` with the settings' providers and report what it really got."""
    wanted = requested_providers(settings)
    session = ort.InferenceSession(
        str(path),
        sess_options=session_options(settings),
        providers=[(p, provider_options(p, settings)) for p in wanted],
    )
    actual = list(session.get_providers())
    if actual[:1] != wanted[:1]:
        logger.warning("model %s asked for %s but runs on %s", name, wanted[0], actual[0])
    model_input = session.get_inputs()[0]
    io_binding = settings.io_binding if settings.io_binding is not None else "CUDAExecutionProvider" in actual
    logger.info(
        "model %s: %s on %s (io_binding=%s, input %s %s)",
        name,
        path.name,
        ", ".join(actual),
        io_binding,
        model_input.name,
        model_input.shape,
    )
    return ModelSession(
        name=name,
        path=path,
        session=session,
        input_name=model_input.name,
        input_dtype=_NUMPY_TYPES.get(model_input.type, np.float32),
        output_names=[o.name for o in session.get_outputs()],
        providers=actual,
        io_binding=io_binding,
        input_shape=list(model_input.shape),
    )
