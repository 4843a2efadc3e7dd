"""Per-request timing summary shared by the inference routes (and noted for the access log)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.requests import Request

from service.pipelines import ImageOutcome, Outcome
from service.schemas import Timing


def timing_of(all_outcomes: Sequence[Outcome], started: float) -> Timing:
    outcomes = [o for o in all_outcomes if isinstance(o, ImageOutcome)]
    return Timing(
        decode_ms=round(sum(o.prepared.decode_ms for o in outcomes), 3),
        preprocess_ms=round(sum(o.prepared.preprocess_ms for o in outcomes), 3),
        queue_ms=round(max((r.timing.queue_ms for o in outcomes for r in o.all_results), default=0.0), 3),
        # An image's detector pyramid levels are separate ONNX Runtime calls: they add up.
        inference_ms=round(
            max((sum(r.timing.inference_ms for r in o.all_results) for o in outcomes), default=0.0), 3
        ),
        total_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )


def answered(request: Request, model: str, timing: Timing) -> Timing:
    """Note which model answered and its timing on the request, for the access log line
    (``service.middleware`` writes it once the response starts); returns ``timing``."""
    request.state.polynl_model = model
    request.state.polynl_timing = timing.model_dump()
    return timing
