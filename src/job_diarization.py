"""A job's diarization beside its ASR: submitted to the diarization threads as soon as the
waveform is ready (``start``), waited for and turned into speaker labels after alignment
(``finish``), and stopped with the job (``settle``).

The run takes its turn with other jobs' runs (``lanes.diarization_turns``), passes the turn on
after each batch, and stops at the next batch once its job is over or out of time.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

import numpy as np

import job_control
import rp_schema
from job_state import RequestState
from resident.diarization_ready import DiarizationReady
from resident.lanes import TORCH_WAIT_CHECK_S, Lanes
from stages import known_speakers, speaker_assignment

if TYPE_CHECKING:
    from stages import diarization  # imported where used: pyannote loads in the warm-up's diarization thread

logger = logging.getLogger("predict")  # the Predictor's log lines, as before the split

UNAVAILABLE = "diarization is not available in this worker; speakers are not labelled"

# How long a job's cleanup waits for its stopped diarization to end (seconds): a stop takes
# effect after the batch in progress, well under this on CPU and GPU.
DIARIZATION_STOP_WAIT_S = 10.0


def start(lanes: Lanes, ready: DiarizationReady | None, waveform: np.ndarray,
          opts: rp_schema.RequestOptions, state: RequestState,
          samples: Sequence[np.ndarray] = ()) -> Future[diarization.DiarizationOutput] | None:
    """Submit diarization to the background threads; returns a Future (or None if unavailable).

    ``ready``: the diarization registry, which start-up's diarization lane may still be
    building: the run then waits for it in its thread (``diarization_warmup_wait_s``).
    ``samples``: the known speakers' voices (``known_speakers.load_references``), embedded by
    the same run. The call runs in a copy of this request's context, so its log lines still
    land in this request's ``logs``.
    """
    if ready is None or (ready.built() and ready.peek() is None):
        state.warn(UNAVAILABLE)
        return None
    context = contextvars.copy_context()
    submitted = time.perf_counter()

    def check(percent: float) -> None:
        # Called after each segmentation/embedding batch: a job that is over (failed,
        # or out of its time budget) must not keep the one diarization thread busy.
        if state.stop.is_set() or state.control.stopped():
            # Imported here, in the diarization thread: the job's own thread never waits
            # for the diarization stage's imports, which start-up's lane may still be running.
            from stages import diarization

            raise diarization.Stopped("the job ended before its diarization did")

    def stop_waiting() -> None:
        check(0.0)

    def run() -> diarization.DiarizationOutput:
        # How long this job's diarization waited for a thread and a turn (other jobs' runs).
        with lanes.diarization_turns.turn(stop_waiting) as held:
            diarizers = ready.models(stop_waiting)
            started = time.perf_counter()
            state.timings["diarization_queue_s"] = round(started - submitted, 4)
            warm_up_wait = ready.warm_up_wait(submitted, started)
            if warm_up_wait > 0:
                # The part of the queue time during which start-up's diarization lane still ran.
                state.timings["diarization_warmup_wait_s"] = round(warm_up_wait, 4)
            if diarizers is None:
                raise RuntimeError(UNAVAILABLE)

            def at_batch(percent: float) -> None:
                check(percent)
                held.pass_turn()  # a newer run waiting goes first: long files do not hold the turn

            try:
                check(0.0)
                with lanes.side_stream_scope():
                    return diarizers.diarize(
                        waveform,
                        model=opts.diarization_model,
                        token=opts.huggingface_access_token,
                        min_speakers=opts.min_speakers,
                        max_speakers=opts.max_speakers,
                        num_speakers=opts.num_speakers,
                        return_embeddings=opts.return_speaker_embeddings,
                        progress_callback=at_batch,
                        samples=samples,
                    )
            finally:
                state.timings["diarization_s"] = round(time.perf_counter() - started, 4)

    state.diarization_job = lanes.diarization_pool.submit(context.run, run)
    return state.diarization_job


def settle(state: RequestState) -> None:
    """End the job's diarization with the job, so the next job's starts at once: cancel
    it when it has not started, else stop it at its next batch and wait for that (at
    most ``DIARIZATION_STOP_WAIT_S``)."""
    job = state.diarization_job
    state.stop.set()
    if job is None or job.done() or job.cancel():
        return
    try:
        job.result(timeout=DIARIZATION_STOP_WAIT_S)
    except FutureTimeout:
        logger.warning("diarization of the ended job still runs after %.0f s; the next job's waits for it",
                       DIARIZATION_STOP_WAIT_S)
    except Exception:  # noqa: BLE001 - Stopped or a failure: the job is over either way
        pass


def finish(job: Future[diarization.DiarizationOutput], segments: list[dict], state: RequestState,
           opts: rp_schema.RequestOptions | None = None) -> tuple[list[dict], str | None, dict[str, list[float]] | None]:
    """Wait for diarization and label words and segments (known speakers by their names); a
    failure leaves them unlabelled."""
    from stages import diarization

    control = state.control
    try:
        # Bounded by the job's deadline and cancel: a long diarization cannot hold the answer.
        while True:
            try:
                out = job.result(timeout=control.wait_time(TORCH_WAIT_CHECK_S))
                break
            except FutureTimeout:
                control.check("diarization")
    except diarization.Stopped:
        raise control.error("diarization") from None
    except job_control.JobStopped:
        raise
    except Exception as exc:  # DiarizationUnavailable, OOM, anything: keep the transcript
        job_control.raise_if_device_fault(exc, "diarization")
        state.warn(f"diarization failed ({type(exc).__name__}: {str(exc)[:200]}); speakers are not labelled")
        return segments, None, None
    for message in out.warnings:
        state.warn(message)
    state.diarization_speakers = len(out.speakers)
    turns, embeddings = out.assignment_turns, out.speaker_embeddings
    if opts is not None and opts.known_speaker_names and out.reference_embeddings is not None:
        naming = known_speakers.name_speakers(opts.known_speaker_names, out.reference_embeddings, out.centroids or {},
                                              opts.known_speaker_min_similarity)
        for message in naming.warnings:
            state.warn(message)
        state.known_speaker_similarities = naming.similarities
        state.speaker_names = tuple(naming.names.values())
        turns = known_speakers.rename(turns, naming.names)
        if embeddings is not None:
            embeddings = {naming.names.get(label, label): vector for label, vector in embeddings.items()}
    if not segments:
        return segments, out.backend, embeddings
    return speaker_assignment.assign_speakers(segments, turns), out.backend, embeddings
