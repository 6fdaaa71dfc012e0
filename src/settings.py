"""Worker settings: every ENV variable the worker reads, parsed once at start-up.

``WorkerSettings.from_env`` is the one place ENV is read; the object is handed to whoever
needs a part of it (the Predictor, the handler, the fetcher, the result delivery), so no
module reads ``os.environ`` per request. What it holds:

- the worker process itself: where models live, which device to use, warm-up, log limits;
- ``fetch``: the download limits and permissions (:class:`fetch.FetchPolicy`);
- ``results``: where large results go (:class:`ResultDelivery`);
- ``request_env``: the request fields' ENV aliases (``rp_schema.read_request_env``); the
  fields themselves, their defaults and rules are declared in ``rp_schema``.

Every worker variable is declared once, in :data:`ENV_TABLE` (name, type, default, range,
meaning): parsing, range checks, error messages, the dataclass defaults and the README's
table all come from it. Numbers must be finite and in range (``nan``, ``inf`` and negative
values are refused where they mean nothing); a bad environment raises one
:class:`SettingsError` that lists every bad variable, so an operator fixes them in one go.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from logs import DEFAULT_LOG_PATH, redact
from result_store import DEFAULT_INLINE_LIMIT_BYTES, ResultDelivery
from rp_schema import RequestEnv, read_request_env
from scalar_text import FALSE_WORDS, TRUE_WORDS, parse_scalar
from stages.fetch import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_MAX_BYTES, DEFAULT_READ_TIMEOUT_S, FetchPolicy


class SettingsError(ValueError):
    """The worker's ENV holds values it cannot run with.

    ``problems`` has one message per bad variable (each names the variable, its value and what
    is allowed); the message lists them all. Raised at start-up by :meth:`WorkerSettings.from_env`:
    a deployment bug, which every job should answer with instead of running.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} bad worker settings: " + "; ".join(self.problems)
        super().__init__(message)




def _number(value: float) -> str:
    """A bound as an operator writes it: 3600, 0.5, 2147483648 (never 2.14748e+09)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Bad(Exception):
    """Private: why one ENV text cannot be used (the message of a SettingsError problem)."""


@dataclass(frozen=True)
class EnvVar:
    """One worker ENV variable: how it is parsed, checked and documented.

    kind: bool, int, float, str, or tuple (a comma-separated list of strings).
    default: the value when the variable is unset or blank (a tuple: when unset; set blank = empty).
    min, max: inclusive bounds of a number (``min_exclusive``: min itself is refused).
    unit: what a number counts ("seconds", "bytes"), for messages and docs.
    zero: what 0 means, when it means something special ("no budget", "auto").
    choices: the allowed values of a str (after ``case`` is applied: "lower" / "upper").
    older: older names, read (first set wins) when this one is unset.
    secret: the value is never shown in a message.
    default_doc: the default as the docs say it, when it is computed at start-up.
    operator: False for variables RunPod sets itself (not a deployment setting).
    """

    name: str
    kind: type
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    unit: str = ""
    zero: str = ""
    choices: tuple[str, ...] = ()
    case: str = ""
    older: tuple[str, ...] = ()
    secret: bool = False
    default_doc: str = ""
    operator: bool = True

    # ------------------------------------------------------------------ docs
    def type_text(self) -> str:
        """The type as the docs say it: "float (seconds)", "bool", "list", "auto|cuda|cpu"."""
        if self.choices:
            return "\\|".join(f"`{choice}`" for choice in self.choices)
        base = {bool: "bool", int: "int", float: "float", str: "string", tuple: "list"}[self.kind]
        return f"{base} ({self.unit})" if self.unit else base

    def range_text(self) -> str:
        """The allowed range, e.g. ">= 0 and <= 604800" ("" when any value of the type goes)."""
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {_number(self.min)}")
        if self.max is not None:
            parts.append(f"<= {_number(self.max)}")
        return " and ".join(parts)

    def default_text(self) -> str:
        """The default as the docs say it."""
        if self.default_doc:
            return self.default_doc
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, tuple):
            return ",".join(self.default) or "(empty)"
        if isinstance(self.default, (int, float)):
            return _number(self.default)
        return self.default if self.default else "(unset)"

    def expected(self) -> str:
        """What a value must be, for error messages: "a finite number of seconds >= 0 (0 = no budget)"."""
        if self.kind is bool:
            return "a boolean (true/false, 1/0, yes/no, on/off)"
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.kind is int:
            text = f"a whole number of {self.unit}" if self.unit else "an integer"
        else:
            text = f"a finite number of {self.unit}" if self.unit else "a finite number"
        if self.range_text():
            text += f" {self.range_text()}"
        if self.zero:
            text += f" (0 = {self.zero})"
        return text

    # ------------------------------------------------------------------ parsing
    def problem(self, text: str) -> str:
        """The message for a bad ``text`` of this variable."""
        shown = "<hidden>" if self.secret else repr(text)
        return f"ENV {self.name}={shown} must be {self.expected()}"

    def parse(self, text: str) -> Any:
        """The typed, checked value of a set ENV ``text`` (stripped); raises :class:`_Bad`."""
        if self.kind is tuple:
            items = (item.strip() for item in text.split(","))
            return tuple(self._case(item) for item in items if item)
        if self.kind is str:
            value = self._case(text)
            if self.choices and value not in self.choices:
                raise _Bad(self.problem(text))
            return value
        if self.kind is bool:
            word = text.lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise _Bad(self.problem(text))
        number = self._parse_number(text)
        if number is None or not self._in_range(number):
            raise _Bad(self.problem(text))
        return number

    def _case(self, text: str) -> str:
        return text.lower() if self.case == "lower" else text.upper() if self.case == "upper" else text

    def _parse_number(self, text: str) -> int | float | None:
        """An int (also "2e9", "1_000") or a finite float; None when ``text`` is neither (the
        request fields' ENV aliases parse the same way)."""
        number = parse_scalar(self.kind, text)
        return None if isinstance(number, bool) else number

    def _in_range(self, value: float) -> bool:
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            return False
        return self.max is None or value <= self.max

    def read(self, environ: Mapping[str, str]) -> Any:
        """This variable's value in ``environ`` (an older name when it is unset, else the default)."""
        for name in (self.name, *self.older):
            raw = environ.get(name)
            if raw is None:
                continue
            text = raw.strip()
            if not text and self.kind is not tuple:
                continue  # blank = unset, as many deployment forms send it
            return self.parse(text)
        return self.default


def _env_var(kind: type, name: str, default: Any, doc: str, **rules: Any) -> EnvVar:
    """Declare one worker ENV variable (one line of :data:`ENV_TABLE`)."""
    var = EnvVar(name, kind, default, doc, **rules)
    if default is not None and kind is not tuple and var.kind in (int, float) and not var._in_range(default):
        raise AssertionError(f"{name}: default {default!r} is outside {var.range_text()}")
    return var


ONE_DAY_S = 86_400.0
ONE_WEEK_S = 7 * ONE_DAY_S
DEFAULT_JOB_TIMEOUT_S = 3600.0
DEFAULT_MAX_AUDIO_SECONDS = 4 * 3600.0
DEFAULT_DOWNLOAD_TIMEOUT_S = 600.0
OFFLINE_DIARIZATION_SUBDIR = "offline-diarization"  # under MODELS_DIR, as builder/fetch_models.py bakes it
DEFAULT_BATCH_FILL_CHUNK_S = 10.0
"""Smallest chunk size (longest window, seconds) GPU batch filling cuts to: shorter gives Whisper too little context."""
ALIGN_MODEL_PREFIX = "ALIGN_MODEL_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
BUCKET_ENV = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")

#: Every worker ENV variable, declared once (``ALIGN_MODEL_<LANG>`` is a family: see
#: :data:`ALIGN_MODEL_PREFIX`). The request fields' aliases are declared in ``rp_schema``.
ENV_TABLE: tuple[EnvVar, ...] = (
    # --- the process -------------------------------------------------------
    _env_var(str, "MODELS_DIR", "/models", "where `<model>` folders are looked up before the Hub"),
    _env_var(str, "WORKER_DEVICE", "auto", "device of the models (auto = cuda when CTranslate2 sees a GPU)",
             choices=("auto", "cuda", "cpu"), case="lower"),
    _env_var(str, "PRELOAD_MODEL", "", "ASR model loaded at start-up", default_doc="the `model` default"),
    _env_var(str, "PRELOAD_COMPUTE_TYPE", "", "compute type of the preloaded model", default_doc="the `compute_type` default"),
    _env_var(bool, "WARMUP", True, "run each stage once at start-up so the first job is not slower"),
    _env_var(int, "LOG_TAIL_CHARS", 20_000, "cap of a response's `logs`", min=0, max=10_000_000, unit="characters",
             zero="no logs in responses"),
    _env_var(str, "CONTAINER_LOG_PATH", DEFAULT_LOG_PATH, "the container log file"),
    _env_var(str, "LOG_LEVEL", "INFO", "level of the worker's own log", choices=LOG_LEVELS, case="upper"),
    _env_var(str, "OFFLINE_DIARIZATION_DIR", "", "weights of the token-free diarization pipeline",
             default_doc="$MODELS_DIR/offline-diarization"),
    _env_var(str, "KERNEL_CACHE_DIR", "", "the CUDA driver's kernel cache (`CUDA_CACHE_PATH`, unless set)",
             default_doc="/runpod-volume/.cache/whisperx-worker/cuda-kernels when a network volume is mounted"),
    _env_var(str, "RUNPOD_POD_ID", "", "set by RunPod: stage progress is sent to its job server", operator=False),
    # --- models and their resources ----------------------------------------
    _env_var(tuple, "PRELOAD_ALIGN_LANGUAGES", ("ru",), "aligners loaded (and warmed up) at start-up, comma-separated",
             case="lower"),
    _env_var(tuple, "ALLOWED_MODELS", (), "`model` / `diarization_model` values a request may name besides the defaults"),
    _env_var(int, "MAX_CACHED_MODELS", 2, "non-default models each registry keeps resident", min=1, max=64, unit="models"),
    _env_var(int, "MAX_CACHED_ALIGNERS", 4, "aligners (one per language) kept resident", min=1, max=64, unit="aligners"),
    _env_var(int, "CPU_THREADS", 0, "CTranslate2 threads on CPU", min=0, max=1024, unit="threads", zero="the library's default"),
    _env_var(int, "MAX_CONCURRENT_JOBS", 0, "jobs one worker runs at once", min=0, max=256, unit="jobs",
             zero="auto from the device"),
    _env_var(int, "DIARIZATION_THREADS", 0, "diarizations that run at once", min=0, max=64, unit="threads",
             zero="auto from the device"),
    _env_var(float, "JOB_TIMEOUT_S", DEFAULT_JOB_TIMEOUT_S, "time budget of one job", min=0, max=ONE_WEEK_S, unit="seconds",
             zero="no budget"),
    _env_var(float, "MAX_AUDIO_SECONDS", DEFAULT_MAX_AUDIO_SECONDS, "longest audio a job may send", min=0, max=ONE_WEEK_S,
             unit="seconds", zero="no cap"),
    _env_var(float, "BATCH_FILL_MIN_CHUNK_S", None, "shortest window batch filling cuts a short file to", min=0, max=30,
             unit="seconds", zero="off", default_doc="10 on a GPU, off (0) on a CPU"),
    _env_var(int, "BATCH_FILL_MAX_JOBS", 1, "batch filling applies only while at most this many jobs are in flight",
             min=1, max=1024, unit="jobs"),
    _env_var(float, "ASR_DECODE_CACHE_MB", 4096.0, "GPU memory the decoder's cross-attention cache may use per generate call",
             min=0, max=1_048_576, unit="MiB", zero="no cap"),
    _env_var(bool, "TORCH_SIDE_STREAMS", True, "on a GPU, torch work runs on CUDA streams of its own",
             older=("DIARIZATION_SIDE_STREAM",)),
    _env_var(bool, "TORCH_ALLOW_TF32", True, "on a GPU, torch's float32 matmuls and convolutions use TF32"),
    # --- downloads ------------------------------------------------------------
    _env_var(int, "MAX_AUDIO_BYTES", DEFAULT_MAX_BYTES, "largest audio download or payload", min=1, max=2**40, unit="bytes"),
    _env_var(float, "DOWNLOAD_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S, "connect timeout of a download", min=0,
             min_exclusive=True, max=600, unit="seconds"),
    _env_var(float, "DOWNLOAD_READ_TIMEOUT", DEFAULT_READ_TIMEOUT_S, "longest wait for the next bytes of a download", min=0,
             min_exclusive=True, max=3600, unit="seconds"),
    _env_var(float, "DOWNLOAD_TIMEOUT", DEFAULT_DOWNLOAD_TIMEOUT_S, "total wall time of a download", min=0, max=ONE_DAY_S,
             unit="seconds", zero="none"),
    _env_var(bool, "ALLOW_PRIVATE_URLS", False, "allow private or loopback URLs (local runs, tests)"),
    _env_var(bool, "ALLOW_LOCAL_FILES", False, "allow local paths as `audio_file` / `model` / `diarization_model`"),
    # --- results --------------------------------------------------------------
    _env_var(int, "RESULT_INLINE_LIMIT_BYTES", DEFAULT_INLINE_LIMIT_BYTES, "larger results go to the bucket (none: the job fails)",
             min=0, max=100_000_000, unit="bytes", zero="every result goes to the bucket"),
    _env_var(str, "BUCKET_ENDPOINT_URL", "", "RunPod's upload ENV: S3 endpoint of the results bucket"),
    _env_var(str, "BUCKET_ACCESS_KEY_ID", "", "RunPod's upload ENV: access key", secret=True),
    _env_var(str, "BUCKET_SECRET_ACCESS_KEY", "", "RunPod's upload ENV: secret key", secret=True),
    _env_var(str, "BUCKET_NAME", "", "RunPod's upload ENV: the bucket large results are uploaded to"),
    _env_var(bool, "QUEUE_STREAMING", False, "queue: the handler streams each decoded window to `/stream`; `/run` then "
             "returns the list of chunks"),
    # --- the OpenAI door (a load-balancing endpoint) ----------------------------
    _env_var(str, "ENDPOINT_TYPE", "queue", "`queue`: RunPod's queue API; `load_balancer`: OpenAI's routes over HTTP "
             "(`openai_door.py`)", choices=("queue", "load_balancer"), case="lower"),
    _env_var(int, "PORT", 80, "load_balancer: the HTTP port (RunPod sets it)", min=1, max=65535),
    _env_var(int, "PORT_HEALTH", 0, "load_balancer: the port of `GET /ping`", min=0, max=65535, zero="PORT"),
    _env_var(str, "API_KEY", "", "load_balancer: a Bearer key every request must carry (outside RunPod's gateway)",
             secret=True, default_doc="none"),
    _env_var(int, "MAX_REQUEST_BYTES", 30_000_000, "load_balancer: largest request body (RunPod's limit: 30 MB)",
             min=1, max=2**40, unit="bytes"),
    _env_var(float, "LB_REQUEST_TIMEOUT_S", 330.0, "load_balancer: time budget of a request that is not streamed "
             "(RunPod ends one after about 5.5 minutes)", min=0, max=ONE_WEEK_S, unit="seconds", zero="`JOB_TIMEOUT_S` alone"),
    _env_var(float, "LB_MAX_AUDIO_SECONDS", 0.0, "load_balancer: longest audio a request that is not streamed may carry, "
             "refused before decoding", min=0, max=ONE_WEEK_S, unit="seconds",
             zero="`LB_REQUEST_TIMEOUT_S` x 10 on a GPU, x 0.5 on CPU"),
)
ENV_BY_NAME: Mapping[str, EnvVar] = {var.name: var for var in ENV_TABLE}
_FETCH_ENV = ("MAX_AUDIO_BYTES", "DOWNLOAD_CONNECT_TIMEOUT", "DOWNLOAD_READ_TIMEOUT", "DOWNLOAD_TIMEOUT",
              "ALLOW_PRIVATE_URLS", "ALLOW_LOCAL_FILES")
_RESULT_ENV = ("RESULT_INLINE_LIMIT_BYTES", *BUCKET_ENV)


def _default(name: str) -> Any:
    """The declared default of ``name`` (the dataclasses below take theirs from the table)."""
    return ENV_BY_NAME[name].default


def read_env(environ: Mapping[str, str], names: Iterable[str] | None = None) -> dict[str, Any]:
    """The typed values of the variables ``names`` (default: all of :data:`ENV_TABLE`),
    cross-checked; raises one :class:`SettingsError` listing every bad variable."""
    chosen = ENV_TABLE if names is None else tuple(ENV_BY_NAME[name] for name in names)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for var in chosen:
        try:
            values[var.name] = var.read(environ)
        except _Bad as exc:
            problems.append(str(exc))
    if all(name in values for name in BUCKET_ENV):
        problems += _bucket_problems(values)
    if problems:
        raise SettingsError(problems)
    return values


def _bucket_problems(values: Mapping[str, Any]) -> list[str]:
    """RunPod's bucket ENV is all set or all unset; the endpoint is an http(s) URL; a limit of 0 needs it."""
    given = [name for name in BUCKET_ENV if values[name]]
    missing = [name for name in BUCKET_ENV if not values[name]]
    problems = []
    if values["BUCKET_ENDPOINT_URL"] and not values["BUCKET_NAME"]:
        problems.append(
            "BUCKET_ENDPOINT_URL is set but BUCKET_NAME is not: set BUCKET_NAME to the bucket that receives large "
            "results (RunPod's SDK would upload to a bucket named after the month, e.g. '07-25')"
        )
        missing.remove("BUCKET_NAME")
    if given and missing:
        problems.append(
            f"incomplete bucket ENV: {', '.join(given)} {'is' if len(given) == 1 else 'are'} set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not; set all of {', '.join(BUCKET_ENV)} to upload large results, or none"
        )
    endpoint = values["BUCKET_ENDPOINT_URL"]
    if endpoint:
        try:
            parts = urlsplit(endpoint)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            usable = False
        if not usable:
            problems.append(f"ENV BUCKET_ENDPOINT_URL={redact(endpoint)!r} must be an http(s) URL, e.g. https://s3.us-east-1.amazonaws.com")
    if values.get("RESULT_INLINE_LIMIT_BYTES") == 0 and not given:
        problems.append("ENV RESULT_INLINE_LIMIT_BYTES=0 sends every result to the bucket, but no bucket is configured "
                        f"({', '.join(BUCKET_ENV)})")
    return problems


def check_device(preference: str, cuda_devices: int) -> None:
    """Refuse ``WORKER_DEVICE=cuda`` when no CUDA device is usable (``cuda_devices``: the count the
    caller got from CTranslate2), as a :class:`SettingsError` the worker can answer jobs with
    instead of dying at start-up and being restarted in a loop."""
    if preference == "cuda" and cuda_devices <= 0:
        raise SettingsError([
            "ENV WORKER_DEVICE='cuda' but no CUDA device is usable by CTranslate2: run the worker on a GPU, "
            "or set WORKER_DEVICE=auto (the CPU when there is no GPU) or cpu"
        ])


def env_table_markdown(operator_only: bool = True) -> str:
    """The README's worker ENV table, generated from :data:`ENV_TABLE`."""
    rows = ["| ENV | type | default | range | meaning |", "|---|---|---|---|---|"]
    for var in ENV_TABLE:
        if operator_only and not var.operator:
            continue
        name = f"`{var.name}`" + "".join(f" (older: `{older}`)" for older in var.older)
        zero = f"; 0 = {var.zero}" if var.zero else ""
        rows.append(f"| {name} | {var.type_text()} | {var.default_text()} | {var.range_text() or '—'} | {var.doc}{zero} |")
    return "\n".join(rows)


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
    job_timeout_s: time budget of one job in seconds (``JOB_TIMEOUT_S``; default 3600, one hour:
        a public endpoint needs a budget; 0 = none).
    max_audio_seconds: longest audio a job may send, in seconds (``MAX_AUDIO_SECONDS``; default
        14400 = 4 h; 0 = no cap).
    max_cached_aligners: aligners (one per language) kept resident at once (``MAX_CACHED_ALIGNERS``,
        >= 1, default 4).
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
        ``DOWNLOAD_READ_TIMEOUT``, ``DOWNLOAD_TIMEOUT`` (total wall time of a download, default
        600 s, 0 = none), ``ALLOW_PRIVATE_URLS``, ``ALLOW_LOCAL_FILES``); the
        fetcher takes it, and so do the model checks (a local ``model`` path needs
        ``ALLOW_LOCAL_FILES`` like a local ``audio_file``).
    results: inline limit and bucket of large results (``RESULT_INLINE_LIMIT_BYTES``,
        RunPod's ``BUCKET_*``: all four or none).
    request_env: the request fields' ENV aliases, parsed and checked once; a request falls
        back to them field by field (``rp_schema.resolve_options``).
    log_path, log_level: the container log file and the root log level (``CONTAINER_LOG_PATH``,
        ``LOG_LEVEL``), for ``logs.setup_logging``.
    max_concurrent_jobs: jobs one worker runs at once (``MAX_CONCURRENT_JOBS``; 0 = chosen from
        the device: ``resident.lanes.default_concurrent_jobs``). The handler tells RunPod through the
        SDK's ``concurrency_modifier``; concurrent jobs share Whisper calls (``batching``).
    diarization_threads: diarizations that run at once, each in its own thread with its own
        copy of the offline pipeline (``DIARIZATION_THREADS``; 0 = chosen from the device and
        ``max_concurrent_jobs``: ``resident.lanes.default_diarization_threads``).
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

    models_dir: str = _default("MODELS_DIR")
    device: str = _default("WORKER_DEVICE")
    preload_model: str = _default("PRELOAD_MODEL")
    preload_compute_type: str = _default("PRELOAD_COMPUTE_TYPE")
    warmup: bool = _default("WARMUP")
    log_tail_chars: int = _default("LOG_TAIL_CHARS")
    align_model_overrides: tuple[tuple[str, str], ...] = ()
    offline_diarization_dir: str = os.path.join(_default("MODELS_DIR"), OFFLINE_DIARIZATION_SUBDIR)
    cpu_threads: int = _default("CPU_THREADS")
    job_timeout_s: float = _default("JOB_TIMEOUT_S")
    max_audio_seconds: float = _default("MAX_AUDIO_SECONDS")
    preload_align_languages: tuple[str, ...] = _default("PRELOAD_ALIGN_LANGUAGES")
    batch_fill_min_chunk_s: float | None = _default("BATCH_FILL_MIN_CHUNK_S")
    batch_fill_max_jobs: int = _default("BATCH_FILL_MAX_JOBS")
    asr_decode_cache_mb: float = _default("ASR_DECODE_CACHE_MB")
    torch_side_streams: bool = _default("TORCH_SIDE_STREAMS")
    allowed_models: tuple[str, ...] = _default("ALLOWED_MODELS")
    max_cached_models: int = _default("MAX_CACHED_MODELS")
    max_cached_aligners: int = _default("MAX_CACHED_ALIGNERS")
    torch_allow_tf32: bool = _default("TORCH_ALLOW_TF32")
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    results: ResultDelivery = field(default_factory=ResultDelivery)
    request_env: RequestEnv = field(default_factory=RequestEnv)
    report_progress: bool = False
    log_path: str = _default("CONTAINER_LOG_PATH")
    log_level: str = _default("LOG_LEVEL")
    max_concurrent_jobs: int = _default("MAX_CONCURRENT_JOBS")
    kernel_cache_dir: str = _default("KERNEL_CACHE_DIR")
    diarization_threads: int = _default("DIARIZATION_THREADS")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read and check every worker variable of ``environ`` (default: ``os.environ``) once.

        Raises :class:`SettingsError` (a ValueError) listing every bad variable."""
        env = os.environ if environ is None else environ
        values = read_env(env)
        overrides = tuple(
            sorted(
                (key[len(ALIGN_MODEL_PREFIX) :].lower(), value.strip())
                for key, value in env.items()
                if key.startswith("ALIGN_MODEL_") and value.strip()
            )
        )
        models_dir = values["MODELS_DIR"]
        return cls(
            models_dir=models_dir,
            device=values["WORKER_DEVICE"],
            preload_model=values["PRELOAD_MODEL"],
            preload_compute_type=values["PRELOAD_COMPUTE_TYPE"],
            warmup=values["WARMUP"],
            log_tail_chars=values["LOG_TAIL_CHARS"],
            align_model_overrides=overrides,
            # Next to the ASR models by default, so pointing MODELS_DIR at a local folder
            # is enough to find every weight (the image sets both to /models anyway).
            offline_diarization_dir=values["OFFLINE_DIARIZATION_DIR"] or os.path.join(models_dir, OFFLINE_DIARIZATION_SUBDIR),
            cpu_threads=values["CPU_THREADS"],
            job_timeout_s=values["JOB_TIMEOUT_S"],
            max_audio_seconds=values["MAX_AUDIO_SECONDS"],
            preload_align_languages=values["PRELOAD_ALIGN_LANGUAGES"],
            batch_fill_min_chunk_s=values["BATCH_FILL_MIN_CHUNK_S"],
            batch_fill_max_jobs=values["BATCH_FILL_MAX_JOBS"],
            asr_decode_cache_mb=values["ASR_DECODE_CACHE_MB"],
            torch_side_streams=values["TORCH_SIDE_STREAMS"],
            allowed_models=values["ALLOWED_MODELS"],
            max_cached_models=values["MAX_CACHED_MODELS"],
            max_cached_aligners=values["MAX_CACHED_ALIGNERS"],
            torch_allow_tf32=values["TORCH_ALLOW_TF32"],
            fetch=_fetch_policy(values),
            results=_result_delivery(values),
            request_env=read_request_env(env),
            report_progress=bool(values["RUNPOD_POD_ID"]),
            log_path=values["CONTAINER_LOG_PATH"],
            log_level=values["LOG_LEVEL"],
            max_concurrent_jobs=values["MAX_CONCURRENT_JOBS"],
            kernel_cache_dir=values["KERNEL_CACHE_DIR"] or default_kernel_cache_dir(),
            diarization_threads=values["DIARIZATION_THREADS"],
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


def _fetch_policy(values: Mapping[str, Any]) -> FetchPolicy:
    """The :class:`FetchPolicy` of checked ENV ``values``."""
    options: dict[str, Any] = dict(
        max_bytes=values["MAX_AUDIO_BYTES"],
        connect_timeout_s=values["DOWNLOAD_CONNECT_TIMEOUT"],
        read_timeout_s=values["DOWNLOAD_READ_TIMEOUT"],
        allow_private_urls=values["ALLOW_PRIVATE_URLS"],
        allow_local_files=values["ALLOW_LOCAL_FILES"],
    )
    # DOWNLOAD_TIMEOUT reaches the fetcher once its policy has the field.
    if "download_timeout_s" in FetchPolicy.__dataclass_fields__:
        options["download_timeout_s"] = values["DOWNLOAD_TIMEOUT"]
    return FetchPolicy(**options)


def fetch_policy_from_env(environ: Mapping[str, str]) -> FetchPolicy:
    """The download policy from ENV: ``MAX_AUDIO_BYTES`` (bytes), ``DOWNLOAD_CONNECT_TIMEOUT``,
    ``DOWNLOAD_READ_TIMEOUT`` and ``DOWNLOAD_TIMEOUT`` (seconds), ``ALLOW_PRIVATE_URLS`` and
    ``ALLOW_LOCAL_FILES`` (true/1/yes/on). Raises :class:`SettingsError` on bad values."""
    return _fetch_policy(read_env(environ, _FETCH_ENV))


def _result_delivery(values: Mapping[str, Any]) -> ResultDelivery:
    """The :class:`ResultDelivery` of checked ENV ``values`` (the bucket ENV is all set or all unset)."""
    return ResultDelivery(
        inline_limit_bytes=values["RESULT_INLINE_LIMIT_BYTES"],
        bucket_configured=all(values[name] for name in BUCKET_ENV),
        bucket_name=values["BUCKET_NAME"] or None,
    )


def result_delivery_from_env(environ: Mapping[str, str]) -> ResultDelivery:
    """Where large results go: ``RESULT_INLINE_LIMIT_BYTES`` and RunPod's bucket ENV
    (``BUCKET_ENDPOINT_URL``, ``BUCKET_ACCESS_KEY_ID``, ``BUCKET_SECRET_ACCESS_KEY``, ``BUCKET_NAME``:
    all or none), which the SDK's upload helper reads itself. Raises :class:`SettingsError` on bad values."""
    return _result_delivery(read_env(environ, _RESULT_ENV))


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
