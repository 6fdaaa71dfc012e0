"""Speaker diarization stage: who spoke when, and which words each speaker said.

Contract
--------
``DiarizationModels.diarize(waveform, ...)`` takes float32 mono audio at 16 kHz and returns
``DiarizationOutput``: speaker turns in seconds, optional per-speaker embeddings, the name of
the backend that produced them, and warnings meant for the response.

Two backends, tried in this order:

1. The requested pyannote pipeline (``pyannote/speaker-diarization-3.1`` by default,
   ``pyannote/speaker-diarization-community-1``, or a local pipeline directory holding a
   ``config.yaml``), run through ``whisperx.diarize.DiarizationPipeline``. A Hub id is only
   tried when a Hugging Face token is given: the pyannote models are gated, so without one
   the attempt can only fail (slowly, when the Hub is reachable).
2. The token-free *offline* pipeline (``offline_diarization``): the algorithm of pyannote's
   ``SpeakerDiarization`` with the real segmentation-3.0 weights and a CAM++ speaker-embedding
   model (``campplus``) in place of pyannote's gated WeSpeaker embedding, clustered with
   agglomerative clustering, implemented without pyannote.audio (``plain_diarization``). Its
   weights come from a local folder (ENV ``OFFLINE_DIARIZATION_DIR``,
   ``/models/offline-diarization`` in the image); the ``offline_diarization`` docstring gives
   its layout and measured quality.

When the offline pipeline stands in for the requested one, a warning says why. When both fail,
``DiarizationUnavailable`` is raised (the only exception ``diarize`` raises) so the caller can
keep the transcript without speakers.

This module is the registry of loaded pipelines (each loaded once, a failed load remembered
for ``FAILED_LOAD_RETRY_S``, the offline pipeline as the fallback) and runs them. Words get
their speakers in ``speaker_assignment`` (``assign_speakers``).

pyannote.audio (seconds to import: Lightning, torchmetrics, transformers) is imported only when
a requested pipeline loads; the offline pipeline never needs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from model_cache import SingleFlightCache

from stages import offline_diarization as _offline_diarization  # bound to its bare name below
from stages.campplus import SAMPLE_RATE
from stages.offline_diarization import (
    OFFLINE_BACKEND,
    OFFLINE_HYPER_PARAMETERS,
    OfflineHyperParameters,
    PlainSpeakerDiarization,
    build_offline_pipeline,
)
from stages.pyannote_core import Annotation
from stages.pyannote_telemetry import disable_pyannote_telemetry
from stages.speaker_assignment import SpeakerTurn, clip_turns, longest_spans

if TYPE_CHECKING:
    from whisperx.diarize import DiarizationPipeline


# pyannote imports a pipeline's class by the module name its config.yaml gives, and local
# pipeline folders (baked images, users' own) say ``diarization.OfflineSpeakerDiarization`` or
# ``offline_diarization.OfflineSpeakerDiarization``: names from when the stages lived at the top
# of src/. Both bare names stay bound to these modules, so those files load unchanged.
sys.modules.setdefault("diarization", sys.modules[__name__])
sys.modules.setdefault("offline_diarization", _offline_diarization)


def __getattr__(name: str) -> Any:
    """``OfflineSpeakerDiarization`` (the pyannote-based offline pipeline), imported on first
    use (PEP 562): local pipeline config.yaml files name ``diarization.OfflineSpeakerDiarization``
    and pyannote resolves it with getattr on this module; nothing else here needs pyannote.audio."""
    if name == "OfflineSpeakerDiarization":
        return _offline_diarization.OfflineSpeakerDiarization
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

logger = logging.getLogger("diarization")  # the bare name: log lines read as before the move

DEFAULT_MODEL = "pyannote/speaker-diarization-3.1"
# How long a requested pipeline that failed to load is not tried again (seconds): long enough
# that a worker without access stops asking the Hub on every request, short enough that a
# transient outage or a newly accepted licence is picked up without a redeploy.
FAILED_LOAD_RETRY_S = 900.0

ProgressCallback = Callable[[float], None]
"""Called with a percentage in [0, 100] while a pipeline runs."""


class Stopped(RuntimeError):
    """Raised by a progress callback to end a run early (its job failed or ran out of time)."""


class DiarizationUnavailable(RuntimeError):
    """Neither the requested nor the offline pipeline could diarize; the message says why."""


class PipelineLoadFailedEarlier(RuntimeError):
    """The requested pipeline failed to load recently; not retried yet (the message says why)."""


@dataclass
class DiarizationOutput:
    """Result of one diarization.

    turns: speaker turns sorted by start (seconds); turns of different speakers may overlap.
    speaker_embeddings: speaker label -> embedding vector, when asked for and available.
    backend: what produced the turns: the pipeline id/path, or ``OFFLINE_BACKEND``.
    warnings: human-readable notes for the response (fallbacks, speaker-count misses).
    exclusive_turns: the same speech with one speaker at a time (pyannote 4's exclusive
        diarization), or None.
    centroids: speaker label -> the embedding of that speaker's voice (``speaker_voices``), when
        known-speaker samples were given.
    reference_embeddings: one row per known-speaker sample, from the same embedding model, or None.
    """

    turns: list[SpeakerTurn]
    speaker_embeddings: dict[str, list[float]] | None
    backend: str
    warnings: list[str] = field(default_factory=list)
    exclusive_turns: list[SpeakerTurn] | None = None
    centroids: dict[str, list[float]] | None = None
    reference_embeddings: np.ndarray | None = None

    @property
    def assignment_turns(self) -> list[SpeakerTurn]:
        """The turns words are assigned from: the exclusive ones (one speaker at a time) when
        the pipeline gave them, else ``turns``."""
        return self.exclusive_turns if self.exclusive_turns else self.turns

    @property
    def speakers(self) -> list[str]:
        """Distinct speaker labels, sorted."""
        return sorted({turn.speaker for turn in self.turns})


# --------------------------------------------------------------------------- running pipelines
@dataclass(frozen=True)
class SpeakerBounds:
    """Speaker-count constraints as pyannote gets them (None = no constraint)."""

    num_speakers: int | None
    min_speakers: int | None
    max_speakers: int | None

    def describe(self) -> str:
        """Short text of the constraint, for warnings."""
        if self.num_speakers is not None:
            return f"exactly {self.num_speakers}"
        low = self.min_speakers if self.min_speakers is not None else 1
        high = self.max_speakers if self.max_speakers is not None else "any"
        return f"between {low} and {high}"

    def admits(self, count: int) -> bool:
        """Whether ``count`` speakers satisfy the constraint."""
        if self.num_speakers is not None:
            return count == self.num_speakers
        if self.min_speakers is not None and count < self.min_speakers:
            return False
        return not (self.max_speakers is not None and count > self.max_speakers)


def normalize_speaker_bounds(
    num_speakers: int | None, min_speakers: int | None, max_speakers: int | None
) -> tuple[SpeakerBounds, list[str]]:
    """The constraints to run pyannote with, and a warning for each value left out.

    ``num_speakers`` overrides min/max, as in pyannote. Requests reach here validated by
    ``rp_schema`` (every value at least 1, min <= num <= max); a direct caller (bench/, tests)
    may still pass min > max, on which pyannote raises: here max wins (the caller asked for
    at most that many).
    """
    if num_speakers is not None:
        return SpeakerBounds(num_speakers, None, None), []
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        note = f"min_speakers={min_speakers} is above max_speakers={max_speakers}; min_speakers ignored"
        return SpeakerBounds(None, None, max_speakers), [note]
    return SpeakerBounds(None, min_speakers, max_speakers), []


def annotation_to_turns(annotation: Annotation) -> list[SpeakerTurn]:
    """pyannote ``Annotation`` -> speaker turns sorted by (start, end), times in seconds rounded to 1 ms."""
    turns = [
        SpeakerTurn(round(float(segment.start), 3), round(float(segment.end), 3), str(label))
        for segment, _, label in annotation.itertracks(yield_label=True)
    ]
    return sorted(turns, key=lambda turn: (turn.start, turn.end, turn.speaker))


def _embeddings_dict(labels: list[str], matrix: np.ndarray | None) -> dict[str, list[float]] | None:
    """Speaker label -> embedding list (rows of ``matrix`` in ``labels`` order); NaN becomes 0."""
    if matrix is None:
        return None
    rows = np.nan_to_num(np.asarray(matrix, dtype=np.float64))
    return {label: [float(x) for x in rows[i]] for i, label in enumerate(labels) if i < len(rows)}


def _progress_hook(progress_callback: ProgressCallback | None) -> Callable[..., None] | None:
    """pyannote hook mapping segmentation to 0-50 % and embeddings to 50-99 % (monotonic)."""
    if progress_callback is None:
        return None
    ranges = {"segmentation": (0.0, 50.0), "embeddings": (50.0, 99.0)}
    last = [0.0]

    def hook(
        step_name: str, step_artifact: Any, file: Any = None, total: int | None = None, completed: int | None = None
    ) -> None:
        if total and completed is not None:
            low, high = ranges.get(step_name, (0.0, 99.0))
            percent = low + min(completed / total, 1.0) * (high - low)
            if percent > last[0]:
                last[0] = percent
                progress_callback(percent)

    return hook


@dataclass
class PipelineRun:
    """What one pyannote run gives: ``turns`` (speakers may overlap), ``exclusive_turns`` (one
    speaker at a time, pyannote 4's ``exclusive_speaker_diarization``; None when the pipeline
    has no such output) and per-speaker embeddings when asked for."""

    turns: list[SpeakerTurn]
    exclusive_turns: list[SpeakerTurn] | None
    embeddings: dict[str, list[float]] | None
    centroids: dict[str, list[float]] | None = None
    reference_embeddings: np.ndarray | None = None


def embed_samples(pipeline: Any, samples: Sequence[np.ndarray]) -> np.ndarray:
    """One embedding row per sample (16 kHz mono float32) from the pipeline's own speaker-embedding
    model, so they compare with its centroids (``_embedding``, as pyannote's ``SpeakerDiarization``
    names it: CAM++ in the offline pipeline, WeSpeaker in pyannote's)."""
    embedding: Any = getattr(pipeline, "_embedding", None)
    if embedding is None:
        raise RuntimeError(f"{type(pipeline).__name__} has no speaker-embedding model to compare samples with")
    rows = []
    for sample in samples:
        tensor = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))[None, None, :]
        rows.append(np.asarray(embedding(tensor), dtype=np.float64)[0])
    return np.stack(rows)


def run_pyannote_pipeline(
    pipeline: Any,
    waveform: np.ndarray,
    bounds: SpeakerBounds,
    return_embeddings: bool,
    progress_callback: ProgressCallback | None = None,
    samples: Sequence[np.ndarray] = (),
) -> PipelineRun:
    """Diarize 16 kHz mono float32 ``waveform`` with the offline pipeline
    (``PlainSpeakerDiarization``) or a pyannote ``SpeakerDiarization`` (the one inside
    ``whisperx.diarize.DiarizationPipeline.model``): both are called alike and give alike.

    Called directly rather than through whisperX's wrapper, whose table keeps only the
    overlapping annotation: the exclusive one is what words are assigned from. With known-speaker
    ``samples``, the speakers' centroids and the samples' embeddings come back too.
    """
    audio = {"waveform": torch.from_numpy(waveform)[None, :], "sample_rate": SAMPLE_RATE, "uri": "request"}
    hook = _progress_hook(progress_callback)
    extra: dict[str, Any] = {"hook": hook} if hook is not None else {}
    # One file in, so one output (pyannote's DiarizeOutput, or what another pipeline class returns).
    output: Any = pipeline(
        audio,
        num_speakers=bounds.num_speakers,
        min_speakers=bounds.min_speakers,
        max_speakers=bounds.max_speakers,
        **extra,
    )
    annotation = output.speaker_diarization
    exclusive = getattr(output, "exclusive_speaker_diarization", None)
    embeddings = _embeddings_dict(annotation.labels(), output.speaker_embeddings) if return_embeddings else None
    turns = annotation_to_turns(annotation)
    exclusive_turns = annotation_to_turns(exclusive) if exclusive is not None else None
    centroids = references = None
    if samples:
        voices = speaker_voices(waveform, exclusive_turns if exclusive_turns is not None else turns)
        rows = embed_samples(pipeline, list(voices.values())) if voices else np.zeros((0, 0))
        centroids = {label: [float(x) for x in row] for label, row in zip(voices, rows, strict=True)}
        references = embed_samples(pipeline, samples)
    return PipelineRun(turns, exclusive_turns, embeddings, centroids, references)


#: Most speech per diarized speaker embedded to compare with known speakers' samples (seconds).
VOICE_SECONDS = 30.0
#: Least speech a diarized speaker needs to be compared with them (seconds).
MIN_VOICE_SECONDS = 0.5


def speaker_voices(waveform: np.ndarray, turns: Sequence[SpeakerTurn]) -> dict[str, np.ndarray]:
    """Each speaker's voice as one stretch of audio: their longest turns (one speaker at a time)
    up to ``VOICE_SECONDS``, joined in time order; speakers with under ``MIN_VOICE_SECONDS`` left
    out. Why not pyannote's centroids: it pads them with zeros for speakers its clustering did not
    make (measured on the meeting clips: the second speaker of trn00 and trn03), and a voice
    embedded whole compares like with like with a sample embedded whole."""
    voices = {}
    for label in sorted({turn.speaker for turn in turns}):
        chosen = longest_spans(((turn.start, turn.end) for turn in turns if turn.speaker == label), VOICE_SECONDS)
        if sum(end - start for start, end in chosen) >= MIN_VOICE_SECONDS:
            voices[label] = np.concatenate([waveform[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
                                            for start, end in chosen])
    return voices


# --------------------------------------------------------------------------- registry
def _is_local_pipeline(model: str) -> bool:
    """Whether ``model`` names a local pipeline (a directory or a config.yaml) rather than a Hub id."""
    return os.path.isdir(model) or (os.path.isfile(model) and model.endswith((".yaml", ".yml")))


def _describe_error(exc: BaseException, token: str | None) -> str:
    """``Type: message`` shortened to one line of at most 600 characters, the token redacted."""
    message = " ".join(str(exc).split()) or "no details"
    if token:
        message = message.replace(token, "***")
    if len(message) > 600:  # room for a list of missing files
        message = message[:597] + "..."
    return f"{type(exc).__name__}: {message}"


class PipelineFilesMissing(RuntimeError):
    """A requested pipeline cannot load: the message names each missing repository file."""


def load_requested_pipeline(model: str, token: str | None, device: str) -> DiarizationPipeline:
    """``whisperx.diarize.DiarizationPipeline`` for a Hub id or a local pipeline folder/file.

    First reads the pipeline's config and checks every file it will load (see
    ``pyannote_hub``), so a missing one is named instead of surfacing as pyannote's anonymous
    ``LocalEntryNotFoundError`` or ``None``. A pipeline that does not cluster with VBx gets an
    unused PLDA: pyannote 4.0.7 otherwise loads community-1's PLDA files for it (pyannote
    #2044), and an operator who accepted only the repositories 3.1 uses could not load it.
    """
    from whisperx.diarize import DiarizationPipeline

    from stages import pyannote_hub
    from stages.pyannote_offline_diarization import UnusedPLDA

    # pyannote hands the Hub only tokens that start with "hf_" (others are taken for pyannoteAI
    # keys): check the files with the token pyannote will use, and say so when it drops one.
    hub_token = token if token and token.startswith("hf_") else None
    hint = "; pyannote uses only tokens that start with hf_" if token and hub_token is None else ""
    try:
        config = pyannote_hub.read_config(model, hub_token)
    except Exception as exc:  # noqa: BLE001 - reported with the file's name
        missing = [(pyannote_hub.HubFile(model, pyannote_hub.CONFIG_FILE), pyannote_hub.describe_failure(exc))]
        raise PipelineFilesMissing(f"cannot get {pyannote_hub.format_missing(missing)}{hint}") from exc
    missing = pyannote_hub.missing_files(pyannote_hub.needed_files(model, config), hub_token)
    if missing:
        raise PipelineFilesMissing(f"cannot get {pyannote_hub.format_missing(missing)}{hint}")
    source: str | dict[str, Any] = model
    if pyannote_hub.loads_unused_plda(config):
        base = str(Path(model).parent) if os.path.isfile(model) else model
        source = pyannote_hub.expanded_config(base, config)
        source["pipeline"].setdefault("params", {})["plda"] = UnusedPLDA()
    try:
        return DiarizationPipeline(model_name=source, token=token, device=device)
    except AttributeError as exc:
        # pyannote returns None when the Hub refuses a download and whisperX then calls .to()
        # on it: say what that means instead of "NoneType has no attribute".
        if "NoneType" in str(exc):
            raise RuntimeError(
                f"{model} could not be downloaded (gated model without access, bad token, or Hub unreachable)"
            ) from exc
        raise


def _token_key(token: str | None) -> str:
    """A token's stand-in in cache keys: a short hash, so the token itself is not kept twice."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else "-"


PipelineT = TypeVar("PipelineT")


class _Entry(Generic[PipelineT]):
    """A loaded pipeline and its replicas. Each run leases one (pyannote pipelines are not
    documented as re-entrant), so up to ``replicas`` runs go side by side, in as many
    diarization threads; a replica is loaded (with ``load``) when every loaded one is busy."""

    def __init__(self, pipeline: PipelineT, load: Callable[[], PipelineT] | None = None, replicas: int = 1) -> None:
        self.pipeline = pipeline
        self._load = load
        self._replicas = max(1, replicas) if load is not None else 1
        self._free = [pipeline]
        self._count = 1
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def lease(self) -> Iterator[PipelineT]:
        """A replica for one run, returned when the run ends (waits while all are busy)."""
        with self._changed:
            while not self._free and self._count >= self._replicas:
                self._changed.wait()
            pipeline = self._free.pop() if self._free else None
            if pipeline is None:
                self._count += 1
        if pipeline is None:
            assert self._load is not None  # a second replica exists only with a loader
            try:
                pipeline = self._load()
            except BaseException:
                with self._changed:
                    self._count -= 1
                    self._changed.notify()
                raise
        try:
            yield pipeline
        finally:
            with self._changed:
                self._free.append(pipeline)
                self._changed.notify()


class DiarizationModels:
    """Resident registry of diarization pipelines, each loaded once per (model, device).

    Thread-safe: each pipeline loads once, outside any lock that other pipelines need (a load
    stuck on the Hub holds up only the requests for that pipeline: ``model_cache``), and each
    run leases a replica of its own (pyannote pipelines are not documented as re-entrant).
    Creating the registry turns pyannote's usage telemetry off (see ``disable_pyannote_telemetry``).

    device: "cpu" or "cuda".
    offline_dir: folder of the offline weights (see ``offline_diarization``;
        ``settings.WorkerSettings.offline_diarization_dir``).
    offline_hyper_parameters: clustering and segmentation settings of the offline pipeline.
    max_cached: requested pipelines (other than ``kept_models``) kept resident at once; the
        least recently used one is dropped first (``MAX_CACHED_MODELS``).
    replicas: copies of the offline pipeline that may run at once (the Predictor's
        diarization threads); requested pipelines run one request at a time.
    kept_models: pipelines never dropped (the default ``diarization_model``); the offline
        pipeline is never dropped either.
    prepare_pyannote: called before each load of a requested pipeline, the first use of
        pyannote.audio (the worker passes ``precision.pin_pyannote``, which imports it and keeps
        it from switching TF32 off); the offline pipeline never calls it.
    """

    def __init__(
        self,
        device: str,
        offline_dir: str,
        *,
        offline_hyper_parameters: OfflineHyperParameters = OFFLINE_HYPER_PARAMETERS,
        max_cached: int = 2,
        kept_models: frozenset[str] = frozenset({DEFAULT_MODEL}),
        replicas: int = 1,
        prepare_pyannote: Callable[[], object] | None = None,
    ) -> None:
        self.device = device
        self.prepare_pyannote = prepare_pyannote
        self.replicas = replicas
        self.max_cached = max_cached
        self.kept_models = kept_models
        self.offline_dir = offline_dir
        self.offline_hyper_parameters = offline_hyper_parameters
        # (model, device) -> its entry
        self._entries: SingleFlightCache[tuple[str, str], _Entry[Any]] = SingleFlightCache(
            max_cached, kept=self._kept, on_evict=self._evicted)
        self._failures_lock = threading.Lock()  # guards _failed_loads only: never held during a load
        # (model, device, token hash) -> (time.monotonic() of the failure, the error)
        self._failed_loads: dict[tuple[str, str, str], tuple[float, str]] = {}
        disable_pyannote_telemetry()

    # ---- loading
    def _entry(
        self,
        key: tuple[str, str],
        load: Callable[[], PipelineT],
        replicas: int = 1,
        *,
        wait_check: Callable[[], None] | None = None,
        retry_failed: bool = False,
    ) -> _Entry[PipelineT]:
        """The cached pipeline for ``key`` (model, device), loading it with ``load()`` on first use.

        The load runs outside the registry's lock: callers of other keys go on meanwhile, callers
        of ``key`` wait for it and get its exception when it fails (unless ``retry_failed``:
        then they load in turn); a failed load is not kept, the next caller loads again.
        wait_check: called about every 0.2 s while waiting for another caller's load; what it
        raises ends the wait.
        """

        def load_entry() -> _Entry[PipelineT]:
            started = time.perf_counter()
            entry = _Entry(load(), load, replicas)
            logger.info("diarization pipeline %s loaded on %s in %.1f s", key[0], key[1], time.perf_counter() - started)
            return entry

        entry, _ = self._entries.get(key, load_entry, wait_check=wait_check, retry_failed=retry_failed)
        return entry

    def _kept(self, key: tuple[str, str]) -> bool:
        return key[0] in self.kept_models or key[0].startswith(f"{OFFLINE_BACKEND}@")

    def _evicted(self, keys: list[tuple[str, str]]) -> None:
        """Dropped from the cache (least recently used beyond ``max_cached``); a run in progress
        keeps its own reference."""
        for key in keys:
            logger.info("diarization pipeline %s dropped from the cache (MAX_CACHED_MODELS=%d)", key[0], self.max_cached)
        _release_cuda_memory()

    def resident(self) -> list[str]:
        """Names of the resident pipelines, least recently used first."""
        return [key[0] for key in self._entries.resident()]

    def offline_pipeline(self, *, wait_check: Callable[[], None] | None = None) -> _Entry[PlainSpeakerDiarization]:
        """The offline pipeline (loaded on first use); raises when its weights are missing.
        wait_check: as for ``_entry``."""
        key = (f"{OFFLINE_BACKEND}@{self.offline_dir}", self.device)
        return self._entry(
            key, lambda: build_offline_pipeline(self.offline_dir, self.device, self.offline_hyper_parameters),
            self.replicas, wait_check=wait_check,
        )

    def requested_pipeline(
        self, model: str, token: str | None, *, wait_check: Callable[[], None] | None = None
    ) -> _Entry[DiarizationPipeline]:
        """``whisperx.diarize.DiarizationPipeline`` for a Hub id or local directory (loaded once).

        A failed load is remembered for ``FAILED_LOAD_RETRY_S`` (per model, device and token):
        until then the same request gets ``PipelineLoadFailedEarlier`` at once instead of another
        round of Hub calls. Requests that arrive while the model loads wait for that load; when
        it fails, each tries in turn with its own token (one caller's error, which may quote its
        token, never reaches another), and those with the failed token get
        ``PipelineLoadFailedEarlier``. wait_check: as for ``_entry``.
        """
        key = (model, self.device)
        failure_key = (model, self.device, _token_key(token))

        def refuse_if_failed_earlier() -> None:
            with self._failures_lock:
                failed = self._failed_loads.get(failure_key)
            if failed is not None and time.monotonic() - failed[0] < FAILED_LOAD_RETRY_S:
                raise PipelineLoadFailedEarlier(f"{failed[1]} (remembered from an earlier request; retried "
                                                f"{FAILED_LOAD_RETRY_S / 60:.0f} min after it failed)")

        # A resident pipeline serves every token (as before); only a load is refused.
        if key not in self._entries:
            refuse_if_failed_earlier()

        def load() -> DiarizationPipeline:
            """Run by the one caller that loads: records the outcome for this token."""
            refuse_if_failed_earlier()  # it may have failed with this token while this call waited
            try:
                if self.prepare_pyannote is not None:
                    self.prepare_pyannote()
                pipeline = load_requested_pipeline(model, token, self.device)
            except Exception as exc:
                with self._failures_lock:
                    now = time.monotonic()
                    # Expired failures go first, so one entry per token seen recently at most.
                    for old in [k for k, (when, _) in self._failed_loads.items() if now - when >= FAILED_LOAD_RETRY_S]:
                        del self._failed_loads[old]
                    self._failed_loads[failure_key] = (now, _describe_error(exc, token))
                raise
            with self._failures_lock:  # loaded: earlier failures of this model no longer apply
                for old in [k for k in self._failed_loads if k[:2] == key]:
                    del self._failed_loads[old]
            return pipeline

        return self._entry(key, load, wait_check=wait_check, retry_failed=True)

    def warm_up_embeddings(self) -> int:
        """``PlainSpeakerDiarization.warm_up_embeddings`` of the offline pipeline, when loaded;
        the number of forwards run."""
        try:
            entry = self.offline_pipeline()
        except Exception:  # noqa: BLE001 - reported by warm_up and per request
            return 0
        with entry.lease() as pipeline:
            return pipeline.warm_up_embeddings()

    def warm_up(self) -> None:
        """Load the offline pipeline now (start-up), and what its first run would import,
        logging instead of raising on failure."""
        try:
            self.offline_pipeline().pipeline.warm_up()
        except Exception as exc:  # noqa: BLE001 - a missing offline pipeline is reported per request
            logger.warning("offline diarization pipeline not loaded: %s", _describe_error(exc, None))

    # ---- running
    def diarize(
        self,
        waveform: np.ndarray,
        *,
        model: str,
        token: str | None,
        min_speakers: int | None,
        max_speakers: int | None,
        num_speakers: int | None,
        return_embeddings: bool,
        progress_callback: ProgressCallback | None = None,
        samples: Sequence[np.ndarray] = (),
    ) -> DiarizationOutput:
        """Speaker turns of ``waveform`` (float32 mono, 16 kHz samples).

        ``samples``: known speakers' voices (16 kHz mono float32); their embeddings and the
        speakers' centroids come back in the output (``known_speakers`` pairs them).

        Tries ``model`` when a token is given or ``model`` is a local directory; otherwise, or
        when that fails, runs the offline pipeline and adds a warning naming why. Raises
        ``DiarizationUnavailable`` when both fail, and ``Stopped`` when ``progress_callback``
        raised it (called with a percentage after each batch: the place to end a run early).
        """
        model = (model or DEFAULT_MODEL).strip()
        token = token or None
        try:
            audio = np.ascontiguousarray(np.squeeze(np.asarray(waveform, dtype=np.float32)))
            if audio.ndim != 1:
                raise ValueError(f"expected mono audio, got an array of shape {np.shape(waveform)}")
            # A NaN sample would poison every window that contains it.
            audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
            bounds, notes = normalize_speaker_bounds(num_speakers, min_speakers, max_speakers)
        except (TypeError, ValueError) as exc:
            raise DiarizationUnavailable(f"bad diarization input: {_describe_error(exc, token)}") from exc
        duration = audio.size / SAMPLE_RATE
        if audio.size == 0:
            return DiarizationOutput([], {} if return_embeddings else None, "none", notes + ["no audio to diarize"])

        if token is not None or _is_local_pipeline(model):
            try:
                entry = self.requested_pipeline(model, token)
                with entry.lease() as requested:
                    run = run_pyannote_pipeline(requested.model, audio, bounds, return_embeddings, progress_callback,
                                                samples)
                return self._finish(run, duration, model, bounds, notes)
            except Stopped:
                raise  # the job is over: no fallback run
            except Exception as exc:  # noqa: BLE001 - any failure falls back to the offline pipeline
                reason = f"diarization model {model} failed ({_describe_error(exc, token)})"
                logger.warning("%s; trying the offline pipeline", reason)
                _release_cuda_memory()
        else:
            reason = f"no Hugging Face token for the gated {model}"

        try:
            offline = self.offline_pipeline()
            with offline.lease() as pipeline:
                run = run_pyannote_pipeline(pipeline, audio, bounds, return_embeddings, progress_callback, samples)
        except Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as DiarizationUnavailable
            _release_cuda_memory()
            detail = _describe_error(exc, token)
            logger.error("%s; offline diarization failed too: %s", reason, detail)
            raise DiarizationUnavailable(f"{reason}; the offline pipeline failed too ({detail})") from exc
        notes.append(f"{reason}: used the token-free pipeline {OFFLINE_BACKEND} instead")
        return self._finish(run, duration, OFFLINE_BACKEND, bounds, notes)

    @staticmethod
    def _finish(
        run: PipelineRun,
        duration: float,
        backend: str,
        bounds: SpeakerBounds,
        notes: list[str],
    ) -> DiarizationOutput:
        """Package a result (turns cut to the audio's ``duration`` in seconds), warning when
        the speaker count misses the requested bounds."""
        turns = clip_turns(run.turns, duration)
        exclusive = clip_turns(run.exclusive_turns, duration) if run.exclusive_turns is not None else None
        embeddings = run.embeddings
        count = len({turn.speaker for turn in turns})
        if turns and not bounds.admits(count):
            message = f"diarization found {count} speaker(s), not {bounds.describe()} as requested"
            if count < (bounds.num_speakers or bounds.min_speakers or 0):
                message += " (too little speech from the others to tell them apart)"
            notes.append(message)
        if not turns:
            notes.append("diarization found no speech")
        logger.info("diarization (%s): %d turns, %d speakers", backend, len(turns), count)
        return DiarizationOutput(turns, embeddings, backend, notes, exclusive, run.centroids, run.reference_embeddings)


def _release_cuda_memory() -> None:
    """Return cached CUDA blocks after a failure (an OOM leaves them held), if CUDA is in use."""
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass
