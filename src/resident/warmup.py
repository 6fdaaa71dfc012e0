"""Start-up warm-up: the resident models are loaded and first run in three lanes at once.

- this thread: the default ASR model and one small transcription. On a GPU whose
  machine code CTranslate2's wheel lacks (4.8.5 ships sm_53-86 and PTX for compute_86: an
  H100/H200, L4 or L40S), the first encode compiles its kernels from PTX, ~14 s on the lent
  H200 with an empty kernel cache (bench/cold_start_probe.py); that compilation sets the
  length of a cold start;
- the diarization threads: the diarization registry, the offline pipeline (plain torch: no
  pyannote.audio import) and one run of it per thread. The worker is ready without this
  lane: only jobs that ask for speakers need it, and they wait for it
  (``diarization_ready.DiarizationReady``);
- the torch thread, where jobs' VAD and aligner forwards run later: the VAD, then the
  aligners of ``PRELOAD_ALIGN_LANGUAGES``, run once on every input shape a job can give them.

Start-up takes the longer of the ASR and VAD/aligner lanes instead of their sum. What each step took lands in the
Predictor's ``startup_timings``:

- ``model_load_s``: loading the default ASR model (absent when it failed to load);
- ``warmup_s``: the ASR warm-up (one transcription; with ``WARMUP`` only);
- ``vad_warmup_s``: loading the VAD and, with ``WARMUP``, running it;
- ``diarization_warmup_s``: the diarization lane (with ``WARMUP``, one run on noise and one
  CAM++ forward), filled in when it ends, which may be after ``setup_s``;
- ``aligner_warmup_s``: loading (and with ``WARMUP``, running) the aligners.

The Predictor adds ``setup_s``, the whole of ``setup()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from resident.diarization_ready import DiarizationReady
from resident.models import AsrModels, ModelLoadError, ResolvedModel, effective_compute_type, resolve_asr_model
from settings import WorkerSettings
from stages import alignment, asr, vad

if TYPE_CHECKING:
    from stages import diarization

# How long a diarization thread's warm-up waits for the others to start (seconds): they are
# idle at start-up, so they start at once; the bound only keeps a broken pool from hanging.
DIARIZATION_BARRIER_S = 120.0

# Windows of the ASR warm-up's one generate call on a GPU: about what a 30 s clip gives
# (batch filling cuts it at pauses into windows of 10 s or more).
ASR_WARMUP_WINDOWS = 4

# The Predictor's logger: the start-up lines keep the name they have always been logged under.
logger = logging.getLogger("predict")


def noise(seconds: float) -> np.ndarray:
    """Quiet white noise (float32, 16 kHz) for warm-up runs."""
    rng = np.random.default_rng(1)
    return (rng.standard_normal(int(vad.SAMPLE_RATE * seconds)) * 0.01).astype(np.float32)


@dataclass(frozen=True)
class WarmUp:
    """Loads the default ASR model and warms up the resident models, in order (built by
    ``startup.start_up``, which passes the lanes' pieces: ``lanes.Lanes``).

    settings: the worker's settings (``warmup``, ``models_dir``, ``preload_align_languages``).
    asr_models, aligners: the model registries jobs use.
    diarizers: builds the diarization registry (None: no diarization); called in
        a diarization thread, where the offline pipeline then loads.
    diarization_ready: where the diarization lane puts the registry, for jobs to wait on.
    diarization_pool, diarization_threads: the lanes' diarization threads, each of which
        runs the pipeline once (per-thread state lives in the threads that run requests).
    torch_thread: the lanes' thread for the VAD and the aligners' forwards: they are
        loaded and run once there.
    side_stream_scope: the lanes' context manager that puts the calling thread's kernels
        on its CUDA side stream (created there on first use).
    windows_per_generate: the cap on windows per generate call jobs get, by (model path,
        compute type), so the ASR warm-up runs the shapes a job runs.
    release_gpu_cache: gives the device's cached blocks back (no-op on CPU).
    timings: the start-up timings (the Predictor's ``startup_timings``), filled in place.
    """

    settings: WorkerSettings
    device: str
    asr_models: AsrModels
    aligners: alignment.AlignmentModels
    diarizers: Callable[[], diarization.DiarizationModels | None]
    diarization_ready: DiarizationReady
    diarization_pool: ThreadPoolExecutor
    diarization_threads: int
    torch_thread: ThreadPoolExecutor
    side_stream_scope: Callable[[], AbstractContextManager[None]]
    windows_per_generate: Callable[[str, str], int | None]
    release_gpu_cache: Callable[[], None]
    timings: dict[str, float]

    def run(self, model_name: str, requested_compute_type: str) -> str | None:
        """Load ``model_name`` (kept resident) and the VAD, and warm everything up, in lanes;
        returns when the ASR and VAD/aligner lanes are done. The diarization lane goes on in
        its threads (``diarization_ready`` says when it has built the registry and ended).

        A failure to load the default model is logged and returned (the worker keeps serving
        requests that name another model); warm-up failures are logged only.
        """
        self._start_diarization_lane()
        torch_ready = self.torch_thread.submit(self._torch_models)
        error = self._asr_lane(model_name, requested_compute_type)
        try:
            torch_ready.result()
        except Exception as exc:  # the lane's own failures are reported per request
            logger.warning("VAD/aligner warm-up failed: %s", exc)
        # Here, after the lanes "ready" waits for: freeing device memory synchronises the device.
        self.release_gpu_cache()
        return error

    def _asr_lane(self, model_name: str, requested_compute_type: str) -> str | None:
        """Load the default model, then (``WARMUP``) run it once; the load error."""
        error = None
        compute_type, _ = effective_compute_type(requested_compute_type, self.device)
        try:
            resolved = resolve_asr_model(model_name, self.settings.models_dir, None)
            _, seconds = self.asr_models.whisper(resolved, compute_type, keep=True)
            self.timings["model_load_s"] = round(seconds, 3)
        except ModelLoadError as exc:
            error = str(exc)
            logger.error("default model not loaded at start-up: %s", exc)
        else:
            if self.settings.warmup:
                try:
                    self._asr(resolved, compute_type)
                except Exception as exc:  # an OOM here must not stop the worker serving
                    logger.warning("ASR warm-up failed (the first job pays for it): %s", exc)
        return error

    def _asr(self, resolved: ResolvedModel, compute_type: str) -> None:
        """Run one tiny transcription so the model's kernels are ready before the first job."""
        started = time.perf_counter()
        model, _ = self.asr_models.whisper(resolved, compute_type)
        # On a GPU, one generate call over a short clip's windows with beam search: the kernels a
        # job uses are compiled and loaded once, whatever the batch (CTranslate2 plans nothing
        # per shape).
        gpu = self.device == "cuda"
        seconds, beam, batch = (30.0, 5, ASR_WARMUP_WINDOWS) if gpu else (2.0, 1, 1)
        samples = noise(seconds)
        windows = [vad.SpeechWindow(0.0, seconds, ((0.0, seconds),))] * batch
        tokenizer = asr.make_tokenizer(model, "en" if not model.model.is_multilingual else "ru", "transcribe")
        asr.transcribe_windows(model, samples, windows, tokenizer, asr.DecodeOptions(beam_size=beam), batch, self.device,
                               max_rows=self.windows_per_generate(resolved.path, compute_type))
        self.timings["warmup_s"] = round(time.perf_counter() - started, 3)

    def _torch_models(self) -> None:
        """The VAD, then the aligners: load, and with WARMUP run once."""
        started = time.perf_counter()
        # No pyannote here: the VAD network is plain torch, so this lane never waits for
        # pyannote's import (which no start-up lane runs: the offline diarization is plain too).
        vad_model = self.asr_models.vad()
        if self.settings.warmup:
            # Over 30 s and 2 minutes on a GPU: one batch of chunks and a full one.
            # Through the entry point jobs use (batch by batch); this is the torch thread already.
            for seconds in (30.0, 120.0) if self.device == "cuda" else (2.0,):
                vad.speech_scores_in_steps(vad_model, noise(seconds), lambda work: work())
        self.timings["vad_warmup_s"] = round(time.perf_counter() - started, 3)
        self._aligners()

    def _aligners(self) -> None:
        """Load (and with WARMUP, run once) the aligners of ``PRELOAD_ALIGN_LANGUAGES``, so the
        first job pays no load or first-call cost."""
        started = time.perf_counter()
        samples = noise(3.0)
        for language in self.settings.preload_align_languages:
            try:
                aligner, _ = self.aligners.get(language)
                alignment.ensure_punkt(language)
                if self.settings.warmup:
                    # Each new input shape costs cuDNN a one-off plan: on a GPU every shape
                    # a job can produce is run once (the first 16-min job aligned 1.7x slower
                    # with only one segment of each length warmed).
                    shapes = alignment.warm_up_aligner(aligner, samples, self.device)
                    logger.info("aligner for %s warmed up on %d input shapes", language, shapes)
            except Exception as exc:  # reported again, as a warning, on requests that need it
                logger.warning("aligner for %s not preloaded: %s", language, exc)
        self.timings["aligner_warmup_s"] = round(time.perf_counter() - started, 3)

    def _start_diarization_lane(self) -> None:
        """Submit the diarization lane: one task per diarization thread (with ``WARMUP``; one
        without), all before any job can submit its diarization, so jobs queue behind them.
        The first builds the registry and loads the offline pipeline; with
        WARMUP every task then runs the pipeline once at the same time (each thread loads a
        replica and sets up its per-thread state: cuDNN plans of the segmentation model)."""
        tasks = self.diarization_threads if self.settings.warmup else 1
        together = threading.Barrier(tasks, timeout=DIARIZATION_BARRIER_S)
        started = time.perf_counter()
        for index in range(tasks):
            self.diarization_pool.submit(self._diarization_task, index == 0, together, started)

    def _diarization_task(self, builds: bool, together: threading.Barrier, started: float) -> None:
        """One task of the diarization lane (see ``_start_diarization_lane``)."""
        ready = self.diarization_ready
        try:
            if builds:
                diarizers = None
                try:
                    # No pyannote here: the registry pins its precision handling before it
                    # first loads a pyannote pipeline (``DiarizationModels.prepare_pyannote``).
                    diarizers = self.diarizers()
                    if diarizers is not None:
                        diarizers.warm_up()
                finally:
                    ready.set_models(diarizers)
            else:
                diarizers = ready.models()
            if diarizers is not None and self.settings.warmup:
                self._diarization_run(diarizers, together)
        except Exception as exc:  # reported again per request that needs diarization
            logger.warning("diarization warm-up failed: %s", exc)
        finally:
            if ready.task_done():
                self.timings["diarization_warmup_s"] = round(time.perf_counter() - started, 3)
                logger.info("diarization warmed up in %.1f s (after ready)", self.timings["diarization_warmup_s"])
                self.release_gpu_cache()

    def _diarization_run(self, diarizers: diarization.DiarizationModels, together: threading.Barrier) -> None:
        """One diarization thread's warm-up, on its stream: the pipeline on noise (on a GPU, more
        10 s chunks than one segmentation batch holds) and CAM++ once (noise gives it nothing to
        embed). Waits at ``together`` first, so that each thread of the pool takes one."""
        together.wait()
        samples = noise(90.0 if self.device == "cuda" else 3.0)
        with self.side_stream_scope():
            diarizers.diarize(samples, model="", token=None, min_speakers=None, max_speakers=None,
                              num_speakers=None, return_embeddings=False)
            diarizers.warm_up_embeddings()
