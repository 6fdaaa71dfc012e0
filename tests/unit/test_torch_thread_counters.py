"""The torch thread's counters (``Lanes.torch_busy_s``, ``torch_queued_s``) that
bench/serverless_bench.py reads to tell jobs waiting for one another from a slow GPU."""

from __future__ import annotations

import threading
import time

from resident.lanes import Lanes


def test_busy_and_queued_seconds_grow_with_items_run_and_waited_for():
    lanes = Lanes()
    try:
        release = threading.Event()
        results: list[int] = []

        def blocking() -> int:
            release.wait(5)
            return 1

        first = threading.Thread(target=lambda: results.append(lanes.on_torch_thread(blocking)))
        first.start()
        time.sleep(0.1)  # the first item is running; the second one queues behind it
        second = threading.Thread(target=lambda: results.append(lanes.on_torch_thread(lambda: 2)))
        second.start()
        time.sleep(0.3)
        release.set()
        first.join(5)
        second.join(5)
        assert sorted(results) == [1, 2]
        assert lanes.torch_busy_s >= 0.35  # the first item ran ~0.4 s
        assert lanes.torch_queued_s >= 0.25  # the second waited ~0.3 s for it
    finally:
        lanes.torch_thread.shutdown(wait=True)


def test_an_item_that_raises_is_still_counted_and_its_error_reaches_the_caller():
    lanes = Lanes()
    try:
        def failing() -> None:
            time.sleep(0.05)
            raise ValueError("bad audio")

        try:
            lanes.on_torch_thread(failing)
        except ValueError as exc:
            assert str(exc) == "bad audio"
        else:
            raise AssertionError("the error did not reach the caller")
        assert lanes.torch_busy_s >= 0.04
    finally:
        lanes.torch_thread.shutdown(wait=True)
