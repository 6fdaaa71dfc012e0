"""The diarization registry as it becomes ready, after the worker is.

Start-up's diarization lane (the diarization stage's imports, the offline pipeline's load and
one warm-up run per diarization thread) may end last, and only jobs that ask for speakers need
it: the worker says "ready" without waiting for it (issue 26). A job whose diarization starts before
the lane ends waits for the registry in its diarization thread, and its ``debug_info`` timings
carry ``diarization_warmup_wait_s``: the part of its diarization's wait that start-up's lane
still ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stages import diarization

# How often a job waiting for the registry checks whether it must stop (seconds).
WAIT_CHECK_S = 0.25


class DiarizationReady:
    """The registry (``diarization.DiarizationModels``, or None when this worker has none),
    set once by start-up's diarization lane; ``tasks``: how many lane tasks end it."""

    def __init__(self, tasks: int = 1) -> None:
        self._built = threading.Event()
        self._models: diarization.DiarizationModels | None = None
        self._lock = threading.Lock()
        self._tasks_left = tasks
        self._warm = threading.Event()
        self.warmed_at: float | None = None  # time.perf_counter() when the lane's last task ended

    @classmethod
    def of(cls, models: diarization.DiarizationModels | None) -> DiarizationReady:
        """A registry that is already built and warm (tests, benches, bare Predictors)."""
        ready = cls(tasks=0)
        ready.set_models(models)
        ready.warmed_at = time.perf_counter()
        ready._warm.set()
        return ready

    def set_models(self, models: diarization.DiarizationModels | None) -> None:
        """The lane built the registry (None: it could not); wakes every waiting job."""
        self._models = models
        self._built.set()

    def built(self) -> bool:
        return self._built.is_set()

    def peek(self) -> diarization.DiarizationModels | None:
        """The registry if built, else None (does not wait)."""
        return self._models

    def models(self, check: Callable[[], None] | None = None) -> diarization.DiarizationModels | None:
        """The registry, waiting for the lane to build it; ``check`` runs every
        ``WAIT_CHECK_S`` while waiting and may raise to stop the wait (a job that ended)."""
        while not self._built.wait(WAIT_CHECK_S):
            if check is not None:
                check()
        return self._models

    def task_done(self) -> bool:
        """One lane task ended; True for the last one (the lane is over: ``warmed_at`` is set).
        A lane that ends without building the registry leaves it None, so no job waits forever."""
        with self._lock:
            self._tasks_left -= 1
            last = self._tasks_left == 0
            if last:
                self.warmed_at = time.perf_counter()
        if last and not self._built.is_set():
            self.set_models(None)
        if last:
            self._warm.set()
        return last

    def wait_until_warm(self) -> None:
        """Block until the lane has ended (benches that measure warm jobs call this)."""
        self._warm.wait()

    def warm_up_wait(self, since: float, until: float) -> float:
        """Seconds of [``since``, ``until``] (perf_counter) during which the lane still ran."""
        end = until if self.warmed_at is None else min(until, self.warmed_at)
        return max(0.0, end - since)
