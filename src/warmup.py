"""Start-up warm-up: the order in which the resident models are loaded and first run.

The offline diarization pipeline loads (and runs once) in the diarization thread while this
thread loads the default ASR model and runs one small transcription: start-up takes the
longer of the two instead of their sum. Then the aligners of ``PRELOAD_ALIGN_LANGUAGES`` load
and run once. What each step took lands in the Predictor's ``startup_timings``:

- ``model_load_s``: loading the default ASR model (absent when it failed to load);
- ``warmup_s``: the ASR warm-up (VAD and one transcription; with ``WARMUP`` only);
- ``diarization_warmup_s``: loading the offline diarization pipeline and, with ``WARMUP``,
  one run of it and CAM++ over its input shapes (in the diarization thread);
- ``aligner_warmup_s``: loading (and with ``WARMUP``, running) the preloaded aligners.

The Predictor adds ``setup_s``, the whole of ``setup()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

import alignment
import asr
import rp_schema
import vad
from models import AsrModels, ModelLoadError, ResolvedModel, effective_compute_type, resolve_asr_model
from settings import WorkerSettings

if TYPE_CHECKING:
    import diarization

# The Predictor's logger: the start-up lines keep the name they have always been logged under.
logger = logging.getLogger("predict")


def noise(seconds: float) -> np.ndarray:
    """Quiet white noise (float32, 16 kHz) for warm-up runs."""
    rng = np.random.default_rng(1)
    return (rng.standard_normal(int(vad.SAMPLE_RATE * seconds)) * 0.01).astype(np.float32)


@dataclass(frozen=True)
class WarmUp:
    """Loads the default ASR model and warms up the Predictor's resident models, in order.

    settings: the worker's settings (``warmup``, ``models_dir``, ``preload_align_languages``).
    asr_models, aligners, diarizers: the Predictor's model registries (no diarization: None).
    diarization_pool: the Predictor's one diarization thread: the pipeline's kernels' plans
        must live in the thread that runs the requests' diarization.
    diarization_stream: the Predictor's context manager that puts that thread's kernels on
        its CUDA side stream (created there on first use).
    windows_per_generate: the Predictor's cap on windows per generate call, by (model path,
        compute type), so the ASR warm-up runs the shapes a job runs.
    release_gpu_cache: gives the device's cached blocks back (no-op on CPU).
    timings: the Predictor's ``startup_timings``, filled in place.
    """

    settings: WorkerSettings
    device: str
    asr_models: AsrModels
    aligners: alignment.AlignmentModels
    diarizers: diarization.DiarizationModels | None
    diarization_pool: ThreadPoolExecutor
    diarization_stream: Callable[[], AbstractContextManager[None]]
    windows_per_generate: Callable[[str, str], int | None]
    release_gpu_cache: Callable[[], None]
    timings: dict[str, float]

    def run(self, model_name: str, requested_compute_type: str) -> str | None:
        """Load ``model_name`` (kept resident) and the VAD, and warm everything up.

        The diarization pipeline's load and warm-up overlap the ASR model's. A failure to
        load the default model is logged and returned (the worker keeps serving requests
        that name another model); warm-up failures are logged only.
        """
        # The diarization pipeline loads and warms up in its own thread (where its kernels'
        # plans must live) while this one loads and warms up the ASR model: start-up takes
        # the longer of the two instead of their sum.
        diarization_ready = self._start_diarization()
        error = None
        compute_type, _ = effective_compute_type(requested_compute_type, self.device)
        try:
            resolved = resolve_asr_model(model_name, self.settings.models_dir, None)
            _, seconds = self.asr_models.whisper(resolved, compute_type, keep=True)
            self.timings["model_load_s"] = round(seconds, 3)
            self.asr_models.vad()
        except ModelLoadError as exc:
            error = str(exc)
            logger.error("default model not loaded at start-up: %s", exc)
        else:
            if self.settings.warmup:
                try:
                    self._asr(resolved, compute_type)
                except Exception as exc:  # an OOM here must not stop the worker serving
                    logger.warning("ASR warm-up failed (the first job pays for it): %s", exc)
                    self.release_gpu_cache()
        self._wait_for_diarization(diarization_ready)
        self._aligners()
        return error

    def _asr(self, resolved: ResolvedModel, compute_type: str) -> None:
        """Run one tiny transcription so kernels and VAD are initialised before the first job."""
        started = time.perf_counter()
        model, _ = self.asr_models.whisper(resolved, compute_type)
        # On a GPU, a full batch of 30 s windows with beam search (the shapes and kernels a
        # real job uses, so the first job does not pay for choosing and loading them), then a
        # short tail batch, as a long file ends; the VAD over 2 minutes, which fills its own
        # batches of chunks.
        gpu = self.device == "cuda"
        seconds, beam, batch, tail = (30.0, 5, rp_schema.defaults()["batch_size"], 3) if gpu else (2.0, 1, 1, 0)
        samples = noise(seconds)
        vad.speech_scores(self.asr_models.vad(), noise(4 * seconds) if gpu else samples)
        windows = [vad.SpeechWindow(0.0, seconds, ((0.0, seconds),))] * (batch + tail)
        tokenizer = asr.make_tokenizer(model, "en" if not model.model.is_multilingual else "ru", "transcribe")
        asr.transcribe_windows(model, samples, windows, tokenizer, asr.DecodeOptions(beam_size=beam), batch, self.device,
                               max_rows=self.windows_per_generate(resolved.path, compute_type))
        self.timings["warmup_s"] = round(time.perf_counter() - started, 3)

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

    def _start_diarization(self) -> Future[None] | None:
        """Submit the offline diarization pipeline's load (and with WARMUP, one run on noise
        and CAM++ over its input shapes of up to 64 rows) to the diarization thread; a Future,
        or None."""
        if self.diarizers is None:
            return None
        # On a GPU, more 10 s chunks than one segmentation batch holds.
        samples = noise(90.0 if self.device == "cuda" else 3.0)
        return self.diarization_pool.submit(self._diarization, self.diarizers, samples)

    def _wait_for_diarization(self, future: Future[None] | None) -> None:
        if future is None:
            return
        try:
            future.result()
        except Exception as exc:  # the pipeline's own failures are reported per request
            logger.warning("diarization warm-up failed: %s", exc)
        # Here, not in the diarization thread: freeing device memory synchronises the device,
        # which would stall the ASR warm-up running meanwhile. Returns the side stream's pool
        # before the aligner warms up.
        self.release_gpu_cache()

    def _diarization(self, diarizers: diarization.DiarizationModels, samples: np.ndarray) -> None:
        """In the diarization thread, on its stream: load the offline pipeline and, with
        WARMUP, run it once and run CAM++ on its input shapes of up to 64 rows
        (``warm_up_embeddings``; bigger forwards happen only for lengths of <= 5 s)."""
        started = time.perf_counter()
        diarizers.warm_up()
        if self.settings.warmup:
            with self.diarization_stream():
                diarizers.diarize(samples, model="", token=None, min_speakers=None, max_speakers=None,
                                  num_speakers=None, return_embeddings=False)
                shapes = diarizers.warm_up_embeddings()
                if shapes:
                    logger.info("CAM++ warmed up on %d input shapes (up to 64 rows)", shapes)
        self.timings["diarization_warmup_s"] = round(time.perf_counter() - started, 3)
