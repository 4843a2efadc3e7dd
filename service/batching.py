"""Dynamic batching: many requests' arrays -> one ONNX Runtime call -> one slice each.

The middle of the data path, between preprocessing and inference. It knows nothing about
images or HTTP: a request submits one array (already preprocessed) and gets back its own
slice of every model output. One :class:`Batcher` per model:

- a bounded queue (counted in arrays): when full, :class:`ServiceOverloaded` (503 with
  ``Retry-After``) at once instead of queueing forever;
- batches are keyed by the array's shape, so detection size buckets never mix; the worker
  serves the shape whose oldest request has waited longest, and sends a batch when it holds
  ``max_batch_size`` arrays or ``max_wait_s`` has passed since its oldest request; a request
  that arrives after a quiet spell (nothing submitted in the ``max_wait_s`` before it) is not
  held for company that is not coming: it is sent at once (an idle server answers one
  request without the batching wait; under load requests arrive closer than that and batch);
- a group of arrays of different shapes (one image's detector pyramid levels,
  :meth:`Batcher.submit_group`) runs together: when one member's batch is sent, a batch of
  each other member's shape (members first, then whatever else waits in that shape) is sent
  in the same run, back to back in the inference thread, so the levels never queue behind
  one another;
- each request carries a deadline; at the deadline the caller gets
  :class:`DeadlineExceeded` (504) and its array leaves the queue, so it never costs an
  inference slot; a caller that is cancelled (client disconnected) leaves the queue too;
- one predict call per batch runs in a worker thread, off the event loop; a failing call
  answers only that batch's requests with :class:`InferenceFailed` (500);
- :meth:`Batcher.stop` stops accepting and finishes what is queued (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, ServiceOverloaded

logger = logging.getLogger("service.batching")

# A batch of inputs (B, ...) -> named outputs, each with the batch axis first.
PredictFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class BatchObserver(Protocol):
    """What the batcher reports (``service.metrics`` implements it for Prometheus)."""

    def queue_depth(self, depth: int) -> None: ...

    def batch_done(self, size: int, seconds: float) -> None: ...

    def dropped(self, reason: str) -> None: ...


class BatchTracerHooks(Protocol):
    """Tracing hooks (``service.tracing.BatchTracer``), given only when tracing is on."""

    def capture(self) -> tuple[object, int]: ...

    def batch_done(self, tokens: Sequence[tuple[object, int]], started_ns: int, ended_ns: int) -> None: ...


class _NoObserver:
    def queue_depth(self, depth: int) -> None:
        pass

    def batch_done(self, size: int, seconds: float) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass


@dataclass(frozen=True)
class BatchTiming:
    queue_ms: float  # enqueue -> start of the run holding its batch (a group's batches: one run)
    inference_ms: float  # the whole batch's call
    batch_size: int


@dataclass(frozen=True)
class BatchResult:
    outputs: dict[str, np.ndarray]  # this request's slice of each output (batch axis removed)
    timing: BatchTiming


@dataclass(eq=False)
class _Item:
    array: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued_at: float  # loop.time()
    deadline: float  # loop.time()
    tag: str = ""  # the caller's label for logs (the service passes the request id)
    trace: tuple[object, int] | None = None  # the caller's span context and enqueue time (tracing on)
    group: list[_Item] | None = None  # the items submitted together with this one (submit_group)
    hold: bool = True  # wait up to max_wait_s for a fuller batch (False: arrived after a quiet spell)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def _stack_and_predict(
    predict: PredictFn, batches: Sequence[Sequence[np.ndarray]]
) -> list[tuple[dict[str, np.ndarray], float] | Exception]:
    """Runs in the inference thread: each batch stacked (the copy stays off the event loop
    too) and predicted, one after another; a failing batch gives its exception, not the run's."""
    done: list[tuple[dict[str, np.ndarray], float] | Exception] = []
    for arrays in batches:
        try:
            # A batch of one is a view of its array, no copy (a detector bucket is megabytes).
            batch = arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)
            started = time.perf_counter()
            outputs = predict(batch)
            done.append((outputs, time.perf_counter() - started))
        except Exception as exc:
            done.append(exc)
    return done


class Batcher:
    """One model's queue and batching worker (see the module docstring)."""

    def __init__(
        self,
        name: str,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        queue_size: int,
        retry_after_s: int = 1,
        observer: BatchObserver | None = None,
        tracer: BatchTracerHooks | None = None,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self._predict = predict
        self._observer: BatchObserver = observer or _NoObserver()
        self._tracer = tracer
        self._pending: dict[tuple[int, ...], deque[_Item]] = {}
        self._depth = 0
        self._last_arrival = float("-inf")  # loop.time() of the latest submit
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # One thread: batches of one model run one after another; the next batch fills
        # while the current one runs.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self.batches_run = 0

    # --- the caller's side -------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._depth

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}")

    def check_room(self) -> None:
        """Refuse at once when the queue is full or closing (503): callers check before they
        spend a decode on a request that :meth:`submit` would refuse anyway."""
        if self._closing or self._task is None:
            raise NotReady(f"model {self.name!r} is not accepting requests", self.retry_after_s)
        if self._depth >= self.queue_size:
            self._observer.dropped("overloaded")
            raise ServiceOverloaded(
                f"model {self.name!r} has {self._depth} images queued; retry later", self.retry_after_s
            )

    async def submit(self, array: np.ndarray, deadline: float, tag: str = "") -> BatchResult:
        """Queue one array; wait for its outputs until ``deadline`` (``loop.time()`` based)."""
        (result,) = await self.submit_group([array], deadline, tag)
        return result

    async def submit_group(
        self, arrays: Sequence[np.ndarray], deadline: float, tag: str = ""
    ) -> list[BatchResult]:
        """Queue arrays that belong together (of any shapes: they run in one run, see the
        module docstring); wait for all their outputs until ``deadline``."""
        self.check_room()
        loop = asyncio.get_running_loop()
        now = loop.time()
        hold = now - self._last_arrival <= self.max_wait_s
        self._last_arrival = now
        trace = self._tracer.capture() if self._tracer is not None else None
        items = [
            _Item(
                array=array,
                future=loop.create_future(),
                enqueued_at=now,
                deadline=deadline,
                tag=tag,
                trace=trace,
                hold=hold,
            )
            for array in arrays
        ]
        wake = not self._depth
        for item in items:
            if len(items) > 1:
                item.group = items
            queue = self._pending.setdefault(item.shape, deque())
            queue.append(item)
            wake = wake or len(queue) >= self.max_batch_size
        self._set_depth(self._depth + len(items))
        # Wake the worker only when it has a new decision to make (work after idling, or a
        # full batch); waking it for every arrival costs a wake-up and a timer per request.
        if wake:
            self._wake.set()
        futures = [item.future for item in items]
        waiting: asyncio.Future[Any]
        if len(futures) == 1:
            waiting = futures[0]
        else:
            waiting = asyncio.gather(*futures)
            # Abandoned, the gathering future ends with an error nobody awaits: mark it read.
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            done: Any = await asyncio.wait_for(asyncio.shield(waiting), max(0.0, deadline - loop.time()))
        except TimeoutError:
            self._abandon_all(items)
            self._observer.dropped("deadline")
            raise DeadlineExceeded(f"no answer within the request deadline (model {self.name!r})") from None
        except asyncio.CancelledError:
            self._abandon_all(items)
            self._observer.dropped("cancelled")
            raise
        except BaseException:
            self._abandon_all(items)  # one batch of the group failed: the others are not needed
            raise
        results: list[BatchResult] = [done] if isinstance(done, BatchResult) else list(done)
        return results

    def _abandon_all(self, items: Sequence[_Item]) -> None:
        for item in items:
            self._abandon(item)

    def _abandon(self, item: _Item) -> None:
        """The caller gave up: leave the queue so the item costs no inference slot."""
        if not item.future.done():
            item.future.cancel()
        queue = self._pending.get(item.shape)
        if queue is not None:
            try:
                queue.remove(item)
            except ValueError:
                return  # already taken into a batch
            if not queue:
                del self._pending[item.shape]
            self._set_depth(self._depth - 1)

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._observer.queue_depth(depth)

    # --- the worker's side -------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            if not self._depth:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batches = await self._next_batch()
            if batches:
                await self._run(batches)

    def _oldest_shape(self) -> tuple[int, ...]:
        return min(self._pending, key=lambda shape: self._pending[shape][0].enqueued_at)

    async def _next_batch(self) -> list[list[_Item]]:
        """The next run: a batch of the oldest shape, plus a batch of each shape that holds
        members of the groups in it."""
        loop = asyncio.get_running_loop()
        shape = self._oldest_shape()
        queue = self._pending[shape]
        while queue and queue[0].hold and len(queue) < self.max_batch_size and not self._closing:
            remaining = queue[0].enqueued_at + self.max_wait_s - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        batches = []
        first = self._take(shape, [])
        if first:
            batches.append(first)
        members = [m for item in first if item.group for m in item.group if m not in first]
        for other in dict.fromkeys(m.shape for m in members):
            batch = self._take(other, [m for m in members if m.shape == other])
            if batch:
                batches.append(batch)
        now = loop.time()
        alive = []
        for batch in batches:
            live = []
            for item in batch:
                if item.future.done():
                    continue
                if item.deadline <= now:
                    item.future.set_exception(DeadlineExceeded("the request deadline passed while queued"))
                    self._observer.dropped("deadline")
                    continue
                live.append(item)
            if live:
                alive.append(live)
        return alive

    def _take(self, shape: tuple[int, ...], first: list[_Item]) -> list[_Item]:
        """Up to ``max_batch_size`` queued items of ``shape``: those in ``first`` that are
        still queued, then the oldest others."""
        queue = self._pending.get(shape)
        if not queue:
            return []
        chosen = [item for item in first if item in queue][: self.max_batch_size]
        for item in chosen:
            queue.remove(item)
        while queue and len(chosen) < self.max_batch_size:
            chosen.append(queue.popleft())
        if not queue:
            self._pending.pop(shape, None)
        self._set_depth(self._depth - len(chosen))
        return chosen

    async def _run(self, batches: list[list[_Item]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        started_ns = time.time_ns() if self._tracer is not None else 0
        done = await loop.run_in_executor(
            self._executor, _stack_and_predict, self._predict, [[item.array for item in b] for b in batches]
        )
        for items, outcome in zip(batches, done, strict=True):
            if isinstance(outcome, Exception):
                logger.error(
                    "inference failed for a batch of %d on model %s (requests: %s)",
                    len(items),
                    self.name,
                    ", ".join(item.tag for item in items),
                    exc_info=outcome,
                )
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(
                            InferenceFailed("inference failed for this request's batch")
                        )
                continue
            outputs, seconds = outcome
            self.batches_run += 1
            self._observer.batch_done(len(items), seconds)
            if self._tracer is not None:
                tokens = [item.trace for item in items if item.trace is not None]
                self._tracer.batch_done(tokens, started_ns, time.time_ns())
            logger.debug("model %s: batch of %d in %.1f ms", self.name, len(items), seconds * 1000)
            for index, item in enumerate(items):
                if item.future.done():
                    continue  # gave up while the batch ran; its slice is dropped
                timing = BatchTiming(
                    queue_ms=(started - item.enqueued_at) * 1000.0,
                    inference_ms=seconds * 1000.0,
                    batch_size=len(items),
                )
                item.future.set_result(BatchResult({k: v[index] for k, v in outputs.items()}, timing))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, finish what is queued, then stop the worker."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                logger.error("model %s: %d queued requests not finished at shutdown", self.name, self._depth)
                self._task.cancel()
                for queue in self._pending.values():
                    for item in queue:
                        if not item.future.done():
                            item.future.set_exception(NotReady("the server is shutting down"))
                self._pending.clear()
                self._set_depth(0)
        self._executor.shutdown(wait=True)
