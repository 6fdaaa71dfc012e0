"""Where the jobs' work runs, shared by every job: the torch thread, the diarization threads
and their fair turns, each thread's CUDA side stream, the count of jobs in flight, and how
many jobs and diarization threads a device gets by default.

The VAD and the aligner's forwards of every job run in one "torch" thread
(``on_torch_thread``), the one where they were warmed up: cuDNN keeps its per-shape plans per
thread, one forward's activations are freed before the next one's are taken, and the VAD's
per-call patch (``vad._speech_scores``) cannot race. Diarization runs in its threads
(``diarization_pool``) in the order jobs submit it, ``diarization_threads`` of them computing
at a time (``diarization_turns``). On a GPU every one of these threads, and each job's own,
launches torch kernels on a CUDA stream of its own (``side_stream``), so none of them waits
for the others' or CTranslate2's.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from resident.fair_turns import FairTurns

if TYPE_CHECKING:
    import torch

    import job_control

T = TypeVar("T")

# How often a job waiting for the torch thread (or its diarization) looks at its stop check (seconds).
TORCH_WAIT_CHECK_S = 0.2

# Jobs at once by default on a GPU: one per this many GiB of device memory, at most
# ``MAX_DEFAULT_JOBS``. The Whisper batcher keeps one generate call on the device at a time,
# so jobs add only their audio, VAD and aligner activations, and a busy spell's peak at 8 jobs
# of 30 s clips on large-v3 is what bench/serverless_bench.py reports.
GIB_PER_DEFAULT_JOB = 10
MAX_DEFAULT_JOBS = 8


def default_concurrent_jobs(device: str) -> int:
    """How many jobs run at once when ``MAX_CONCURRENT_JOBS`` is not set: 1 on a CPU (its
    cores are already shared by one job's stages), else one per ``GIB_PER_DEFAULT_JOB`` GiB of
    GPU memory, rounded, 1 to ``MAX_DEFAULT_JOBS`` (16 and 24 GB: 2, 48 GB: 4, 80 GB and more: 8)."""
    if device != "cuda":
        return 1
    import torch

    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return max(1, min(MAX_DEFAULT_JOBS, int(total_gib / GIB_PER_DEFAULT_JOB + 0.5)))


# Diarization threads by default on a GPU when several jobs run at once: diarization of a
# 30 s clip is ~0.25 s of mostly kernel launches, so one thread limits a busy worker
# (bench/serverless_bench.py).
DEFAULT_GPU_DIARIZATION_THREADS = 2


def default_diarization_threads(device: str, max_concurrent_jobs: int) -> int:
    """Diarization threads when ``DIARIZATION_THREADS`` is not set: 1 on a CPU or for one job
    at a time, else ``DEFAULT_GPU_DIARIZATION_THREADS`` (at most one per job)."""
    if device != "cuda":
        return 1
    return max(1, min(DEFAULT_GPU_DIARIZATION_THREADS, max_concurrent_jobs))


class Lanes:
    """The threads and streams every job's work runs on (see the module docstring).

    device: "cpu" or "cuda", set by start-up (``configure``) before any job runs.
    side_streams: whether threads get CUDA side streams (``TORCH_SIDE_STREAMS``).
    """

    def __init__(self, device: str = "cpu", side_streams: bool = False) -> None:
        self.device = device
        self.side_streams = side_streams
        # A job's diarization overlaps its ASR (``configure`` sizes the pool; a pool starts its
        # threads only when given work).
        self.diarization_threads = 1
        self.diarization_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarize")
        self.diarization_turns = FairTurns(1)
        self._side_streams = threading.local()  # each torch-running thread's CUDA stream (GPU only)
        self.torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch", initializer=self.use_side_stream)
        self._jobs_lock = threading.Lock()
        self._jobs_in_flight = 0
        # Seconds the torch thread spent running items, and items spent queued for it (both
        # summed over items; written by the torch thread only). A benchmark reads their growth
        # over a busy spell: a busy share near 1 means jobs' VAD and aligner forwards wait for
        # one another, not for the GPU.
        self.torch_busy_s = 0.0
        self.torch_queued_s = 0.0

    def configure(self, device: str, side_streams: bool, diarization_threads: int, diarization_replicas: int) -> None:
        """Start-up's choice of device and diarization threads: a thread (and a pipeline replica)
        per job that may diarize at once, but only ``diarization_threads`` of them compute at a
        time: the turns rotate between batches, so a clip's diarization is not queued behind a
        long file's whole run."""
        self.device, self.side_streams = device, side_streams
        self.diarization_threads = diarization_threads
        self.diarization_turns = FairTurns(diarization_threads)
        self.diarization_pool.shutdown(wait=False)
        self.diarization_pool = ThreadPoolExecutor(max_workers=max(diarization_threads, diarization_replicas),
                                                   thread_name_prefix="diarize")

    # ------------------------------------------------------------------ torch thread
    def on_torch_thread(self, work: Callable[[], T], control: job_control.JobControl | None = None,
                        stage: str = "torch work") -> T:
        """``work()`` run in the torch thread, in this job's context (its log lines stay its
        own); this thread waits for it, in turn with other jobs' items (first come, first
        served). With ``control``, the wait ends when the job must stop: an item not yet
        started is withdrawn, one already running finishes alone (one batch or segment)."""
        if control is not None:
            control.check(stage)
        future = self.torch_thread.submit(self._timed, contextvars.copy_context().run, work, time.perf_counter())
        if control is None:
            return future.result()
        while True:
            try:
                return future.result(timeout=TORCH_WAIT_CHECK_S)
            except FutureTimeout:
                pass
            if control.stopped():
                future.cancel()
                raise control.error(stage)

    def _timed(self, run: Callable[[Callable[[], T]], T], work: Callable[[], T], submitted: float) -> T:
        """``run(work)`` in the torch thread, counted into ``torch_busy_s`` / ``torch_queued_s``."""
        started = time.perf_counter()
        self.torch_queued_s += started - submitted
        try:
            return run(work)
        finally:
            self.torch_busy_s += time.perf_counter() - started

    # ------------------------------------------------------------------ CUDA side streams
    def side_stream(self) -> torch.cuda.Stream | None:
        """The calling thread's own non-blocking CUDA stream (``TORCH_SIDE_STREAMS``), created
        on first use; None on a CPU or with the setting off.

        CTranslate2 computes on the legacy default stream (torch's default) in the first thread
        that touches CUDA and on blocking streams elsewhere, which wait for the legacy stream and
        make it wait for them (its ``cuda/utils.cc``): torch kernels there and CTranslate2's
        would take turns. On a non-blocking stream they run side by side.
        """
        if self.device != "cuda" or not self.side_streams:
            return None
        import torch

        stream = getattr(self._side_streams, "stream", None)
        if stream is None:  # created by each thread, used only there
            stream = self._side_streams.stream = torch.cuda.Stream()
        return stream

    def use_side_stream(self) -> None:
        """The torch thread's start: its side stream becomes its current stream for good. Its
        callers read results through host copies (the VAD's scores) or CUDA events (the
        aligner's emissions), both ordered on that stream, so nothing waits at the end of a call
        and an aligner forward can run while its job reads the previous one."""
        stream = self.side_stream()
        if stream is not None:
            import torch

            torch.cuda.set_stream(stream)

    @contextmanager
    def side_stream_scope(self) -> Iterator[None]:
        """The calling thread's torch kernels on its side stream (``side_stream``) within the
        block (a job, a diarization run); waits for the stream on leaving, so results are
        complete when another thread reads them."""
        stream = self.side_stream()
        if stream is None:
            yield
            return
        import torch

        with torch.cuda.stream(stream):
            yield
        stream.synchronize()

    # ------------------------------------------------------------------ jobs in flight
    def jobs_in_flight(self) -> int:
        with self._jobs_lock:
            return self._jobs_in_flight

    def job_started(self) -> None:
        """Count the job in; the first of a busy spell resets the GPU peak (``debug_info``'s
        peak is then the spell's: jobs in flight together share the device)."""
        with self._jobs_lock:
            self._jobs_in_flight += 1
            if self._jobs_in_flight == 1:
                self.reset_gpu_peak()

    def job_ended(self) -> None:
        """Count the job out; the last one gives the GPU's cached blocks back (freeing while
        other jobs run would only stall them)."""
        with self._jobs_lock:
            self._jobs_in_flight -= 1
            if self._jobs_in_flight == 0:
                self.release_gpu_cache()

    def reset_gpu_peak(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def release_gpu_cache(self) -> None:
        """Give cached blocks back between requests so one long job cannot starve the next."""
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
