"""Cross-job batching of Whisper calls: the windows of concurrent jobs share generate calls.

With several jobs in flight (``MAX_CONCURRENT_JOBS``), each job thread still runs its own
stages, but every Whisper encode + generate (and language-detection) call goes through one
``CrossJobBatcher``. Its one thread takes the oldest waiting call and merges into it every
other waiting call that can share it: same model, same kind of call and, for generate, the
same ``asr.GenerateCall`` (prompt with language and task, suppressed tokens, temperature,
beam size, patience, ``best_of``, length penalty); options that change decoding therefore
split a batch. A merged call takes at most the first call's ``max_rows`` windows (its job's
``batch_size``, or fewer under ``ASR_DECODE_CACHE_MB`` on a GPU), so the memory of one call
stays what that job allows however many jobs wait.

No timer holds a call back: while the model runs one merged call, the calls of other jobs
queue up and form the next one, so a lone job waits for nothing and a busy worker fills its
batches by itself.

Each caller gets exactly the rows it sent. A merged call's decode-length cap is the longest
of its callers' caps (a cap bounds the cost of a looping decode; within one job the longest
window of a batch already sets it). A merged call that fails is run again caller by caller,
so one job's failure (an out-of-memory in a big merge, a bad input) reaches that job only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from resident.models import whisper_dimensions
from stages import asr

if TYPE_CHECKING:
    from ctranslate2.models import WhisperGenerationResult
    from faster_whisper import WhisperModel

logger = logging.getLogger("batching")  # the bare name: log lines read as before the move

# How often a caller waiting for its rows looks at its job's stop check (seconds).
WAIT_CHECK_S = 0.2

# Windows of one merged call when its first caller sets no cap (``asr.transcribe_windows``
# always sets one): the schema's default batch.
DEFAULT_MAX_ROWS = 32


# Windows per Whisper call on a CPU that runs several jobs at once. The calls of all jobs take
# turns at the one model; a CPU gains little from big batches (its cores are busy with one
# window already), so small calls cost little throughput and bound how long a short clip's
# call waits behind a long file's (bench/fault_bench.py: short-clip latency beside a long file).
CPU_SHARED_WINDOWS_PER_CALL = 2


def windows_per_generate(device: str, max_concurrent_jobs: int, decode_cache_mb: float, model_path: str,
                         compute_type: str) -> int | None:
    """Cap on windows per generate call: on a GPU the decoder cache's (``ASR_DECODE_CACHE_MB``:
    ``decode_cache_mb``); on a CPU serving several jobs at once ``CPU_SHARED_WINDOWS_PER_CALL``,
    so that a clip's call waits behind at most a few of a long file's windows; None for none."""
    if device != "cuda":
        return CPU_SHARED_WINDOWS_PER_CALL if max_concurrent_jobs > 1 else None
    dims = whisper_dimensions(model_path) if decode_cache_mb > 0 else None
    if dims is None:
        return None
    return asr.windows_in_flight(dims.decoder_layers, dims.d_model, decode_cache_mb, 4 if compute_type == "float32" else 2)


@dataclass(eq=False)
class _Waiting:
    """One caller's call, waiting for the batcher thread."""

    kind: str  # "generate" or "detect"
    model: WhisperModel
    features: np.ndarray  # (rows, n_mels, 3000)
    call: asr.GenerateCall | None = None
    max_length: int = 0
    max_rows: int = DEFAULT_MAX_ROWS
    done: Future[list[Any]] = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    def shares_with(self, other: _Waiting) -> bool:
        return self.kind == other.kind and self.model is other.model and self.call == other.call


@dataclass
class BatchStats:
    """What the batcher ran since it started: model calls, windows, and how many calls
    carried windows of more than one caller (jobs) — the measure that batching happened."""

    calls: int = 0
    rows: int = 0
    merged_calls: int = 0
    most_callers: int = 0
    busy_s: float = 0.0  # seconds inside model calls (their share of wall time: how busy the model was)


class CrossJobBatcher:
    """Runs the Whisper calls of concurrent callers in one thread, merging calls that can share
    a model call. Implements ``asr.WhisperCalls``; thread-safe; idle costs nothing."""

    def __init__(self, name: str = "whisper-batcher") -> None:
        self._name = name
        self._waiting: list[_Waiting] = []
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._held = 0
        self.stats = BatchStats()

    # -------------------------------------------------------------- callers' side
    def generate(self, model: WhisperModel, features: np.ndarray, call: asr.GenerateCall, max_length: int,
                 max_rows: int | None) -> list[WhisperGenerationResult]:
        """``asr.generate`` over ``features``, possibly in one call with other callers' windows;
        blocks until this caller's rows are decoded."""
        return self._submit(_Waiting("generate", model, features, call, max_length, max_rows or DEFAULT_MAX_ROWS))

    def detect(self, model: WhisperModel, features: np.ndarray) -> list[list[tuple[str, float]]]:
        """``asr.detect`` over ``features``, possibly in one call with other callers' windows."""
        return self._submit(_Waiting("detect", model, features))

    def for_job(self, check: Callable[[], None]) -> JobCalls:
        """This batcher as seen by one job: each wait calls ``check`` every ``WAIT_CHECK_S``;
        when it raises (the job was cancelled or ran out of time) the job's call leaves the
        queue if no model call has taken it yet, and the exception reaches the job."""
        return JobCalls(self, check)

    def _submit(self, waiting: _Waiting, check: Callable[[], None] | None = None) -> list[Any]:
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the Whisper batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._waiting.append(waiting)
            self._wakeup.notify()
        if check is None:
            return waiting.done.result()
        while True:
            try:
                return waiting.done.result(timeout=WAIT_CHECK_S)
            except FutureTimeout:
                pass
            try:
                check()
            except BaseException:
                self._withdraw(waiting)
                raise

    def _withdraw(self, waiting: _Waiting) -> None:
        """Take a caller's call out of the queue (no-op once a model call has taken it)."""
        with self._wakeup:
            if waiting in self._waiting:
                self._waiting.remove(waiting)

    @property
    def waiting_calls(self) -> int:
        """Calls queued and not yet taken by the batcher thread."""
        with self._wakeup:
            return len(self._waiting)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Within the block no new model call starts: callers queue up, and on leaving the
        queue is served as usual, merging what can be merged. How tests and benchmarks make
        jobs meet in one call whatever the timing of their other stages."""
        with self._wakeup:
            self._held += 1
        try:
            yield
        finally:
            with self._wakeup:
                self._held -= 1
                self._wakeup.notify()

    def close(self) -> None:
        """Stop the thread once the calls already waiting are done."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    # -------------------------------------------------------------- batcher thread
    def _serve(self) -> None:
        while True:
            with self._wakeup:
                while not self._closed and (not self._waiting or self._held):
                    self._wakeup.wait()
                if not self._waiting:
                    return
                group = self._take_group()
            self._run(group)

    def _take_group(self) -> list[_Waiting]:
        """The oldest waiting call and every later one that can share its model call, up to the
        oldest call's ``max_rows`` windows; they leave the queue, the others keep their order."""
        head = self._waiting[0]
        group, rows = [head], head.rows
        for waiting in self._waiting[1:]:
            if waiting.shares_with(head) and rows + waiting.rows <= head.max_rows:
                group.append(waiting)
                rows += waiting.rows
        self._waiting = [w for w in self._waiting if w not in group]
        return group

    def _run(self, group: list[_Waiting]) -> None:
        try:
            results = self._call(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].done.set_exception(exc)
                return
            logger.warning("a model call merged from %d jobs failed (%s: %s); running them one by one",
                           len(group), type(exc).__name__, str(exc)[:200])
            for waiting in group:
                self._run([waiting])
            return
        first = 0
        for waiting in group:
            waiting.done.set_result(results[first : first + waiting.rows])
            first += waiting.rows

    def _call(self, group: list[_Waiting]) -> list[Any]:
        started = time.perf_counter()
        head = group[0]
        features = head.features if len(group) == 1 else np.concatenate([w.features for w in group])
        if head.kind == "detect":
            results: list[Any] = asr.detect(head.model, features)
        else:
            assert head.call is not None
            results = asr.generate(head.model, features, head.call, max(w.max_length for w in group))
        stats = self.stats
        stats.calls += 1
        stats.rows += int(features.shape[0])
        if len(group) > 1:
            stats.merged_calls += 1
        stats.most_callers = max(stats.most_callers, len(group))
        stats.busy_s += time.perf_counter() - started
        return results


class JobCalls:
    """One job's view of a ``CrossJobBatcher`` (``asr.WhisperCalls``): the same merged calls,
    with waits that end when the job must stop (``CrossJobBatcher.for_job``)."""

    def __init__(self, batcher: CrossJobBatcher, check: Callable[[], None]) -> None:
        self._batcher, self._check = batcher, check

    def generate(self, model: WhisperModel, features: np.ndarray, call: asr.GenerateCall, max_length: int,
                 max_rows: int | None) -> list[WhisperGenerationResult]:
        self._check()
        waiting = _Waiting("generate", model, features, call, max_length, max_rows or DEFAULT_MAX_ROWS)
        return self._batcher._submit(waiting, self._check)

    def detect(self, model: WhisperModel, features: np.ndarray) -> list[list[tuple[str, float]]]:
        self._check()
        return self._batcher._submit(_Waiting("detect", model, features), self._check)
