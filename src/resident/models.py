"""Resident ASR and VAD models: loaded once, shared by every request.

A model is keyed by what makes it different (resolved path, compute type, device), so two
requests that ask for the same model share one instance and per-request options never
touch it: decoding options are passed to each call instead (see ``asr``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model_cache import SingleFlightCache

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from stages.vad_network import VadNetwork

logger = logging.getLogger("models")  # the bare name: log lines read as before the move

# Short names users know, mapped to the Hub repository that holds the CTranslate2 weights.
KNOWN_HUB_IDS = {
    "faster-whisper-large-v3-russian": "bzikst/faster-whisper-large-v3-russian",
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message is safe to show to the user."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where an ASR model comes from: ``path`` is a local CTranslate2 folder."""

    name: str
    path: str
    origin: str  # "local path" | "models dir" | "hub"


# What a Hugging Face Hub repository id looks like: "name" or "owner/name", no path tricks.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def looks_like_local_path(name: str) -> bool:
    """Whether a model reference points at the worker's disk rather than at a Hub id.

    True for anything that exists as a file or folder (relative to the working directory
    too: a Hub-shaped "src/models" would otherwise load a local folder), and for strings
    that are not Hub-id shaped (absolute, ``~``, ``./``, ``..``, backslashes, ``.yaml``).
    """
    text = name.strip()
    if not text:
        return False
    if os.path.exists(os.path.expanduser(text)):
        return True
    return not _HUB_ID.match(text) or ".." in text or text.endswith((".yaml", ".yml"))


def _is_ct2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file()


def resolve_asr_model(name: str, models_dir: str, token: str | None) -> ResolvedModel:
    """Find the CTranslate2 folder for ``name``: a local path, ``<models_dir>/<name>``
    (also the last part of a Hub id, as the image bakes them), else download from the Hub
    (``HF_TOKEN`` used for gated/private repos; fails fast when offline)."""
    candidate = Path(name).expanduser()
    if _is_ct2_dir(candidate):
        return ResolvedModel(name, str(candidate.resolve()), "local path")
    base = Path(models_dir)
    for local in (base / name, base / name.rstrip("/").split("/")[-1]):
        if _is_ct2_dir(local):
            return ResolvedModel(name, str(local.resolve()), "models dir")
    if candidate.is_absolute() or name.startswith((".", "~")):
        raise ModelLoadError(f"model path {name!r} does not exist or has no model.bin")
    repo_id = KNOWN_HUB_IDS.get(name, name)
    try:
        from faster_whisper.utils import download_model

        path = download_model(repo_id, use_auth_token=token or None)
    except Exception as exc:  # network, 404, gated: the user needs one clear sentence
        reason = type(exc).__name__
        raise ModelLoadError(
            f"model {name!r} is not in {models_dir} and could not be downloaded from the "
            f"Hugging Face Hub as {repo_id!r} ({reason})"
        ) from None
    return ResolvedModel(name, str(path), "hub")


def in_models_dir(name: str, models_dir: str) -> bool:
    """Whether ``name`` (or the last part of a Hub id) is a CTranslate2 folder of ``models_dir``
    (path tricks such as ``..`` never count)."""
    if looks_like_local_path(name):
        return False
    base = Path(models_dir)
    return any(_is_ct2_dir(base / part) for part in {name, name.rstrip("/").split("/")[-1]})


def is_allowed(name: str, compute_type: str | None, allowed: tuple[str, ...], always: set[str]) -> bool:
    """Whether a request may name model ``name`` (with ``compute_type``, None for models
    without one) under the allow-list ``allowed`` (``ALLOWED_MODELS``).

    ``always``: names allowed whatever the list says (defaults, preloaded models).
    An entry is ``*`` (anything), a name (any compute type) or ``name:compute_type``.
    """
    if name in always or "*" in allowed or name in allowed:
        return True
    return compute_type is not None and f"{name}:{compute_type}" in allowed


def pick_device(preference: str) -> str:
    """"cuda" when asked for (or "auto" and a CUDA device is visible), else "cpu"."""
    if preference == "cpu":
        return "cpu"
    try:
        import ctranslate2

        has_cuda = ctranslate2.get_cuda_device_count() > 0
    except Exception:  # a broken CUDA stack must not stop a CPU worker
        has_cuda = False
    if preference == "cuda" and not has_cuda:
        raise ModelLoadError("WORKER_DEVICE=cuda but no CUDA device is usable by CTranslate2")
    return "cuda" if has_cuda else "cpu"


def effective_compute_type(requested: str, device: str) -> tuple[str, str | None]:
    """The compute type that will run on ``device``, plus a warning when it differs.

    float16 has no CPU kernels in CTranslate2, so on CPU it becomes int8 (the fastest
    CPU type); this keeps the seed's GPU default usable on CPU workers and in tests.
    """
    if device == "cpu" and requested == "float16":
        return "int8", "compute_type float16 is not supported on CPU; using int8"
    return requested, None


class AsrModels:
    """Thread-safe registry of Whisper models and the VAD model (one per device).

    Models loaded with ``keep=True`` (the preloaded default) stay for the life of the worker;
    of the others at most ``max_cached`` stay resident, the least recently used one being
    dropped first, so requests naming many models cannot fill the GPU for the ones after.
    A model loads outside any lock that requests for other models need: a request waits only
    for the load of the model it asked for (``model_cache.SingleFlightCache``).
    """

    def __init__(self, device: str, models_dir: str, cpu_threads: int = 0, max_cached: int = 2) -> None:
        self.device = device
        self.models_dir = models_dir
        self.cpu_threads = cpu_threads
        # (path, compute type, device) -> model
        self._whisper: SingleFlightCache[tuple[str, str, str], WhisperModel] = SingleFlightCache(
            max_cached, on_evict=self._evicted)
        self._vad: VadNetwork | None = None
        self._vad_lock = threading.Lock()  # apart: the VAD loads while a Whisper model does

    @property
    def max_cached(self) -> int:
        """Non-kept models kept resident at once (``MAX_CACHED_MODELS``)."""
        return self._whisper.max_cached

    def resident(self) -> list[tuple[str, str, str]]:
        """Keys (path, compute type, device) of the resident models, least recently used first."""
        return self._whisper.resident()

    def _evicted(self, keys: list[tuple[str, str, str]]) -> None:
        # CTranslate2 frees a model's memory when its last reference goes (a job in progress
        # keeps its own).
        for key in keys:
            logger.info("ASR model %s (%s) dropped from the cache (MAX_CACHED_MODELS=%d)", key[0], key[1], self.max_cached)

    def whisper(
        self,
        model: ResolvedModel,
        compute_type: str,
        keep: bool = False,
        *,
        wait_check: Callable[[], None] | None = None,
    ) -> tuple[WhisperModel, float]:
        """The resident ``WhisperModel`` for (path, compute_type, device); loads on first use.

        keep: never drop this one from the cache (the preloaded default).
        wait_check: called about every 0.2 s while another request loads this same model; what
            it raises (the job was cancelled or ran out of time) ends the wait, not the load.
        Returns (model, load_seconds): the seconds this call spent loading the model or waiting
        for its load, 0.0 when it was resident. Raises ``ModelLoadError`` when it cannot load.
        """
        key = (model.path, compute_type, self.device)
        if keep:
            self._whisper.keep(key)
        return self._whisper.get(key, lambda: self._load(model, compute_type), wait_check=wait_check)

    def _load(self, model: ResolvedModel, compute_type: str) -> WhisperModel:
        from faster_whisper import WhisperModel

        started = time.perf_counter()
        logger.info("loading ASR model %s (%s, %s)", model.path, compute_type, self.device)
        try:
            instance = WhisperModel(
                model.path,
                device=self.device,
                compute_type=compute_type,
                cpu_threads=self.cpu_threads,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load model {model.name!r} with compute_type {compute_type}: "
                f"{str(exc)[:300]}"
            ) from None
        logger.info("ASR model loaded in %.2f s", time.perf_counter() - started)
        return instance

    def vad(self) -> VadNetwork:
        """whisperX's bundled VAD network (weights ship in the wheel, so it runs offline),
        read in plain torch (``stages.vad_network``: no pyannote import).

        Its output is frame-level speech scores; thresholds are applied per request in
        ``vad.speech_windows``, so one instance serves every option set.
        """
        with self._vad_lock:
            if self._vad is None:
                from stages.vad_network import VadNetwork, bundled_checkpoint

                logger.info("loading VAD model (whisperX's segmentation checkpoint)")
                self._vad = VadNetwork.load(bundled_checkpoint(), self.device)
            return self._vad


@dataclass(frozen=True)
class WhisperDimensions:
    """Sizes of a CTranslate2 Whisper model that set its decoding memory."""

    decoder_layers: int
    d_model: int


@functools.lru_cache(maxsize=16)
def whisper_dimensions(model_path: str) -> WhisperDimensions | None:
    """Decoder layer count and model width of the CTranslate2 Whisper in ``model_path``.

    Read from the names and shapes at the head of each variable in ``model.bin`` (the data
    is skipped with seeks, so a 3 GB file costs ~1 ms); None when the file is not in the
    layout CTranslate2 writes (version, spec name, revision, variables).
    """
    layers: set[int] = set()
    width = None
    try:
        with open(Path(model_path) / "model.bin", "rb") as handle:

            def read(fmt: str) -> int:
                return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0]

            def read_string() -> str:
                return handle.read(read("H")).rstrip(b"\0").decode("utf-8")

            read("I")  # binary version
            read_string()  # spec name
            read("I")  # spec revision
            for _ in range(read("I")):
                name = read_string()
                shape = [read("I") for _ in range(read("B"))]
                read("B")  # dtype id
                handle.seek(read("I"), 1)
                match = re.match(r"decoder/layer_(\d+)/", name)
                if match:
                    layers.add(int(match.group(1)))
                elif name == "decoder/embeddings/weight" and len(shape) == 2:
                    width = shape[1]  # (vocabulary, d_model); present in every converter version
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return None
    if not layers or width is None:
        return None
    return WhisperDimensions(decoder_layers=len(layers), d_model=width)
