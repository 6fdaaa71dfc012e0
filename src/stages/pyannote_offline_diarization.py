"""The offline diarization pipeline on pyannote.audio: pyannote's ``SpeakerDiarization`` with
segmentation-3.0 and CAM++ (``campplus``) as its embedding step, clustered with agglomerative
clustering.

The worker runs ``plain_diarization`` instead (the same pipeline without pyannote.audio, whose
import costs seconds of start-up). This class stays for what needs pyannote's machinery: local
pipeline folders whose ``config.yaml`` names ``diarization.OfflineSpeakerDiarization`` (or
``offline_diarization.``; both resolve here lazily), pyannote's training cache for
hyper-parameter sweeps (``bench/diarization_quality.py --grid``), and the tests that check the
plain pipeline against it. Importing this module imports pyannote.audio.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from typing import Any, NoReturn

import numpy as np
import torch
from pyannote.audio import Model
from pyannote.audio.core.plda import PLDA
from pyannote.audio.core.task import Specifications
from pyannote.audio.pipelines import SpeakerDiarization
from pyannote.core import SlidingWindowFeature

from stages.campplus import CampPlusEmbedding, load_campplus_embedding
from stages.chunk_embeddings import embed_chunks, warm_up_embedding
from stages.offline_assets import (
    OFFLINE_BACKEND,
    OFFLINE_HYPER_PARAMETERS,
    OfflineHyperParameters,
    for_device,
    locate_offline_assets,
)
from stages.pyannote_telemetry import disable_pyannote_telemetry


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

    def to(self, device: torch.device) -> OfflineSpeakerDiarization:
        """Move the models to ``device`` (CAM++ is not one of pyannote's registered inferences,
        so it is moved here)."""
        super().to(device)
        self._embedding.to(device)
        return self

    def get_embeddings(
        self,
        file: MutableMapping[str, Any],
        binary_segmentations: SlidingWindowFeature,
        exclude_overlap: bool = False,
        hook: Callable | None = None,
    ) -> np.ndarray:
        """CAM++ embedding of each (chunk, local speaker): (chunks, local speakers, 192),
        NaN where a local speaker has too little speech in its chunk (``chunk_embeddings``:
        pyannote's result, computed file-wide).

        file: the file being processed (pyannote's ``ProtocolFile``: its audio, and the cache).
        binary_segmentations: (chunks, segmentation frames, local speakers), 1 = speaking.
        exclude_overlap: embed only the frames where the local speaker is alone (pyannote's rule).
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

        waveform, _ = self._audio(file)  # (channels, samples) at 16 kHz, downmixed to 1 channel
        embeddings = embed_chunks(self._embedding, waveform, binary_segmentations, batch_size=self.embedding_batch_size,
                                  exclude_overlap=exclude_overlap, hook=hook)
        if self.training:
            entry = {"embeddings": embeddings}
            if not powerset:
                entry["segmentation.threshold"] = self.segmentation.threshold
            file[cache_key] = entry
        return embeddings

    def warm_up_embeddings(self) -> int:
        """``chunk_embeddings.warm_up_embedding`` of this pipeline's CAM++."""
        embedding: CampPlusEmbedding = self._embedding
        return warm_up_embedding(embedding)


def build_pyannote_offline_pipeline(
    offline_dir: str | os.PathLike[str],
    device: str = "cpu",
    hyper_parameters: OfflineHyperParameters = OFFLINE_HYPER_PARAMETERS,
) -> OfflineSpeakerDiarization:
    """The pyannote-based offline pipeline, ready to run on ``device`` ("cpu" or "cuda"), with
    the hyper-parameters the plain one gets there (``offline_assets.for_device``).

    Raises FileNotFoundError when the weights are missing, other errors when they do not load.
    """
    disable_pyannote_telemetry()
    pipeline = OfflineSpeakerDiarization(offline_dir=str(offline_dir), hyper_parameters=for_device(hyper_parameters, device))
    return pipeline.to(torch.device(device))
