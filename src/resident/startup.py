"""Start-up: what the worker builds once, before its first job, in this order: the CUDA kernel
cache and the GPU stack check (before CUDA starts), the device and how many jobs and
diarization threads it gets (``lanes``), the model registries, the precision policy, then the
warm-up (``warmup.WarmUp``: the default ASR model, the VAD, the preloaded aligners and the
diarization pipeline, each in the lane that later runs it for jobs; the worker is ready before
the diarization lane ends).

``start_up`` returns a ``Resident``: everything built, for the Predictor to keep.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import rp_schema
from resident import batching, gpu_check, precision, warmup
from resident.diarization_ready import DiarizationReady
from resident.lanes import Lanes, default_concurrent_jobs, default_diarization_threads
from resident.models import AsrModels, pick_device
from settings import WorkerSettings, use_kernel_cache
from stages import alignment

if TYPE_CHECKING:
    from stages import diarization

logger = logging.getLogger("predict")  # the Predictor's log lines, as before the split


def preload_choice(settings: WorkerSettings) -> tuple[str, str]:
    """The model a request with no ``model`` field would get (PRELOAD_MODEL, else the
    ``model`` ENV alias, else the schema default), and likewise its compute type."""
    env, defaults = settings.request_env, rp_schema.defaults()
    name = settings.preload_model or env.text("model") or defaults["model"]
    compute = settings.preload_compute_type or env.text("compute_type") or defaults["compute_type"]
    return name, compute


def default_asr_models(settings: WorkerSettings) -> set[str]:
    """The preloaded ``model`` and the one a request gets without naming one (ENV)."""
    return {preload_choice(settings)[0], *settings.request_env.texts("model")}


def default_diarization_models(settings: WorkerSettings) -> set[str]:
    """The ``diarization_model`` a request gets without naming one (schema default, ENV)."""
    return {rp_schema.defaults()["diarization_model"], *settings.request_env.texts("diarization_model")}


@dataclass
class Resident:
    """What start-up built and every job shares."""

    device: str
    max_concurrent_jobs: int
    asr_models: AsrModels
    aligners: alignment.AlignmentModels
    tf32: bool
    gpu_stack_warnings: list[str]
    # The diarization registry, built by start-up's diarization lane, which may end after
    # start_up returns (jobs that need it wait for it).
    diarization: DiarizationReady = field(default_factory=DiarizationReady)
    # Why the default model did not load (None: it did); jobs naming it get this error.
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _build_diarizers(settings: WorkerSettings, device: str, replicas: int) -> diarization.DiarizationModels | None:
    """The diarization registry (the warm-up runs this in a diarization thread, beside the ASR
    model's load). pyannote.audio is imported only when a requested pipeline first loads, and
    its precision handling is pinned then (``precision.pin_pyannote``)."""
    try:
        from stages import diarization
    except ImportError:  # pragma: no cover - module always ships with the worker
        return None
    return diarization.DiarizationModels(
        device, settings.offline_diarization_dir, max_cached=settings.max_cached_models,
        kept_models=frozenset(default_diarization_models(settings)), replicas=replicas,
        prepare_pyannote=precision.pin_pyannote,
    )


def start_up(settings: WorkerSettings, lanes: Lanes, timings: dict[str, float]) -> Resident:
    """Build and warm up everything jobs share (see the module docstring); ``timings`` is
    filled in place. A failure to load the default model is logged and kept in
    ``Resident.error``, not raised: the worker keeps serving requests that name another model.
    """
    started = time.perf_counter()
    # Before CUDA starts: where the driver keeps (and finds) the kernels it compiles.
    kernel_cache = use_kernel_cache(settings.kernel_cache_dir)
    if kernel_cache:
        logger.info("CUDA kernel cache: %s", kernel_cache)
    # An incomplete CUDA stack (no libcublas.so.12 for CTranslate2) is said clearly at
    # start-up instead of as an obscure error in the first job.
    gpu_warnings = gpu_check.check_gpu_stack()
    for message in gpu_warnings:
        logger.error("GPU stack: %s", message)
    # Before the first CUDA allocation: torch then grows one mapped segment per stream
    # instead of caching differently sized blocks, so the aligner's and the diarization's
    # varying shapes do not leave fragments that CTranslate2 (outside torch) cannot use.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    device = pick_device(settings.device)
    max_jobs = settings.max_concurrent_jobs or default_concurrent_jobs(device)
    diarization_threads = settings.diarization_threads or default_diarization_threads(device, max_jobs)
    lanes.configure(device, settings.torch_side_streams, diarization_threads, max_jobs)
    asr_models = AsrModels(device, settings.models_dir, settings.cpu_threads, max_cached=settings.max_cached_models)
    aligners = alignment.AlignmentModels(device, settings.align_model_for, max_cached=settings.max_cached_aligners,
                                         kept=frozenset(settings.preload_align_languages))
    # Once, before any stage runs in any thread: no stage (nor pyannote) changes it later.
    tf32 = precision.apply(device, settings.torch_allow_tf32, pin=False)
    resident = Resident(device=device, max_concurrent_jobs=max_jobs, asr_models=asr_models, aligners=aligners,
                        tf32=tf32, gpu_stack_warnings=gpu_warnings, timings=timings,
                        diarization=DiarizationReady(tasks=diarization_threads if settings.warmup else 1))
    timings["before_warmup_s"] = round(time.perf_counter() - started, 3)
    warm_up = warmup.WarmUp(
        settings=settings, device=device, asr_models=asr_models, aligners=aligners,
        diarizers=lambda: _build_diarizers(settings, device, max(diarization_threads, max_jobs)),
        diarization_ready=resident.diarization,
        diarization_pool=lanes.diarization_pool, diarization_threads=diarization_threads,
        torch_thread=lanes.torch_thread, side_stream_scope=lanes.side_stream_scope,
        # The cap on windows per generate call that jobs get, so the ASR warm-up runs their shapes.
        windows_per_generate=lambda path, compute: batching.windows_per_generate(
            device, max_jobs, settings.asr_decode_cache_mb, path, compute),
        release_gpu_cache=lanes.release_gpu_cache, timings=timings,
    )
    resident.error = warm_up.run(*preload_choice(settings))
    timings["setup_s"] = round(time.perf_counter() - started, 3)
    logger.info("worker ready on %s in %.1f s (up to %d jobs at once)", device, timings["setup_s"], max_jobs)
    return resident
