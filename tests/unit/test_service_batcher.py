"""The batcher on its own: real asyncio, real threads, a NumPy function as the model."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import Batcher
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, ServiceOverloaded


class Model:
    """Doubles its input; records every batch; optionally slow or failing."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[tuple[int, ...]] = []
        self.started = threading.Event()

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.started.set()
        self.batches.append(batch.shape)
        time.sleep(self.delay_s)
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            raise RuntimeError("boom")
        return {"out": batch * 2, "sum": batch.reshape(len(batch), -1).sum(axis=1)}


def make(model: Model, **kwargs: float) -> Batcher:
    options = {"max_batch_size": 4, "max_wait_s": 0.05, "queue_size": 64, **kwargs}
    return Batcher("test", model, **options)  # type: ignore[arg-type]


def far() -> float:
    return asyncio.get_running_loop().time() + 30.0


def test_concurrent_requests_share_one_call_and_each_gets_its_own_slice() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = make(model)
        batcher.start()
        arrays = [np.full((2, 3), i, dtype=np.float32) for i in range(4)]
        results = await asyncio.gather(*(batcher.submit(a, far()) for a in arrays))
        await batcher.stop()
        assert model.batches == [(4, 2, 3)]
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result.outputs["out"], arrays[i] * 2)
            assert result.outputs["sum"] == pytest.approx(i * 6)
            assert result.timing.batch_size == 4

    asyncio.run(scenario())


def test_batches_never_exceed_max_batch_size() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = make(model, max_batch_size=3)
        batcher.start()
        await asyncio.gather(*(batcher.submit(np.zeros(2, np.float32), far()) for _ in range(7)))
        await batcher.stop()
        assert sorted(shape[0] for shape in model.batches) == [1, 3, 3]

    asyncio.run(scenario())


def test_different_shapes_go_to_different_batches() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = make(model)
        batcher.start()
        small = [np.zeros((3, 4, 4), np.float32) for _ in range(2)]
        large = [np.ones((3, 8, 8), np.float32) for _ in range(2)]
        await asyncio.gather(*(batcher.submit(a, far()) for a in small + large))
        await batcher.stop()
        assert sorted(model.batches) == [(2, 3, 4, 4), (2, 3, 8, 8)]

    asyncio.run(scenario())


def test_a_request_after_a_quiet_spell_is_sent_at_once_and_one_close_behind_waits() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = make(model, max_wait_s=0.2)
        batcher.start()
        started = time.perf_counter()
        first = await batcher.submit(np.zeros(1, np.float32), far())
        alone = time.perf_counter() - started
        # Right behind it: traffic is flowing, so it waits (up to max_wait) for company.
        started = time.perf_counter()
        second = await batcher.submit(np.zeros(1, np.float32), far())
        held = time.perf_counter() - started
        await batcher.stop()
        assert first.timing.batch_size == second.timing.batch_size == 1
        assert alone < 0.15 and first.timing.queue_ms < 150
        assert 0.18 <= held < 1.0

    asyncio.run(scenario())


def test_requests_close_together_after_a_quiet_spell_still_share_a_batch() -> None:
    async def scenario() -> None:
        model = Model(delay_s=0.1)
        batcher = make(model, max_wait_s=0.05)
        batcher.start()
        lone = asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), far()))
        await asyncio.sleep(0.01)  # the lone one is in inference now; these two arrive together
        pair = await asyncio.gather(*(batcher.submit(np.ones(1, np.float32), far()) for _ in range(2)))
        assert (await lone).timing.batch_size == 1
        assert [r.timing.batch_size for r in pair] == [2, 2]
        await batcher.stop()

    asyncio.run(scenario())


def test_full_queue_raises_overloaded_at_once_with_retry_after() -> None:
    async def scenario() -> None:
        model = Model(delay_s=0.3)
        batcher = make(model, max_batch_size=1, queue_size=2, max_wait_s=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), far()))
        await asyncio.to_thread(model.started.wait, 5)  # the first is in inference now
        queued = [asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), far())) for _ in range(2)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(ServiceOverloaded) as raised:
            await batcher.submit(np.zeros(1, np.float32), far())
        assert time.perf_counter() - started < 0.1
        assert raised.value.headers["Retry-After"] == "1"
        await asyncio.gather(first, *queued)
        await batcher.stop()

    asyncio.run(scenario())


def test_request_past_its_deadline_is_answered_and_never_inferred() -> None:
    async def scenario() -> None:
        model = Model(delay_s=0.3)
        batcher = make(model, max_batch_size=1, max_wait_s=0.0)
        batcher.start()
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), far()))
        await asyncio.to_thread(model.started.wait, 5)
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(np.ones(1, np.float32), loop.time() + 0.05)
        assert time.perf_counter() - started < 0.25  # answered at its deadline, not after the batch
        await first
        await batcher.stop()
        assert len(model.batches) == 1
        assert batcher.depth == 0

    asyncio.run(scenario())


def test_cancelled_request_leaves_the_queue_without_inference() -> None:
    async def scenario() -> None:
        model = Model(delay_s=0.2)
        batcher = make(model, max_batch_size=1, max_wait_s=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), far()))
        await asyncio.to_thread(model.started.wait, 5)
        gone = asyncio.ensure_future(batcher.submit(np.ones(1, np.float32), far()))
        await asyncio.sleep(0.01)
        assert batcher.depth == 1
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert batcher.depth == 0
        await first
        await batcher.stop()
        assert len(model.batches) == 1

    asyncio.run(scenario())


def test_failed_inference_fails_only_its_batch() -> None:
    async def scenario() -> None:
        model = Model(fail_on=1)
        batcher = make(model, max_batch_size=2, max_wait_s=0.02)
        batcher.start()
        failed = await asyncio.gather(
            *(batcher.submit(np.zeros(1, np.float32), far()) for _ in range(2)), return_exceptions=True
        )
        assert all(isinstance(r, InferenceFailed) for r in failed)
        ok = await batcher.submit(np.ones(1, np.float32), far())
        np.testing.assert_array_equal(ok.outputs["out"], [2.0])
        await batcher.stop()

    asyncio.run(scenario())


def test_stop_finishes_queued_requests_then_refuses_new_ones() -> None:
    async def scenario() -> None:
        model = Model(delay_s=0.05)
        batcher = make(model, max_batch_size=2, max_wait_s=0.0)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), far())) for _ in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        results = await asyncio.gather(*pending)
        assert len(results) == 5
        with pytest.raises(NotReady):
            await batcher.submit(np.zeros(1, np.float32), far())

    asyncio.run(scenario())


def test_a_group_of_shapes_runs_in_one_run_with_what_waits_in_those_shapes() -> None:
    async def scenario() -> None:
        model = Model(delay_s=0.02)
        batcher = make(model, max_wait_s=0.05)
        batcher.start()
        levels = [np.ones((3, size, size), np.float32) for size in (8, 4, 2)]
        busy = asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), far()))
        await asyncio.sleep(0.005)  # in inference now: what follows queues
        # Another image's level of the smallest shape is waiting already: it joins the run.
        other = asyncio.ensure_future(batcher.submit(np.zeros((3, 2, 2), np.float32), far()))
        group = await batcher.submit_group(levels, far())
        await asyncio.gather(busy, other)
        await batcher.stop()
        assert model.batches[0] == (1, 1)
        assert sorted(model.batches[1:]) == [(1, 3, 4, 4), (1, 3, 8, 8), (2, 3, 2, 2)]
        for array, result in zip(levels, group, strict=True):
            np.testing.assert_array_equal(result.outputs["out"], array * 2)
        # One run: the levels did not queue behind each other's inference.
        assert len({round(r.timing.queue_ms, 6) for r in group}) == 1
        assert all(r.timing.inference_ms >= 20 for r in group)

    asyncio.run(scenario())


def test_a_group_fails_together_and_leaves_nothing_queued() -> None:
    async def scenario() -> None:
        model = Model(fail_on=2)  # the group's second batch fails
        batcher = make(model, max_wait_s=0.0)
        batcher.start()
        with pytest.raises(InferenceFailed):
            await batcher.submit_group([np.ones((2,), np.float32), np.ones((3,), np.float32)], far())
        assert batcher.depth == 0
        loop = asyncio.get_running_loop()
        slow = make(Model(delay_s=0.3), max_batch_size=1, max_wait_s=0.0)
        slow.start()
        first = asyncio.ensure_future(slow.submit(np.zeros(1, np.float32), far()))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            await slow.submit_group(
                [np.ones((2,), np.float32), np.ones((3,), np.float32)], loop.time() + 0.05
            )
        assert slow.depth == 0
        await first
        await slow.stop()
        await batcher.stop()

    asyncio.run(scenario())
