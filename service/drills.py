"""Fault drills: a slow or failing model without a slow or broken model.

Not part of the data path. ``service.app`` wraps a session's predict function with these only
when ``POLYNL_INFERENCE_DELAY_MS`` or ``POLYNL_FAULT_EVERY_N_BATCHES`` asks for it (load tests,
fault drills and the reliability tests); in normal operation nothing here runs.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from service.batching import PredictFn
from service.settings import Settings


class InjectedFault(RuntimeError):
    """The failure ``fault_every_n_batches`` injects (never raised in normal operation)."""


def delayed(predict: PredictFn, delay_s: float) -> PredictFn:
    """Every inference call takes ``delay_s`` longer."""

    def slow_predict(batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(delay_s)
        return predict(batch)

    return slow_predict


def faulty(predict: PredictFn, every: int) -> PredictFn:
    """Every ``every``-th inference call raises :class:`InjectedFault`."""
    calls = itertools.count(1)

    def faulty_predict(batch: np.ndarray) -> dict[str, np.ndarray]:
        if next(calls) % every == 0:
            raise InjectedFault(f"injected fault (every {every} batches)")
        return predict(batch)

    return faulty_predict


def with_drills(predict: PredictFn, settings: Settings) -> PredictFn:
    """``predict`` as the drill settings ask (unchanged when none is set)."""
    if settings.inference_delay_ms > 0:
        predict = delayed(predict, settings.inference_delay_ms / 1000.0)
    if settings.fault_every_n_batches > 0:
        predict = faulty(predict, settings.fault_every_n_batches)
    return predict
