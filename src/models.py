"""Resident ASR and VAD models: loaded once, shared by every request.

A model is keyed by what makes it different (resolved path, compute type, device), so two
requests that ask for the same model share one instance and per-request options never
touch it: decoding options are passed to each call instead (see ``asr``).
"""

from __future__ import annotations

import functools
import logging
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

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
    """Thread-safe registry of Whisper models and the VAD model (one per device)."""

    def __init__(self, device: str, models_dir: str, cpu_threads: int = 0) -> None:
        self.device = device
        self.models_dir = models_dir
        self.cpu_threads = cpu_threads
        self._whisper: dict[tuple[str, str, str], object] = {}
        self._vad = None
        self._lock = threading.Lock()

    def whisper(self, model: ResolvedModel, compute_type: str):
        """The resident ``WhisperModel`` for (path, compute_type, device); loads on first use.

        Returns (model, load_seconds) where load_seconds is 0.0 when it was resident.
        """
        key = (model.path, compute_type, self.device)
        with self._lock:
            if key in self._whisper:
                return self._whisper[key], 0.0
            from whisperx.asr import WhisperModel

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
            self._whisper[key] = instance
            seconds = time.perf_counter() - started
            logger.info("ASR model loaded in %.2f s", seconds)
            return instance, seconds

    def vad(self):
        """whisperX's bundled pyannote VAD (weights ship in the wheel, so it runs offline).

        Its output is frame-level speech scores; thresholds are applied per request in
        ``vad.speech_windows``, so one instance serves every option set.
        """
        with self._lock:
            if self._vad is None:
                import torch
                from whisperx.vads.pyannote import load_vad_model

                logger.info("loading VAD model (whisperX pyannote)")
                self._vad = load_vad_model(torch.device(self.device).type)
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

            def read(fmt: str):
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
