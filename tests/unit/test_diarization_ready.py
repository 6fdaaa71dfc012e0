"""``DiarizationReady``: jobs wait for start-up's diarization lane, can stop waiting, and know
how much of their wait the lane caused."""

from __future__ import annotations

import threading
import time

import pytest

from resident.diarization_ready import DiarizationReady


class Stop(Exception):
    pass


def test_a_waiting_job_gets_the_registry_once_the_lane_builds_it():
    ready = DiarizationReady(tasks=2)
    models = object()
    threading.Timer(0.3, ready.set_models, args=(models,)).start()
    started = time.perf_counter()
    assert ready.models() is models
    assert 0.25 < time.perf_counter() - started < 5.0
    assert ready.built() and ready.peek() is models
    assert ready.warmed_at is None  # built, but the lane's tasks are not over
    assert not ready.task_done()
    assert ready.task_done()
    assert ready.warmed_at is not None
    ready.wait_until_warm()  # returns at once: the lane is over


def test_a_job_stops_waiting_when_its_check_raises():
    ready = DiarizationReady()
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        ready.models(check)
    assert len(calls) == 2 and not ready.built()


def test_a_lane_that_ends_without_a_registry_leaves_none_and_nobody_waits():
    ready = DiarizationReady(tasks=1)
    assert ready.task_done()
    assert ready.built() and ready.models() is None


def test_warm_up_wait_is_the_overlap_with_the_lane():
    ready = DiarizationReady()
    assert ready.warm_up_wait(10.0, 12.5) == pytest.approx(2.5)  # the lane still runs
    ready.warmed_at = 11.0
    assert ready.warm_up_wait(10.0, 12.5) == pytest.approx(1.0)
    assert ready.warm_up_wait(11.5, 12.5) == 0.0  # submitted after the lane ended


def test_of_is_built_and_warm():
    models = object()
    ready = DiarizationReady.of(models)
    assert ready.built() and ready.models() is models and ready.warmed_at is not None
    assert ready.warm_up_wait(time.perf_counter(), time.perf_counter() + 1) == 0.0
