"""Worker settings: every ENV variable the worker reads, parsed once at start-up.

``WorkerSettings.from_env`` is the one place ENV is read; the object is handed to whoever
needs a part of it (the Predictor, the handler, the fetcher, the result delivery), so no
module reads ``os.environ`` per request. What it holds:

- the worker process itself: where models live, which device to use, warm-up, log limits;
- ``fetch``: the download limits and permissions (:class:`fetch.FetchPolicy`);
- ``results``: where large results go (:class:`ResultDelivery`);
- ``request_env``: the request fields' ENV aliases (``rp_schema.read_request_env``); the
  fields themselves, their defaults and rules are declared in ``rp_schema``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from fetch import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_MAX_BYTES, DEFAULT_READ_TIMEOUT_S, FetchPolicy
from logs import DEFAULT_LOG_PATH
from result_store import DEFAULT_INLINE_LIMIT_BYTES, ResultDelivery
from rp_schema import RequestEnv, read_request_env


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"ENV {name}={raw!r} is not a boolean (use true/false)")


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"ENV {name}={raw!r} is not an integer") from None


def _env_min_int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    """An integer ENV value of at least ``minimum``."""
    value = _env_int(environ, name, default)
    if value < minimum:
        raise ValueError(f"ENV {name}={value} must be >= {minimum}")
    return value


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"ENV {name}={raw!r} is not a number") from None
    if value < 0:
        raise ValueError(f"ENV {name}={raw!r} must be >= 0")
    return value


OFFLINE_DIARIZATION_SUBDIR = "offline-diarization"  # under MODELS_DIR, as builder/fetch_models.py bakes it
DEFAULT_BATCH_FILL_CHUNK_S = 10.0
"""Smallest chunk size (longest window, seconds) GPU batch filling cuts to: shorter gives Whisper too little context."""


@dataclass(frozen=True)
class WorkerSettings:
    """Process-wide configuration.

    models_dir: folder searched for ``<model name>`` before the Hub (``/models`` in the image).
    device: "cuda", "cpu" or "auto" (cuda when available).
    preload_model: ASR model loaded at start-up ("" = the schema's default model).
    preload_compute_type: compute type for the preloaded model ("" = the schema default).
    warmup: run a short dummy transcription at start-up so the first job is not slower.
    log_tail_chars: cap on the ``logs`` field of a response, in characters.
    align_model_overrides: language -> Hub id or local dir for the wav2vec2 aligner
        (ENV ``ALIGN_MODEL_<LANG>``, e.g. ``ALIGN_MODEL_RU=/models/wav2vec2-ru``).
    offline_diarization_dir: weights of the token-free diarization pipeline (ENV
        ``OFFLINE_DIARIZATION_DIR``; default ``<models_dir>/offline-diarization``, i.e.
        ``/models/offline-diarization`` as in the image, ``.models/offline-diarization`` for a
        local run with ``MODELS_DIR=.models``, which scripts/setup.sh links to the weights).
    cpu_threads: CTranslate2 threads on CPU (0 = library default).
    job_timeout_s: time budget of one job in seconds (``JOB_TIMEOUT_S``; 0 = none).
    preload_align_languages: aligners loaded at start-up (``PRELOAD_ALIGN_LANGUAGES``,
        comma-separated; default ru: the worker is Russian-first).
    batch_fill_min_chunk_s: when a file gives fewer ASR windows than ``batch_size``, cut
        them shorter at pauses (``chunk_size`` lowered, but not below this many seconds), so
        one batch decodes them side by side (``BATCH_FILL_MIN_CHUNK_S``; None = 10 s on a GPU and off on a CPU, where more
        windows cost more encoder time; 0 = off).
    batch_fill_max_jobs: batch filling applies to a job only while at most this many jobs are in
        flight (``BATCH_FILL_MAX_JOBS``, >= 1). Filling buys one job's latency with more windows
        of GPU work; with other jobs in flight their windows fill the batch instead.
    asr_decode_cache_mb: GPU memory (MiB) the decoder's cross-attention cache may take in
        one generate call (``ASR_DECODE_CACHE_MB``; 0 = no cap): a batch needing more is
        decoded in consecutive calls. 4096 lets large-v3 decode 16 windows at once (peak
        ~13 GB at batch 32 instead of ~18 GB, for ~15 % more ASR time).
    torch_side_streams: on a GPU, the threads that run torch work (the diarization threads,
        the torch thread of the VAD and the aligners, and each job's thread for its log-mel
        features) launch their kernels on CUDA streams of their own (``TORCH_SIDE_STREAMS``,
        default on; the older name ``DIARIZATION_SIDE_STREAM`` is still read when it is
        unset). CTranslate2 computes on the legacy default stream (torch's default) or on
        streams that wait for it: torch kernels there and CTranslate2's take turns instead
        of sharing the GPU.
    allowed_models: what a request may name as ``model`` / ``diarization_model`` besides
        the defaults (``ALLOWED_MODELS``, comma-separated): a name, ``name:compute_type``
        to allow one compute type only, or ``*`` for any Hub id. Always allowed: the
        preloaded and default models (any compute type) and the folders in ``models_dir``.
    max_cached_models: non-default models each registry (ASR, diarization) keeps resident
        at once (``MAX_CACHED_MODELS``, >= 1); the least recently used one is dropped first.
    torch_allow_tf32: on a GPU, let torch's float32 matmuls and cuDNN convolutions (VAD,
        diarization, log-mel features; the aligner runs in float16) use TF32
        (``TORCH_ALLOW_TF32``, default on). Set once at start-up for the whole process
        (``precision.apply``); pyannote may no longer change it.
    fetch: download limits and permissions (``MAX_AUDIO_BYTES``, ``DOWNLOAD_CONNECT_TIMEOUT``,
        ``DOWNLOAD_READ_TIMEOUT``, ``ALLOW_PRIVATE_URLS``, ``ALLOW_LOCAL_FILES``); the
        fetcher takes it, and so do the model checks (a local ``model`` path needs
        ``ALLOW_LOCAL_FILES`` like a local ``audio_file``).
    results: inline limit and bucket of large results (``RESULT_INLINE_LIMIT_BYTES``,
        RunPod's ``BUCKET_*``).
    request_env: the request fields' ENV aliases, parsed and checked once; a request falls
        back to them field by field (``rp_schema.resolve_options``).
    log_path, log_level: the container log file and the root log level (``CONTAINER_LOG_PATH``,
        ``LOG_LEVEL``), for ``logs.setup_logging``.
    max_concurrent_jobs: jobs one worker runs at once (``MAX_CONCURRENT_JOBS``; 0 = chosen from
        the device: ``predict.default_concurrent_jobs``). The handler tells RunPod through the
        SDK's ``concurrency_modifier``; concurrent jobs share Whisper calls (``batching``).
    diarization_threads: diarizations that run at once, each in its own thread with its own
        copy of the offline pipeline (``DIARIZATION_THREADS``; 0 = chosen from the device and
        ``max_concurrent_jobs``: ``predict.default_diarization_threads``).
    kernel_cache_dir: where the CUDA driver keeps the GPU code it compiles from PTX
        (``KERNEL_CACHE_DIR``; default: a folder on RunPod's network volume when one is mounted
        at ``/runpod-volume``, else the driver's own default in the container). Set as
        ``CUDA_CACHE_PATH`` before CUDA starts, unless that is set already: on GPUs for which
        CTranslate2's wheel ships no machine code (H100/H200, L4, L40S) the first start of an
        endpoint compiles ~14 s of kernels, and every later cold start that finds them on the
        volume skips that.
    report_progress: send stage progress to RunPod's job server (set when ``RUNPOD_POD_ID``
        says the process runs on RunPod).
    """

    models_dir: str = "/models"
    device: str = "auto"
    preload_model: str = ""
    preload_compute_type: str = ""
    warmup: bool = True
    log_tail_chars: int = 20_000
    align_model_overrides: tuple[tuple[str, str], ...] = ()
    offline_diarization_dir: str = "/models/offline-diarization"
    cpu_threads: int = 0
    job_timeout_s: float = 0.0
    preload_align_languages: tuple[str, ...] = ("ru",)
    batch_fill_min_chunk_s: float | None = None
    batch_fill_max_jobs: int = 1
    asr_decode_cache_mb: float = 4096.0
    torch_side_streams: bool = True
    allowed_models: tuple[str, ...] = ()
    max_cached_models: int = 2
    torch_allow_tf32: bool = True
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    results: ResultDelivery = field(default_factory=ResultDelivery)
    request_env: RequestEnv = field(default_factory=RequestEnv)
    report_progress: bool = False
    log_path: str = DEFAULT_LOG_PATH
    log_level: str = "INFO"
    max_concurrent_jobs: int = 0
    kernel_cache_dir: str = ""
    diarization_threads: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if environ is None else environ
        overrides = tuple(
            sorted(
                (key[len("ALIGN_MODEL_") :].lower(), value)
                for key, value in env.items()
                if key.startswith("ALIGN_MODEL_") and value.strip()
            )
        )
        device = env.get("WORKER_DEVICE", "auto").strip().lower() or "auto"
        if device not in {"auto", "cuda", "cpu"}:
            raise ValueError(f"ENV WORKER_DEVICE={device!r} must be auto, cuda or cpu")
        models_dir = env.get("MODELS_DIR", "/models").strip() or "/models"
        return cls(
            models_dir=models_dir,
            device=device,
            preload_model=env.get("PRELOAD_MODEL", "").strip(),
            preload_compute_type=env.get("PRELOAD_COMPUTE_TYPE", "").strip(),
            warmup=_env_bool(env, "WARMUP", True),
            # A negative cap means no log lines in responses, as 0 does.
            log_tail_chars=max(0, _env_int(env, "LOG_TAIL_CHARS", 20_000)),
            align_model_overrides=overrides,
            # Next to the ASR models by default, so pointing MODELS_DIR at a local folder
            # is enough to find every weight (the image sets both to /models anyway).
            offline_diarization_dir=env.get("OFFLINE_DIARIZATION_DIR", "").strip()
            or os.path.join(models_dir, OFFLINE_DIARIZATION_SUBDIR),
            cpu_threads=_env_int(env, "CPU_THREADS", 0),
            job_timeout_s=_env_float(env, "JOB_TIMEOUT_S", 0.0),
            preload_align_languages=tuple(
                lang.strip().lower() for lang in env.get("PRELOAD_ALIGN_LANGUAGES", "ru").split(",") if lang.strip()
            ),
            batch_fill_max_jobs=_env_min_int(env, "BATCH_FILL_MAX_JOBS", 1, 1),
            asr_decode_cache_mb=_env_float(env, "ASR_DECODE_CACHE_MB", 4096.0),
            torch_side_streams=_env_bool(env, "TORCH_SIDE_STREAMS", _env_bool(env, "DIARIZATION_SIDE_STREAM", True)),
            allowed_models=tuple(entry.strip() for entry in env.get("ALLOWED_MODELS", "").split(",") if entry.strip()),
            max_cached_models=_env_min_int(env, "MAX_CACHED_MODELS", 2, 1),
            torch_allow_tf32=_env_bool(env, "TORCH_ALLOW_TF32", True),
            batch_fill_min_chunk_s=(
                _env_float(env, "BATCH_FILL_MIN_CHUNK_S", 0.0) if env.get("BATCH_FILL_MIN_CHUNK_S", "").strip() else None
            ),
            fetch=fetch_policy_from_env(env),
            results=result_delivery_from_env(env),
            request_env=read_request_env(env),
            report_progress=bool(env.get("RUNPOD_POD_ID", "").strip()),
            log_path=env.get("CONTAINER_LOG_PATH", "").strip() or DEFAULT_LOG_PATH,
            log_level=env.get("LOG_LEVEL", "").strip() or "INFO",
            max_concurrent_jobs=_env_min_int(env, "MAX_CONCURRENT_JOBS", 0, 0),
            kernel_cache_dir=env.get("KERNEL_CACHE_DIR", "").strip() or default_kernel_cache_dir(),
            diarization_threads=_env_min_int(env, "DIARIZATION_THREADS", 0, 0),
        )

    def batch_fill_chunk_s(self, device: str) -> float:
        """Shortest window (seconds) ``vad.fill_batch`` may cut to on ``device``; 0 = off."""
        if self.batch_fill_min_chunk_s is not None:
            return self.batch_fill_min_chunk_s
        return DEFAULT_BATCH_FILL_CHUNK_S if device == "cuda" else 0.0

    def align_model_for(self, language: str) -> str | None:
        """The configured aligner for ``language``, or None to use whisperX's default."""
        return dict(self.align_model_overrides).get(language)


RUNPOD_VOLUME = "/runpod-volume"  # where RunPod mounts an endpoint's network volume
KERNEL_CACHE_SUBDIR = ".cache/whisperx-worker/cuda-kernels"
KERNEL_CACHE_MAX_BYTES = 4 * 2**30  # the driver's default cap (256 MiB) holds less than one model's kernels


def default_kernel_cache_dir(volume: str = RUNPOD_VOLUME) -> str:
    """A kernel cache folder on the network volume when one is mounted, else "" (driver default)."""
    return os.path.join(volume, KERNEL_CACHE_SUBDIR) if os.path.isdir(volume) else ""


def use_kernel_cache(folder: str, environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point the CUDA driver's kernel cache at ``folder`` (call before CUDA starts). Leaves an
    operator's own ``CUDA_CACHE_PATH`` alone; returns the folder in use, or None."""
    env = os.environ if environ is None else environ
    if env.get("CUDA_CACHE_PATH"):
        return env["CUDA_CACHE_PATH"]
    if not folder:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None  # a read-only volume: the driver's default
    env["CUDA_CACHE_PATH"] = folder
    env.setdefault("CUDA_CACHE_MAXSIZE", str(KERNEL_CACHE_MAX_BYTES))
    return folder


def fetch_policy_from_env(environ: Mapping[str, str]) -> FetchPolicy:
    """The download policy from ENV: ``MAX_AUDIO_BYTES`` (bytes), ``DOWNLOAD_CONNECT_TIMEOUT`` and
    ``DOWNLOAD_READ_TIMEOUT`` (seconds), ``ALLOW_PRIVATE_URLS`` and ``ALLOW_LOCAL_FILES``
    (true/1/yes/on). Raises ValueError on unparsable values, since that is a deployment bug."""
    return FetchPolicy(
        max_bytes=_env_int(environ, "MAX_AUDIO_BYTES", DEFAULT_MAX_BYTES),
        connect_timeout_s=_env_float(environ, "DOWNLOAD_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S),
        read_timeout_s=_env_float(environ, "DOWNLOAD_READ_TIMEOUT", DEFAULT_READ_TIMEOUT_S),
        allow_private_urls=_env_bool(environ, "ALLOW_PRIVATE_URLS", False),
        allow_local_files=_env_bool(environ, "ALLOW_LOCAL_FILES", False),
    )


def result_delivery_from_env(environ: Mapping[str, str]) -> ResultDelivery:
    """Where large results go: ``RESULT_INLINE_LIMIT_BYTES`` (a bad value is logged and the
    default kept and the problem logged with each result: a result is never lost over it) and RunPod's bucket ENV
    (``BUCKET_ENDPOINT_URL``, ``BUCKET_ACCESS_KEY_ID``, ``BUCKET_SECRET_ACCESS_KEY``, optional
    ``BUCKET_NAME``), which the SDK's upload helper reads itself."""
    limit, warning = DEFAULT_INLINE_LIMIT_BYTES, None
    try:
        limit = _env_int(environ, "RESULT_INLINE_LIMIT_BYTES", DEFAULT_INLINE_LIMIT_BYTES)
    except ValueError:
        raw = environ.get("RESULT_INLINE_LIMIT_BYTES", "").strip()
        warning = f"RESULT_INLINE_LIMIT_BYTES={raw!r} is not an integer; using {DEFAULT_INLINE_LIMIT_BYTES}"
    return ResultDelivery(
        inline_limit_bytes=limit,
        limit_warning=warning,
        bucket_configured=all(
            environ.get(name) for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
        ),
        bucket_name=environ.get("BUCKET_NAME") or None,
    )


PROCESS_TEMP_PREFIX = "whisperx-worker-"


def use_own_temp_dir() -> str:
    """Give this process a temp folder of its own, removed when it exits; returns its path.

    Created inside the current temp folder (``TMPDIR`` as given), then set as ``TMPDIR``,
    ``TEMP``, ``TMP`` (child processes such as ffmpeg) and ``tempfile.tempdir`` (this
    process). Call it before importing torch, pyannote or whisperX: they write files there
    at import and load time (``.ses``, ``_remote_module_non_scriptable.py``) that nothing
    else deletes, and per-job folders land in it too. Removed at exit (``atexit``), also on
    SIGTERM, which is how a container is stopped and which otherwise skips ``atexit``.
    """
    path = tempfile.mkdtemp(prefix=PROCESS_TEMP_PREFIX, dir=tempfile.gettempdir())
    for name in ("TMPDIR", "TEMP", "TMP"):
        os.environ[name] = path
    tempfile.tempdir = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # sys.exit runs the atexit handlers; 128 + 15 is the status a SIGTERM death reports.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return path
