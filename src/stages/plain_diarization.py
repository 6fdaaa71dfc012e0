"""The token-free offline diarization pipeline in plain torch and numpy, without pyannote.audio.

It does what ``pyannote_offline_diarization.OfflineSpeakerDiarization`` (pyannote's
``SpeakerDiarization`` with segmentation-3.0, CAM++ and agglomerative clustering) does, with the
same weights, hyper-parameters and output, but importing it and building it costs no
pyannote.audio import (~5-6 s of CPU at start-up: Lightning, torchmetrics, transformers,
torchvision). ``pyannote.core`` (turns as ``Annotation``) is still used. The steps, each in its
own module:

1. ``speaker_segmentation``: segmentation-3.0 on 10 s chunks, one every second: each chunk's
   frame-level activity of up to 3 local speakers (at most 2 at once).
2. ``diarization_frames.speaker_count``: how many speakers talk in each frame of the file.
3. ``chunk_embeddings``: a CAM++ embedding per (chunk, local speaker).
4. ``diarization_clustering``: local speakers clustered into global speakers, honouring a
   requested speaker count or bounds.
5. ``diarization_frames``: in each frame, the counted number of most active global speakers;
   then turns (all speakers, overlaps kept) and exclusive turns (one speaker at a time).

``tests/integration/test_plain_diarization.py`` checks its turns against the pyannote-based
pipeline's on real speech.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stages.campplus import SAMPLE_RATE, CampPlusEmbedding, load_campplus_embedding
from stages.chunk_embeddings import embed_chunks, warm_up_embedding
from stages.diarization_clustering import ClusteringParameters, cluster_embeddings, import_scipy
from stages.diarization_frames import cluster_activity, discrete_diarization, speaker_count, to_annotation
from stages.pyannote_core import Annotation, SlidingWindowFeature
from stages.offline_assets import OFFLINE_HYPER_PARAMETERS, OfflineHyperParameters, for_device, locate_offline_assets
from stages.speaker_segmentation import SpeakerSegmentation, load_segmentation_network

logger = logging.getLogger("diarization")

Hook = Callable[..., None]
"""pyannote's pipeline hook: ``hook(step_name, artifact, file=file, total=..., completed=...)``."""


@dataclass
class DiarizeOutput:
    """One file's diarization, as pyannote 4's ``DiarizeOutput``.

    speaker_diarization: turns of SPEAKER_00, SPEAKER_01... (overlapping speech kept).
    exclusive_speaker_diarization: the same speech, one speaker at a time.
    speaker_embeddings: (speakers, 192) centroid of each speaker's CAM++ embeddings, rows in
        ``speaker_diarization.labels()`` order (zero rows for speakers clustering did not make).
    """

    speaker_diarization: Annotation
    exclusive_speaker_diarization: Annotation
    speaker_embeddings: np.ndarray | None = None


def speaker_bounds(num_speakers: int | None, min_speakers: int | None,
                   max_speakers: int | None) -> tuple[int | None, int, float]:
    """(exact count or None, least, most (``math.inf`` for no bound)) speakers, as pyannote
    reads them: ``num_speakers`` overrides the bounds, equal bounds make an exact count.
    ValueError when the least is above the most."""
    least = num_speakers or min_speakers or 1
    most: float = num_speakers or max_speakers or math.inf
    if least > most:
        raise ValueError(f"min_speakers must be smaller than (or equal to) max_speakers "
                         f"(here: min_speakers={least:g} and max_speakers={most:g}).")
    return (least if least == most else num_speakers), least, most


def _no_hook(*args: Any, **kwargs: Any) -> None:
    return None


class PlainSpeakerDiarization:
    """segmentation-3.0 + CAM++ + agglomerative clustering, called as pyannote's pipeline is:
    ``pipeline(file, num_speakers=..., min_speakers=..., max_speakers=..., hook=...)`` with
    ``file = {"waveform": (channels, samples) tensor, "sample_rate": int, "uri": str}``, returning
    ``DiarizeOutput``. Built by ``load_plain_pipeline``; not re-entrant (one run at a time).
    """

    def __init__(self, segmentation: SpeakerSegmentation, embedding: CampPlusEmbedding,
                 hyper_parameters: OfflineHyperParameters) -> None:
        self.segmentation = segmentation
        # Named as pyannote's SpeakerDiarization names it: diarization.embed_samples and the
        # benches reach the embedding model through this attribute on either pipeline.
        self._embedding = embedding
        self.hyper_parameters = hyper_parameters
        self.device = torch.device("cpu")

    @property
    def clustering(self) -> ClusteringParameters:
        """The clustering hyper-parameters."""
        hp = self.hyper_parameters
        return ClusteringParameters(hp.clustering_method, hp.clustering_threshold, hp.min_cluster_size)

    def to(self, device: torch.device) -> PlainSpeakerDiarization:
        """Move both models to ``device`` (on CUDA, CAM++'s convolutions avoid cuDNN: ``campplus``)."""
        self.segmentation.to(device)
        self._embedding.to(device)
        self.device = torch.device(device)
        return self

    # ---- the steps
    @staticmethod
    def waveform(file: Mapping[str, Any]) -> torch.Tensor:
        """The file's (1, samples) 16 kHz mono waveform: its ``channel`` if named, channels
        averaged otherwise, resampled when needed (as pyannote's ``Audio`` does)."""
        waveform = file.get("waveform")
        if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2:
            raise ValueError("expected file['waveform'] as a (channels, samples) torch.Tensor")
        channel = file.get("channel")
        if channel is not None:
            waveform = waveform[channel:channel + 1]
        if waveform.shape[0] > 1:
            waveform = waveform.mean(dim=0, keepdim=True)
        sample_rate = int(file["sample_rate"])
        if sample_rate != SAMPLE_RATE:
            import torchaudio.functional

            waveform = torchaudio.functional.resample(waveform, sample_rate, SAMPLE_RATE)
        return waveform

    def get_segmentations(self, file: Mapping[str, Any], hook: Hook | None = None) -> SlidingWindowFeature:
        """(chunks, frames, local speakers) 0/1 activity of every 10 s chunk (``speaker_segmentation``).
        hook: called as ``hook("segmentation", None, completed=chunks done, total=chunks)``."""
        progress = functools.partial(hook, "segmentation", None) if hook is not None else None
        return self.segmentation(self.waveform(file), hook=progress)

    def get_embeddings(self, file: Mapping[str, Any], binary_segmentations: SlidingWindowFeature,
                       exclude_overlap: bool = False, hook: Hook | None = None) -> np.ndarray:
        """(chunks, local speakers, 192) CAM++ embeddings, NaN rows for local speakers with too
        little speech (``chunk_embeddings.embed_chunks``)."""
        return embed_chunks(self._embedding, self.waveform(file), binary_segmentations,
                            batch_size=self.hyper_parameters.batch_size, exclude_overlap=exclude_overlap, hook=hook)

    def warm_up(self) -> None:
        """Import what the first run that clusters would (scipy's clustering, ~0.3 s), so that a
        start-up lane pays it instead of the first job: a warm-up run on noise never clusters."""
        import_scipy()

    def warm_up_embeddings(self) -> int:
        """``chunk_embeddings.warm_up_embedding`` of this pipeline's CAM++ (GPU only)."""
        return warm_up_embedding(self._embedding)

    # ---- the whole pipeline
    def __call__(
        self,
        file: Mapping[str, Any],
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        hook: Hook | None = None,
    ) -> DiarizeOutput:
        """Diarize one file (see the class docstring); hook calls as pyannote's: progress of
        ``segmentation`` and ``embeddings`` (``total``/``completed``), and each step's result
        (``segmentation``, ``speaker_counting``, ``embeddings``, ``discrete_diarization``).

        The speaker count found can still miss ``min_speakers`` (too few embeddings to make
        that many clusters): logged, and the caller compares the labels with its bounds.
        """
        notify = functools.partial(hook or _no_hook, file=file)
        num_speakers, min_speakers, most = speaker_bounds(num_speakers, min_speakers, max_speakers)
        uri = file.get("uri")

        segmentations = self.get_segmentations(file, hook=notify)
        notify("segmentation", segmentations)
        # segmentation-3.0 is a powerset model: its decoded activity is already binary.
        count = speaker_count(segmentations, self.segmentation.frames)
        notify("speaker_counting", count)
        if np.nanmax(count.data) == 0.0:  # nobody speaks anywhere
            return DiarizeOutput(Annotation(uri=uri), Annotation(uri=uri), np.zeros((0, self._embedding.dimension)))

        embeddings = self.get_embeddings(file, segmentations, self.hyper_parameters.embedding_exclude_overlap,
                                         hook=notify)
        notify("embeddings", embeddings)
        clusters = cluster_embeddings(embeddings, segmentations.data, self.clustering, num_clusters=num_speakers,
                                      min_clusters=min_speakers, max_clusters=most)
        hard, centroids = clusters.hard, clusters.centroids
        found = int(np.max(hard)) + 1
        if found < min_speakers or found > most:
            logger.info("diarization found %d speaker(s) for %s, outside [%s, %s]", found, uri, min_speakers, most)

        # Segmentation may count more speakers at once than were asked for: cap the count.
        count.data = np.minimum(count.data, most).astype(np.int8)
        # Local speakers silent in their whole chunk take no part in the reconstruction.
        hard[np.sum(segmentations.data, axis=1) == 0] = -2
        clustered = cluster_activity(segmentations, hard)
        discrete = discrete_diarization(clustered, count)
        notify("discrete_diarization", discrete)
        min_off = self.hyper_parameters.min_duration_off
        diarization = to_annotation(discrete, min_duration_off=min_off)
        count.data = np.minimum(count.data, 1).astype(np.int8)
        exclusive = to_annotation(discrete_diarization(clustered, count), min_duration_off=min_off)
        diarization.uri = exclusive.uri = uri

        # Cluster numbers -> SPEAKER_00, SPEAKER_01... in the order of the clusters that speak.
        mapping = {label: f"SPEAKER_{index:02d}" for index, label in enumerate(diarization.labels())}
        diarization = diarization.rename_labels(mapping=mapping)
        exclusive = exclusive.rename_labels(mapping=mapping)
        labels = diarization.labels()
        if len(labels) > centroids.shape[0]:
            # More speakers at once than clusters: the extra speakers get zero centroids.
            centroids = np.pad(centroids, ((0, len(labels) - centroids.shape[0]), (0, 0)))
        cluster_of = {name: cluster for cluster, name in mapping.items()}
        centroids = centroids[[cluster_of[label] for label in labels]]
        return DiarizeOutput(diarization, exclusive, centroids)


def load_plain_pipeline(offline_dir: str, hyper_parameters: OfflineHyperParameters = OFFLINE_HYPER_PARAMETERS,
                        ) -> PlainSpeakerDiarization:
    """The plain pipeline on the CPU, from the offline weights in ``offline_dir``
    (``offline_assets.locate_offline_assets``). Raises FileNotFoundError when they are missing."""
    assets = locate_offline_assets(offline_dir)
    network, task = load_segmentation_network(assets.segmentation)
    segmentation = SpeakerSegmentation(network, task, step=hyper_parameters.segmentation_step * task.duration,
                                       batch_size=hyper_parameters.batch_size)
    embedding = load_campplus_embedding(assets.campplus_code, assets.campplus_weights,
                                        hyper_parameters.min_embedding_seconds)
    return PlainSpeakerDiarization(segmentation, embedding, hyper_parameters)


def build_plain_pipeline(offline_dir: str, device: str = "cpu",
                         hyper_parameters: OfflineHyperParameters = OFFLINE_HYPER_PARAMETERS) -> PlainSpeakerDiarization:
    """The plain pipeline, ready to run on ``device`` ("cpu" or "cuda"; on CUDA with bigger
    batches: ``offline_assets.for_device``)."""
    pipeline = load_plain_pipeline(offline_dir, for_device(hyper_parameters, device))
    return pipeline.to(torch.device(device))

