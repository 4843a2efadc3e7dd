"""Per-request timing summary shared by the inference routes."""

from __future__ import annotations

import time
from collections.abc import Sequence

from service.pipelines import ImageOutcome
from service.schemas import Timing


def timing_of(outcomes: Sequence[ImageOutcome], started: float) -> Timing:
    return Timing(
        decode_ms=round(sum(o.prepared.decode_ms for o in outcomes), 3),
        queue_ms=round(max((o.result.timing.queue_ms for o in outcomes), default=0.0), 3),
        inference_ms=round(max((o.result.timing.inference_ms for o in outcomes), default=0.0), 3),
        total_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )
