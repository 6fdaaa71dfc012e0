"""The cross-job batcher's rules, with the model calls replaced by recorders: which waiting
calls share a model call, how many windows one call takes, and that a failure stays with
its job. (Real weights: tests/integration/test_concurrent_jobs.py.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from stages import asr
from resident import batching

CALL = asr.GenerateCall(prompt=(1, 2), suppress=(3,), temperature=0.0, beam_size=5, patience=1.0, best_of=1,
                        length_penalty=1.0)


class _Recorder:
    """Stands in for ``asr.generate``: records each call's rows and length cap; row values
    carry the caller, so results can be checked to come back to the right caller."""

    def __init__(self, release: threading.Event, fail_when=lambda rows: False) -> None:
        self.calls: list[tuple[list[float], int]] = []
        self.release, self.fail_when = release, fail_when
        self.busy = threading.Event()  # set once the first call holds the "model"

    def __call__(self, model, features, call, max_length):
        self.busy.set()
        self.release.wait(5)
        rows = [float(row[0, 0]) for row in features]
        self.calls.append((rows, max_length))
        if self.fail_when(rows):
            raise RuntimeError("CUDA failed: out of memory")
        return [f"result-{row:g}" for row in rows]


def _rows(*values: float) -> np.ndarray:
    return np.stack([np.full((2, 3), v, dtype=np.float32) for v in values])


def _run_together(batcher, model, submissions, recorder) -> list:
    """Submit each (features, call, max_length, max_rows[, model]) from its own thread while the first
    one holds the model, so the rest wait together; returns each caller's answer or error."""
    answers: list = [None] * len(submissions)

    def submit(i: int) -> None:
        features, call, max_length, max_rows, *own_model = submissions[i]
        try:
            answers[i] = batcher.generate(own_model[0] if own_model else model, features, call, max_length, max_rows)
        except Exception as exc:
            answers[i] = exc

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    assert recorder.busy.wait(5)  # the first call holds the model
    rest = [threading.Thread(target=submit, args=(i,)) for i in range(1, len(submissions))]
    for thread in rest:
        thread.start()
    while batcher.waiting_calls < len(rest):
        pass
    return answers, [first, *rest]


@pytest.fixture
def recorder(monkeypatch):
    release = threading.Event()
    recorder = _Recorder(release)
    monkeypatch.setattr(asr, "generate", recorder)
    return recorder


def _finish(recorder, threads) -> None:
    recorder.release.set()
    for thread in threads:
        thread.join(10)


def test_waiting_calls_with_equal_options_share_one_call(recorder):
    batcher, model = batching.CrossJobBatcher(), object()
    answers, threads = _run_together(batcher, model, [
        (_rows(0), CALL, 100, 16), (_rows(1, 2), CALL, 300, 16), (_rows(3), CALL, 200, 16),
    ], recorder)
    _finish(recorder, threads)
    assert recorder.calls == [([0.0], 100), ([1.0, 2.0, 3.0], 300)]  # the longest cap wins
    assert answers == [["result-0"], ["result-1", "result-2"], ["result-3"]]
    assert batcher.stats.merged_calls == 1 and batcher.stats.most_callers == 2
    batcher.close()


def test_options_that_change_decoding_split_calls(recorder):
    batcher, model = batching.CrossJobBatcher(), object()
    beam1 = asr.GenerateCall(**{**CALL.__dict__, "beam_size": 1})
    prompted = asr.GenerateCall(**{**CALL.__dict__, "prompt": (1, 2, 9)})
    answers, threads = _run_together(batcher, model, [
        (_rows(0), CALL, 10, 16), (_rows(1), beam1, 10, 16), (_rows(2), prompted, 10, 16), (_rows(3), CALL, 10, 16),
        (_rows(4), beam1, 10, 16),
    ], recorder)
    _finish(recorder, threads)
    assert sorted(rows for rows, _ in recorder.calls) == [[0.0], [1.0, 4.0], [2.0], [3.0]]
    assert answers[4] == ["result-4"]
    batcher.close()


def test_different_models_never_share_a_call(recorder):
    batcher, model, other_model = batching.CrossJobBatcher(), object(), object()
    answers, threads = _run_together(batcher, model, [
        (_rows(0), CALL, 10, 16), (_rows(1), CALL, 10, 16, other_model), (_rows(2), CALL, 10, 16),
        (_rows(3), CALL, 10, 16, other_model),
    ], recorder)
    _finish(recorder, threads)
    assert [rows for rows, _ in recorder.calls] == [[0.0], [1.0, 3.0], [2.0]]
    batcher.close()


def test_a_merged_call_takes_at_most_the_oldest_callers_rows(recorder):
    batcher, model = batching.CrossJobBatcher(), object()
    answers, threads = _run_together(batcher, model, [
        (_rows(0), CALL, 10, 16), (_rows(1, 2), CALL, 10, 3), (_rows(3, 4), CALL, 10, 16), (_rows(5), CALL, 10, 16),
    ], recorder)
    _finish(recorder, threads)
    # Waiting: [1,2] (cap 3), [3,4], [5]: [1,2] + [5] fit 3 rows; [3,4] waits for the next call.
    assert [rows for rows, _ in recorder.calls] == [[0.0], [1.0, 2.0, 5.0], [3.0, 4.0]]
    assert answers[2] == ["result-3", "result-4"]
    batcher.close()


def test_a_failing_merged_call_fails_only_its_own_job(monkeypatch):
    release = threading.Event()
    recorder = _Recorder(release, fail_when=lambda rows: 2.0 in rows)
    monkeypatch.setattr(asr, "generate", recorder)
    batcher, model = batching.CrossJobBatcher(), object()
    answers, threads = _run_together(batcher, model, [(_rows(0), CALL, 10, 16), (_rows(1), CALL, 10, 16),
                                                      (_rows(2), CALL, 10, 16), (_rows(3), CALL, 10, 16)], recorder)
    _finish(recorder, threads)
    assert answers[0] == ["result-0"] and answers[1] == ["result-1"] and answers[3] == ["result-3"]
    assert isinstance(answers[2], RuntimeError) and "out of memory" in str(answers[2])
    # The merged call [1, 2, 3] failed, then each ran alone.
    assert [rows for rows, _ in recorder.calls] == [[0.0], [1.0, 2.0, 3.0], [1.0], [2.0], [3.0]]
    batcher.close()


def test_language_detection_calls_are_merged_apart_from_generate(monkeypatch, recorder):
    detected: list[list[float]] = []

    def detect(model, features):
        detected.append([float(row[0, 0]) for row in features])
        return [[("<|ru|>", 0.9)] for _ in features]

    monkeypatch.setattr(asr, "detect", detect)
    batcher, model = batching.CrossJobBatcher(), object()
    results: list = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.detect(model, _rows(i)))) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(v for call in detected for v in call) == [0.0, 1.0, 2.0]
    assert results == [[[("<|ru|>", 0.9)]]] * 3
    assert not recorder.calls
    batcher.close()


def test_a_closed_batcher_refuses_calls():
    batcher = batching.CrossJobBatcher()
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.detect(object(), _rows(0))


def test_held_batcher_starts_no_call_until_released_then_merges(recorder):
    recorder.release.set()  # the "model" answers at once
    batcher, model = batching.CrossJobBatcher(), object()
    answers: list = [None] * 3

    def submit(i: int) -> None:
        answers[i] = batcher.generate(model, _rows(i), CALL, 10, 16)

    with batcher.held():
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        while batcher.waiting_calls < 3:
            pass
        assert recorder.calls == [] and not recorder.busy.is_set()
    for thread in threads:
        thread.join(10)
    # One merged call; the threads may have queued in any order.
    assert [sorted(rows) for rows, _ in recorder.calls] == [[0.0, 1.0, 2.0]]
    assert answers == [["result-0"], ["result-1"], ["result-2"]]
    assert batcher.waiting_calls == 0
    batcher.close()


class _Overlaps:
    """Stands in for ``asr.generate`` on a model with replicas: each call holds its "replica"
    until released, and the most calls seen running at once are counted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.most_running = 0
        self.release = threading.Event()
        self.calls: list[list[float]] = []

    def __call__(self, model, features, call, max_length):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.release.wait(5)
        with self.lock:
            self.running -= 1
            self.calls.append([float(row[0, 0]) for row in features])
        return [f"result-{float(row[0, 0]):g}" for row in features]


def _overlapping_calls(monkeypatch, parallel_calls: int, callers: int):
    """``callers`` threads each send one window of a different decoding option (so no two can
    merge) to a batcher of ``parallel_calls``; returns (most calls at once, answers, calls)."""
    overlaps = _Overlaps()
    monkeypatch.setattr(asr, "generate", overlaps)
    batcher, model = batching.CrossJobBatcher(parallel_calls=parallel_calls), object()
    answers: list = [None] * callers

    def submit(i: int) -> None:
        answers[i] = batcher.generate(model, _rows(i), CALL.__class__(**{**CALL.__dict__, "temperature": i / 10}), 10, 16)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    # Every call is either running or queued before any is released.
    while overlaps.running + batcher.waiting_calls < callers:
        pass
    overlaps.release.set()
    for thread in threads:
        thread.join(10)
    batcher.close()
    return overlaps.most_running, answers, overlaps.calls


def test_one_call_at_a_time_without_replicas(monkeypatch):
    most, answers, calls = _overlapping_calls(monkeypatch, parallel_calls=1, callers=3)
    assert most == 1
    assert answers == [["result-0"], ["result-1"], ["result-2"]]
    assert sorted(calls) == [[0.0], [1.0], [2.0]]


def test_with_two_replicas_two_calls_run_at_once_and_each_caller_gets_its_rows(monkeypatch):
    most, answers, calls = _overlapping_calls(monkeypatch, parallel_calls=2, callers=4)
    assert most == 2
    assert answers == [["result-0"], ["result-1"], ["result-2"], ["result-3"]]
    assert sorted(calls) == [[0.0], [1.0], [2.0], [3.0]]


def test_replicas_share_the_decoder_cache_budget():
    # large-v3's decoder (32 layers x 1280, 234 MiB a window) at 4096 MiB: 17 windows for one
    # call, 8 each for two.
    one = asr.windows_in_flight(32, 1280, 4096)
    two = asr.windows_in_flight(32, 1280, 4096 / 2)
    assert (one, two) == (17, 8)


def test_replica_defaults():
    from resident import lanes

    assert lanes.default_whisper_replicas("cpu", 8) == 1
    assert lanes.default_whisper_replicas("cuda", 2) == 1
    assert lanes.default_whisper_replicas("cuda", 8) == 2


def _timed_submissions(batcher, model, delays: list[float]) -> tuple[list, list[threading.Thread]]:
    """Each caller sends one window of the shared options after its delay (seconds)."""
    answers: list = [None] * len(delays)

    def submit(i: int) -> None:
        time.sleep(delays[i])
        answers[i] = batcher.generate(model, _rows(i), CALL, 10, 16)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(delays))]
    for thread in threads:
        thread.start()
    return answers, threads


def test_fill_wait_lets_a_call_wait_for_the_other_jobs_in_flight(recorder):
    recorder.release.set()
    batcher, model = batching.CrossJobBatcher(), object()
    batcher.configure(1, fill_wait_s=2.0, jobs_in_flight=lambda: 3)
    answers, threads = _timed_submissions(batcher, model, [0.0, 0.1, 0.2])
    for thread in threads:
        thread.join(10)
    # One call: the first window waited for the two that came within the wait.
    assert [sorted(rows) for rows, _ in recorder.calls] == [[0.0, 1.0, 2.0]]
    assert answers == [["result-0"], ["result-1"], ["result-2"]]
    batcher.close()


def test_fill_wait_ends_at_its_limit_and_a_lone_job_never_waits(recorder):
    recorder.release.set()
    batcher, model = batching.CrossJobBatcher(), object()
    in_flight = [3]
    batcher.configure(1, fill_wait_s=1.0, jobs_in_flight=lambda: in_flight[0])
    started = time.monotonic()
    assert batcher.generate(model, _rows(7), CALL, 10, 16) == ["result-7"]
    waited = time.monotonic() - started
    assert 0.95 <= waited < 10  # nobody else came: the call ran once the wait was over
    in_flight[0] = 1
    started = time.monotonic()
    assert batcher.generate(model, _rows(8), CALL, 10, 16) == ["result-8"]
    assert time.monotonic() - started < 0.5
    batcher.close()


def test_without_fill_wait_a_call_starts_at_once(recorder):
    recorder.release.set()
    batcher, model = batching.CrossJobBatcher(), object()
    batcher.configure(1, fill_wait_s=0.0, jobs_in_flight=lambda: 8)
    started = time.monotonic()
    assert batcher.generate(model, _rows(1), CALL, 10, 16) == ["result-1"]
    assert time.monotonic() - started < 0.5
    batcher.close()
