"""The Predictor: resident models and the order of the stages.

download -> probe / ffmpeg resample -> VAD -> language detection -> batched ASR ->
alignment -> diarization -> response. Each stage is a function in its own module that takes
data and options and returns data; only this module knows their order, the timings and the
warnings (``debug_info`` renders what the stages used and produced; ``warmup`` orders the
start-up loads and warm-ups). Options arrive as a frozen ``RequestOptions`` and are turned
into per-call option objects, so nothing a request sets outlives it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from stages import alignment
from stages import asr
from stages import audio
from resident import batching
import debug_info
from stages import fetch
import job_control
from resident import precision
import rp_schema
from stages import speaker_assignment
from stages import vad
from resident import warmup
from resident.fair_turns import FairTurns
from resident.models import (
    AsrModels,
    ModelLoadError,
    effective_compute_type,
    in_models_dir,
    is_allowed,
    looks_like_local_path,
    pick_device,
    resolve_asr_model,
    whisper_dimensions,
)
from settings import WorkerSettings, use_kernel_cache

if TYPE_CHECKING:
    import torch
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper import WhisperModel

    from stages import diarization

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float | None], None]
T = TypeVar("T")


# Windows per Whisper call on a CPU that runs several jobs at once. The calls of all jobs take
# turns at the one model; a CPU gains little from big batches (its cores are busy with one
# window already), so small calls cost little throughput and bound how long a short clip's
# call waits behind a long file's (bench/fault_bench.py: short-clip latency beside a long file).
CPU_SHARED_WINDOWS_PER_CALL = 2

# How often a job waiting for the torch thread looks at its stop check (seconds).
TORCH_WAIT_CHECK_S = 0.2

# How long a job's cleanup waits for its stopped diarization to end (seconds): a stop takes
# effect after the batch in progress, well under this on CPU and GPU.
DIARIZATION_STOP_WAIT_S = 10.0


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


class UserError(ValueError):
    """A problem the caller can fix (bad audio, unknown model); becomes ``{"error": ...}``."""


# The ways a job ends early live with its control (``job_control``); re-exported for callers here.
JobTimeout = job_control.JobTimeout
JobCancelled = job_control.JobCancelled
WorkerFault = job_control.WorkerFault
is_device_fault = job_control.is_device_fault
raise_if_device_fault = job_control.raise_if_device_fault


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU allocation failures from torch or CTranslate2."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return "out of memory" in text or "outofmemory" in text or "cublas_status_alloc_failed" in text


@dataclass
class _RequestState:
    """What one request accumulates on its way through the stages."""

    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # The job's deadline and cancel token: every stage, wait and loop checks it.
    control: job_control.JobControl = field(default_factory=job_control.JobControl)
    # Set when the job is over (answered, failed): its diarization stops at the next batch.
    stop: threading.Event = field(default_factory=threading.Event)
    diarization_job: Future[diarization.DiarizationOutput] | None = None
    # Speakers the diarization found (before words were assigned), for debug_info.
    diarization_speakers: int | None = None

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 4)

    def warn(self, message: str) -> None:
        logger.warning(message)
        self.warnings.append(message)


def vad_options(opts: rp_schema.RequestOptions) -> vad.VadOptions:
    """The request's VAD thresholds (seconds and probabilities)."""
    return vad.VadOptions(
        onset=opts.vad_onset,
        offset=opts.vad_offset,
        min_duration_on=opts.min_duration_on,
        min_duration_off=opts.min_duration_off,
        pad_onset=opts.pad_onset,
        pad_offset=opts.pad_offset,
    )


def decode_options(opts: rp_schema.RequestOptions) -> asr.DecodeOptions:
    """The request's decoding options, with the temperature fallback schedule expanded."""
    return asr.DecodeOptions(
        beam_size=opts.beam_size,
        length_penalty=opts.length_penalty,
        temperatures=asr.temperature_schedule(opts.temperature, opts.temperature_increment_on_fallback),
        compression_ratio_threshold=opts.compression_ratio_threshold,
        log_prob_threshold=opts.log_prob_threshold,
        no_speech_threshold=opts.no_speech_threshold,
        initial_prompt=opts.initial_prompt,
        hotwords=opts.hotwords,
        suppress_numerals=opts.suppress_numerals,
        task=opts.task,
    )


def output_language(language: str, task: str) -> str:
    """The language of the transcript's text: English for ``task: "translate"`` (Whisper
    translates into English only), else the spoken ``language``. Alignment needs the
    text's language, not the audio's."""
    return "en" if task == "translate" else language


def _refuse_local_path(field_name: str, name: str, allow_local: bool, instead: str, what: str) -> None:
    """Raise ``UserError`` naming ``field_name`` when ``name`` is on the worker's disk and
    ``ALLOW_LOCAL_FILES`` is off (a local model is a local path like ``audio_file``)."""
    if looks_like_local_path(name) and not allow_local:
        raise UserError(f"{field_name}: local paths are disabled; {instead} "
                        f"(set ALLOW_LOCAL_FILES=true to allow {what} on the worker's disk)")


def _from_request(opts: rp_schema.RequestOptions, name: str) -> bool:
    """Whether field ``name`` came from the request (not ENV or default; options built
    directly, without sources, count as the request's)."""
    source = opts.sources.get(name, "request")
    return source == "request"


class Predictor:
    """Keeps models resident and runs requests through the stages; several requests may run at
    once, each in its own thread (the handler's ``MAX_CONCURRENT_JOBS``).

    What concurrent requests share, and how: the Whisper calls go through one
    ``batching.CrossJobBatcher``, which merges the windows of jobs with the same decoding
    options into one generate call; the VAD and the aligner's forwards of every job run in one
    "torch" thread (``_on_torch_thread``), the one where they were warmed up: cuDNN keeps its
    per-shape plans per thread, one forward's activations are freed before the next one's
    are taken, and the VAD's per-call patch (``_speech_scores``) cannot race; diarization
    runs in its threads (``diarization_threads``) in the order jobs submit it. On a GPU every
    one of these threads, and each job's own, launches torch kernels on a CUDA stream of its
    own (``_side_stream``), so none of them waits for the others' or CTranslate2's. Everything
    else a request accumulates lives in its own ``_RequestState``.
    """

    def __init__(self, settings: WorkerSettings | None = None) -> None:
        self.settings = settings or WorkerSettings.from_env()
        self.device = "cpu"
        self.asr_models: AsrModels | None = None
        self.aligners: alignment.AlignmentModels | None = None
        self.diarizers: diarization.DiarizationModels | None = None
        self.startup_timings: dict[str, float] = {}
        # Background threads: a job's diarization overlaps its ASR (setup() sizes the pool:
        # ``diarization_threads``; a pool starts its threads only when given work).
        self.diarization_threads = 1
        self._diarization_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarize")
        self._diarization_turns = FairTurns(1)
        self._side_streams = threading.local()  # each torch-running thread's CUDA stream (GPU only)
        self.startup_error: str | None = None
        self.startup_warnings: list[str] = []
        self.tf32 = False  # TF32 policy, set once by setup() (precision.apply)
        self.whisper_calls = batching.CrossJobBatcher()
        self.max_concurrent_jobs = 1  # set by setup(): MAX_CONCURRENT_JOBS, else from the device's memory
        self._torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch",
                                                initializer=self._use_side_stream)
        self._jobs_lock = threading.Lock()
        self._jobs_in_flight = 0

    # ------------------------------------------------------------------ start-up
    def setup(self) -> None:
        """Load the model registries, then the default ASR model, the VAD and the preloaded
        aligners, warming them up (``warmup.WarmUp``).

        A failure to load the default model is logged and remembered, not raised: the worker
        keeps serving requests that name another model.
        """
        started = time.perf_counter()
        from resident import gpu_check

        # Before CUDA starts: where the driver keeps (and finds) the kernels it compiles.
        kernel_cache = use_kernel_cache(self.settings.kernel_cache_dir)
        if kernel_cache:
            logger.info("CUDA kernel cache: %s", kernel_cache)

        # An incomplete CUDA stack (no libcublas.so.12 for CTranslate2) is said clearly at
        # start-up instead of as an obscure error in the first job.
        self.startup_warnings = gpu_check.check_gpu_stack()
        for message in self.startup_warnings:
            logger.error("GPU stack: %s", message)
        # Before the first CUDA allocation: torch then grows one mapped segment per stream
        # instead of caching differently sized blocks, so the aligner's and the diarization's
        # varying shapes do not leave fragments that CTranslate2 (outside torch) cannot use.
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        self.device = pick_device(self.settings.device)
        self.max_concurrent_jobs = self.settings.max_concurrent_jobs or default_concurrent_jobs(self.device)
        self.diarization_threads = self.settings.diarization_threads or default_diarization_threads(
            self.device, self.max_concurrent_jobs)
        # A thread (and a pipeline replica) per job that may diarize at once, but only
        # ``diarization_threads`` of them compute at a time: the turns rotate between batches,
        # so a clip's diarization is not queued behind a long file's whole run.
        self._diarization_turns = FairTurns(self.diarization_threads)
        self._diarization_pool.shutdown(wait=False)
        self._diarization_pool = ThreadPoolExecutor(max_workers=max(self.diarization_threads, self.max_concurrent_jobs),
                                                    thread_name_prefix="diarize")
        asr_models = AsrModels(self.device, self.settings.models_dir, self.settings.cpu_threads,
                               max_cached=self.settings.max_cached_models)
        aligners = alignment.AlignmentModels(self.device, self.settings.align_model_for,
                                             max_cached=self.settings.max_cached_aligners,
                                             kept=frozenset(self.settings.preload_align_languages))
        self.asr_models, self.aligners = asr_models, aligners
        # Once, before any stage runs in any thread: no stage (nor pyannote) changes it later.
        self.tf32 = precision.apply(self.device, self.settings.torch_allow_tf32, pin=False)
        self.startup_timings["before_warmup_s"] = round(time.perf_counter() - started, 3)
        warm_up = warmup.WarmUp(
            settings=self.settings, device=self.device, asr_models=asr_models, aligners=aligners,
            diarizers=self._setup_diarization, diarization_pool=self._diarization_pool,
            diarization_threads=self.diarization_threads, torch_thread=self._torch_thread,
            side_stream_scope=self._side_stream_scope, windows_per_generate=self._windows_per_generate,
            release_gpu_cache=self._release_gpu_cache, timings=self.startup_timings,
        )
        self.startup_error = warm_up.run(*self._preload_choice())
        self.startup_timings["setup_s"] = round(time.perf_counter() - started, 3)
        logger.info("worker ready on %s in %.1f s (up to %d jobs at once)", self.device, self.startup_timings["setup_s"],
                    self.max_concurrent_jobs)

    def _preload_choice(self) -> tuple[str, str]:
        """The model a request with no ``model`` field would get (PRELOAD_MODEL, else the
        ``model`` ENV alias, else the schema default), and likewise its compute type."""
        env, defaults = self.settings.request_env, rp_schema.defaults()
        name = self.settings.preload_model or env.text("model") or defaults["model"]
        compute = self.settings.preload_compute_type or env.text("compute_type") or defaults["compute_type"]
        return name, compute

    def _default_asr_models(self) -> set[str]:
        """The preloaded ``model`` and the one a request gets without naming one (ENV)."""
        return {self._preload_choice()[0], *self.settings.request_env.texts("model")}

    def _default_diarization_models(self) -> set[str]:
        """The ``diarization_model`` a request gets without naming one (schema default, ENV)."""
        return {rp_schema.defaults()["diarization_model"], *self.settings.request_env.texts("diarization_model")}

    def _setup_diarization(self) -> diarization.DiarizationModels | None:
        """Build the diarization registry (imports pyannote: the warm-up runs this in the
        diarization thread, beside the ASR model's load)."""
        try:
            from stages import diarization
        except ImportError:  # pragma: no cover - module always ships with the worker
            return None
        self.diarizers = diarization.DiarizationModels(
            self.device, self.settings.offline_diarization_dir, max_cached=self.settings.max_cached_models,
            kept_models=frozenset(self._default_diarization_models()),
            replicas=max(self.diarization_threads, self.max_concurrent_jobs),
        )
        return self.diarizers

    # ------------------------------------------------------------------ request
    def predict(self, opts: rp_schema.RequestOptions, progress: ProgressFn | None = None,
                control: job_control.JobControl | None = None) -> dict:
        """Run one request; returns the response dict (without ``logs``, which the handler adds).

        ``control``: the job's deadline and cancel token (default: a budget of
        ``JOB_TIMEOUT_S`` from now); the job stops at the next check after either, with
        ``JobTimeout`` / ``JobCancelled``, except that a deadline reached after transcription
        returns the transcript with a warning naming the stages skipped.

        Raises ``UserError`` / ``fetch.AudioError`` / ``ModelLoadError`` for problems the
        caller can fix, ``WorkerFault`` when the GPU context may be corrupt; any other failure
        after ASR becomes a warning and the transcript is kept.
        """
        if self.asr_models is None:
            self.setup()
        control = control or job_control.JobControl(self.settings.job_timeout_s)
        state = _RequestState(control=control)

        def notify(stage: str, percent: float | None) -> None:
            control.check(stage)
            if progress is not None:
                progress(stage, percent)

        workdir = Path(tempfile.mkdtemp(prefix="whisperx-job-"))
        self._job_started()
        try:
            # The job thread's own torch work (log-mel features) on its side stream: on the
            # legacy stream, each feature read-back would wait for the Whisper call of other
            # jobs then running on the GPU.
            with self._side_stream_scope():
                return self._run(opts, state, notify, workdir)
        finally:
            self._settle_diarization(state)
            shutil.rmtree(workdir, ignore_errors=True)
            self._job_ended()

    def _batch_fill_chunk_s(self) -> float:
        """``vad.fill_batch``'s shortest window (seconds) for a job starting its ASR now: 0 (no
        filling) while more than ``BATCH_FILL_MAX_JOBS`` jobs are in flight, since their
        windows fill the merged batches instead."""
        with self._jobs_lock:
            busy = self._jobs_in_flight > self.settings.batch_fill_max_jobs
        return 0.0 if busy else self.settings.batch_fill_chunk_s(self.device)

    def _job_started(self) -> None:
        """Count the job in; the first of a busy spell resets the GPU peak (``debug_info``'s
        peak is then the spell's: jobs in flight together share the device)."""
        with self._jobs_lock:
            self._jobs_in_flight += 1
            if self._jobs_in_flight == 1:
                self._reset_gpu_peak()

    def _job_ended(self) -> None:
        """Count the job out; the last one gives the GPU's cached blocks back (freeing while
        other jobs run would only stall them)."""
        with self._jobs_lock:
            self._jobs_in_flight -= 1
            if self._jobs_in_flight == 0:
                self._release_gpu_cache()

    def _run(self, opts: rp_schema.RequestOptions, state: _RequestState, notify: ProgressFn, workdir: Path) -> dict:
        assert self.asr_models is not None, "setup() has run (predict() runs it)"
        compute_type, note = effective_compute_type(opts.compute_type, self.device)
        if note:
            state.warn(note)
        self._check_model_fields(opts, compute_type)
        if self.startup_error and opts.model == self._preload_choice()[0]:
            # Loading it again would fail the same way (or hang on the same Hub) for every job.
            raise ModelLoadError(f"model {opts.model!r} could not be loaded at start-up: {self.startup_error}")
        with state.timed("model_load_s"):
            resolved = resolve_asr_model(opts.model, self.settings.models_dir, opts.huggingface_access_token)
            model, _ = self.asr_models.whisper(resolved, compute_type,
                                               wait_check=functools.partial(state.control.check, "model load"))
            vad_model = self.asr_models.vad()

        notify("download", None)
        control = state.control
        with state.timed("audio_load_s"):
            policy = self.settings.fetch
            path, source = fetch.fetch_audio(opts.audio_file, opts.audio_base64, opts.audio_filename, workdir, policy,
                                             control=control)
            prepared = audio.prepare_audio(path, source, workdir, max_audio_seconds=self.settings.max_audio_seconds,
                                           control=control)
        logger.info("audio: %.2f s, %s", prepared.duration_s, prepared.reason)

        # Diarization needs only the waveform: start it now, in a second thread, so it overlaps
        # VAD, ASR and alignment (GPU kernels of both stages interleave; CPU work overlaps).
        diarization_job = self._start_diarization(prepared.waveform, opts, state) if opts.diarization else None

        notify("vad", None)
        with state.timed("vad_s"):
            # One inference batch per torch-thread item: other jobs' VAD and aligner work runs
            # between two batches of a long file, and this job can stop between them.
            scores = vad.speech_scores_in_steps(vad_model, prepared.waveform,
                                                functools.partial(self._on_torch_thread, control=control, stage="vad"))
            vopts = vad_options(opts)
            windows = vad.speech_windows(scores, vopts, prepared.duration_s)
            fill_chunk_s = self._batch_fill_chunk_s()
            windows = vad.fill_batch(scores, windows, vopts, prepared.duration_s, opts.batch_size, fill_chunk_s)
        if not windows:
            state.warn("no speech detected in the audio: the transcript is empty")

        notify("language", None)
        language, detection = self._language(opts, model, prepared.waveform, vad.detection_windows(scores, windows), state)
        dopts = decode_options(opts)
        # With no speech there is nothing to decode; the tokenizer still needs a language.
        tokenizer = asr.make_tokenizer(model, language or "en", opts.task)
        notify("transcribe", 0.0)
        max_rows = self._windows_per_generate(resolved.path, compute_type)
        with state.timed("transcription_s"):
            transcripts = self._transcribe(model, prepared.waveform, windows, tokenizer, dopts, opts.batch_size, notify, state,
                                           max_rows)
        dropped = sum(t.silent for t in transcripts)
        if dropped:
            state.warn(f"{dropped} window(s) judged non-speech were dropped (no_speech_threshold, text below "
                       "log_prob_threshold where the VAD doubts speech, or a known hallucination phrase or loop)")
        kept = [t for t in transcripts if not t.silent and t.text]
        segments = [{"start": round(t.start, 3), "end": round(t.end, 3), "text": t.text} for t in kept]

        alignment_method = None
        diarization_backend: str | None = None
        embeddings: dict[str, list[float]] | None = None
        try:
            if opts.align_output and kept:
                assert language is not None  # kept text comes from speech windows, which always get a language
                notify("align", None)
                with state.timed("alignment_s"):
                    segments, alignment_method = self._align(model, tokenizer, prepared.waveform, kept, language, opts,
                                                             segments, state)
            if diarization_job is not None:
                notify("diarize", None)
                with state.timed("diarization_wait_s"):
                    segments, diarization_backend, embeddings = self._finish_diarization(diarization_job, segments, state)
        except job_control.JobTimeout as exc:
            # The transcript is done: a deadline now costs only the stages after it.
            skipped = [name for name, wanted, done in (
                ("alignment", opts.align_output and bool(kept), alignment_method is not None),
                ("diarization", diarization_job is not None, diarization_backend is not None)) if wanted and not done]
            state.warn(f"{exc}: the transcript is returned without {' and '.join(skipped) or 'the remaining stages'}")

        response: dict = {
            "segments": segments,
            "detected_language": language,
            "language_probability": None if detection is None else round(detection.probability, 4),
            "warnings": state.warnings,
        }
        if embeddings is not None:
            response["speaker_embeddings"] = embeddings
        self._attach_formats(response, opts, state)
        if opts.debug:
            stages = debug_info.StageResults(
                prepared=prepared, model=resolved, compute_type=compute_type, n_mels=asr.mel_bins(model),
                windows=windows, batch_fill_min_chunk_s=fill_chunk_s, detection=detection,
                windows_per_generate=max_rows, transcripts=transcripts, alignment_method=alignment_method,
                diarization_backend=diarization_backend, diarization_speakers=state.diarization_speakers,
                timings=state.timings,
            )
            runtime = debug_info.Runtime(device=self.device, tf32=self.tf32, gpu_stack_warnings=self.startup_warnings,
                                         startup_timings=self.startup_timings)
            response["debug_info"] = debug_info.build(opts, dopts, vopts, stages, runtime)
        return response

    # ------------------------------------------------------------------ stages
    def _check_model_fields(self, opts: rp_schema.RequestOptions, compute_type: str) -> None:
        """Refuse, before anything is loaded, models a request may not name.

        A ``model`` or ``diarization_model`` on the worker's disk (folder or YAML) is a local
        path like ``audio_file`` and needs ``ALLOW_LOCAL_FILES``. Other names must be allowed
        (``ALLOWED_MODELS``; always: the defaults and, for ``model``, the folders of
        ``MODELS_DIR``), since each one loaded takes memory. Values set by the operator (ENV
        or default) are trusted.
        """
        allow_local = self.settings.fetch.allow_local_files
        allowed = self.settings.allowed_models
        if _from_request(opts, "model"):
            name = opts.model
            _refuse_local_path("model", name, allow_local, "give a model name", "models")
            if not looks_like_local_path(name) and not (
                    in_models_dir(name, self.settings.models_dir)
                    or is_allowed(name, compute_type, allowed, self._default_asr_models())):
                raise UserError(f"model {name!r} with compute_type {compute_type} is not allowed on this worker "
                                f"(ALLOWED_MODELS; allowed: the preloaded model, the models in MODELS_DIR"
                                f"{', ' + ', '.join(allowed) if allowed else ''})")
        if _from_request(opts, "diarization_model"):
            name = opts.diarization_model
            _refuse_local_path("diarization_model", name, allow_local, "give a Hub id", "pipelines")
            if not looks_like_local_path(name) and not is_allowed(name, None, allowed, self._default_diarization_models()):
                raise UserError(f"diarization_model {name!r} is not allowed on this worker (ALLOWED_MODELS; "
                                f"allowed: {', '.join(sorted(self._default_diarization_models() | set(allowed)))})")

    def _on_torch_thread(self, work: Callable[[], T], control: job_control.JobControl | None = None, stage: str = "torch work") -> T:
        """``work()`` run in the torch thread, in this job's context (its log lines stay its
        own); this thread waits for it, in turn with other jobs' items (first come, first
        served). With ``control``, the wait ends when the job must stop: an item not yet
        started is withdrawn, one already running finishes alone (one batch or segment)."""
        if control is not None:
            control.check(stage)
        future = self._torch_thread.submit(contextvars.copy_context().run, work)
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

    def _windows_per_generate(self, model_path: str, compute_type: str) -> int | None:
        """Cap on windows per generate call: on a GPU the decoder cache's (``ASR_DECODE_CACHE_MB``);
        on a CPU serving several jobs at once ``CPU_SHARED_WINDOWS_PER_CALL``, so that a clip's
        call waits behind at most a few of a long file's windows; None for none."""
        if self.device != "cuda":
            return CPU_SHARED_WINDOWS_PER_CALL if self.max_concurrent_jobs > 1 else None
        budget = self.settings.asr_decode_cache_mb
        dims = whisper_dimensions(model_path) if self.device == "cuda" and budget > 0 else None
        if dims is None:
            return None
        return asr.windows_in_flight(dims.decoder_layers, dims.d_model, budget, 4 if compute_type == "float32" else 2)

    def _transcribe(self, model: WhisperModel, waveform: np.ndarray, windows: Sequence[vad.SpeechWindow], tokenizer: Tokenizer,
                    dopts: asr.DecodeOptions, batch_size: int, notify: ProgressFn, state: _RequestState,
                    max_rows: int | None = None) -> list[asr.WindowTranscript]:
        """Batched ASR; on out-of-memory, retry with half the batch (down to 1) and warn."""
        while True:
            try:
                return asr.transcribe_windows(
                    model, waveform, windows, tokenizer, dopts, batch_size, self.device,
                    progress=lambda pct: notify("transcribe", pct), max_rows=max_rows,
                    calls=self.whisper_calls.for_job(functools.partial(state.control.check, "transcription")),
                )
            except Exception as exc:
                if not is_out_of_memory(exc) or batch_size <= 1:
                    raise
                self._release_gpu_cache()
                state.warn(f"out of memory at batch_size={batch_size}; retrying with batch_size={batch_size // 2}")
                batch_size //= 2

    def _language(self, opts: rp_schema.RequestOptions, model: WhisperModel, waveform: np.ndarray,
                  windows: Sequence[vad.SpeechWindow], state: _RequestState) -> tuple[str | None, asr.LanguageDetection | None]:
        """The request's language, or the one detected on speech windows (None when there
        is no speech to judge)."""
        if opts.language:
            return opts.language, None
        if not windows:
            return None, None
        if not model.model.is_multilingual:
            return "en", None
        with state.timed("language_detection_s"):
            detection = asr.detect_language(
                model, waveform, windows, opts.language_detection_min_prob,
                opts.language_detection_max_tries, self.device,
                self.whisper_calls.for_job(functools.partial(state.control.check, "language detection")),
            )
        if not detection.met_threshold:
            state.warn(
                f"language detection stayed below language_detection_min_prob="
                f"{opts.language_detection_min_prob} after {len(detection.tries)} tries; "
                f"using {detection.language!r} (p={detection.probability:.2f})"
            )
        logger.info("language %s (p=%.2f)", detection.language, detection.probability)
        return detection.language, detection

    def _align(self, model: WhisperModel, tokenizer: Tokenizer, waveform: np.ndarray, kept: list[asr.WindowTranscript],
               language: str, opts: rp_schema.RequestOptions, segments: list[dict],
               state: _RequestState) -> tuple[list[dict], str | None]:
        """wav2vec2 alignment in the language of the text (English when translating), else
        Whisper's own word timings; never raises."""
        assert self.aligners is not None, "setup() has run"
        language = output_language(language, opts.task)
        control = state.control

        def check() -> None:
            control.check("alignment")

        run_forward = functools.partial(self._on_torch_thread, control=control, stage="alignment")
        try:
            aligner, load_s = self.aligners.get(language, wait_check=functools.partial(control.check, "aligner load"))
            state.timings["alignment_model_load_s"] = round(load_s, 4)
            punkt_note = alignment.ensure_punkt(language)
            if punkt_note:
                state.warn(punkt_note)
            return (alignment.align_with_wav2vec2(kept, aligner, waveform, self.device, check=check,
                                                  run_forward=run_forward),
                    f"wav2vec2 ({aligner.source})")
        except alignment.AlignerUnavailable as exc:
            reason = str(exc)
        except job_control.JobStopped:
            raise
        except Exception as exc:  # OOM or a bug in the aligner must not lose the transcript
            raise_if_device_fault(exc, "alignment")
            reason = f"wav2vec2 alignment failed: {type(exc).__name__}: {str(exc)[:200]}"
        try:
            aligned = alignment.whisper_word_timings(model, waveform, kept, tokenizer, opts.batch_size, self.device,
                                                     check=check)
        except job_control.JobStopped:
            raise
        except Exception as exc:
            raise_if_device_fault(exc, "alignment")
            state.warn(f"word alignment failed ({reason}; whisper timings: {type(exc).__name__}); segments have no word timestamps")
            return segments, None
        state.warn(f"{reason}; word timestamps come from Whisper's cross-attention instead")
        return aligned, "whisper cross-attention"

    def _start_diarization(self, waveform: np.ndarray, opts: rp_schema.RequestOptions,
                           state: _RequestState) -> Future[diarization.DiarizationOutput] | None:
        """Submit diarization to the background thread; returns a Future (or None if unavailable).

        The call runs in a copy of this request's context, so its log lines still land in
        this request's ``logs``.
        """
        diarizers = self.diarizers
        if diarizers is None:
            state.warn("diarization is not available in this worker; speakers are not labelled")
            return None
        from stages import diarization

        context = contextvars.copy_context()
        submitted = time.perf_counter()

        def check(percent: float) -> None:
            # Called after each segmentation/embedding batch: a job that is over (failed,
            # or out of its time budget) must not keep the one diarization thread busy.
            if state.stop.is_set() or state.control.stopped():
                raise diarization.Stopped("the job ended before its diarization did")

        def stop_waiting() -> None:
            check(0.0)

        def run() -> diarization.DiarizationOutput:
            # How long this job's diarization waited for a thread and a turn (other jobs' runs).
            with self._diarization_turns.turn(stop_waiting) as held:
                started = time.perf_counter()
                state.timings["diarization_queue_s"] = round(started - submitted, 4)

                def at_batch(percent: float) -> None:
                    check(percent)
                    held.pass_turn()  # a newer run waiting goes first: long files do not hold the turn

                try:
                    check(0.0)
                    with self._side_stream_scope():
                        return diarizers.diarize(
                            waveform,
                            model=opts.diarization_model,
                            token=opts.huggingface_access_token,
                            min_speakers=opts.min_speakers,
                            max_speakers=opts.max_speakers,
                            num_speakers=opts.num_speakers,
                            return_embeddings=opts.return_speaker_embeddings,
                            progress_callback=at_batch,
                        )
                finally:
                    state.timings["diarization_s"] = round(time.perf_counter() - started, 4)

        state.diarization_job = self._diarization_pool.submit(context.run, run)
        return state.diarization_job

    def _settle_diarization(self, state: _RequestState) -> None:
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

    def _side_stream(self) -> torch.cuda.Stream | None:
        """The calling thread's own non-blocking CUDA stream (``TORCH_SIDE_STREAMS``), created
        on first use; None on a CPU or with the setting off.

        CTranslate2 computes on the legacy default stream (torch's default) in the first thread
        that touches CUDA and on blocking streams elsewhere, which wait for the legacy stream and
        make it wait for them (its ``cuda/utils.cc``): torch kernels there and CTranslate2's
        would take turns. On a non-blocking stream they run side by side.
        """
        if self.device != "cuda" or not self.settings.torch_side_streams:
            return None
        import torch

        stream = getattr(self._side_streams, "stream", None)
        if stream is None:  # created by each thread, used only there
            stream = self._side_streams.stream = torch.cuda.Stream()
        return stream

    def _use_side_stream(self) -> None:
        """The torch thread's start: its side stream becomes its current stream for good. Its
        callers read results through host copies (the VAD's scores) or CUDA events (the
        aligner's emissions), both ordered on that stream, so nothing waits at the end of a call
        and an aligner forward can run while its job reads the previous one."""
        stream = self._side_stream()
        if stream is not None:
            import torch

            torch.cuda.set_stream(stream)

    @contextmanager
    def _side_stream_scope(self) -> Iterator[None]:
        """The calling thread's torch kernels on its side stream (``_side_stream``) within the
        block (a job, a diarization run); waits for the stream on leaving, so results are
        complete when another thread reads them."""
        stream = self._side_stream()
        if stream is None:
            yield
            return
        import torch

        with torch.cuda.stream(stream):
            yield
        stream.synchronize()

    def _finish_diarization(self, job: Future[diarization.DiarizationOutput], segments: list[dict],
                            state: _RequestState) -> tuple[list[dict], str | None, dict[str, list[float]] | None]:
        """Wait for diarization and label words and segments; a failure leaves them unlabelled."""
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
            raise_if_device_fault(exc, "diarization")
            state.warn(f"diarization failed ({type(exc).__name__}: {str(exc)[:200]}); speakers are not labelled")
            return segments, None, None
        for message in out.warnings:
            state.warn(message)
        state.diarization_speakers = len(out.speakers)
        if not segments:
            return segments, out.backend, out.speaker_embeddings
        return speaker_assignment.assign_speakers(segments, out.assignment_turns), out.backend, out.speaker_embeddings

    def _attach_formats(self, response: dict, opts: rp_schema.RequestOptions, state: _RequestState) -> None:
        """Subtitle/text renderings next to ``segments`` when ``output_format`` asks for one."""
        response["output_format"] = opts.output_format
        if opts.output_format == "json":
            return
        try:
            from stages import formats
        except ImportError:
            state.warn(f"output_format {opts.output_format!r} is not available in this build")
            return
        response["output"] = formats.render(response["segments"], opts.output_format)

    def _reset_gpu_peak(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def _release_gpu_cache(self) -> None:
        """Give cached blocks back between requests so one long job cannot starve the next."""
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
