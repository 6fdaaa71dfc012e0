"""The cross-job batcher's rules, with the model calls replaced by recorders: which waiting
calls share a model call, how many windows one call takes, and that a failure stays with
its job. (Real weights: tests/integration/test_concurrent_jobs.py.)"""

from __future__ import annotations

import threading

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
