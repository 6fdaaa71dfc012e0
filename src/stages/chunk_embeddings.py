"""The embedding step of the offline diarization pipeline: one CAM++ embedding per
(10 s chunk, local speaker), computed file-wide.

Same result as pyannote's ``SpeakerDiarization.get_embeddings`` with ``CampPlusEmbedding`` (which
crops each chunk and embeds its local speakers one batch at a time), but: the fbank is computed
once over the whole file and each chunk takes its slice of it (chunks start on whole 10 ms
frames; they overlap by 90 %, so this is 30x less fbank work with 3 local speakers); masks are
turned into fbank frames for all rows at once on the CPU; and all rows of the file are grouped
by bucketed length, so CAM++ runs once per distinct length (255 forwards for 16 min of speech,
against 793 in batches of 64 rows) with as many rows per forward as ``embedding_rows`` allows.

Shared by the plain pipeline (``plain_diarization``) and the pyannote-based one
(``pyannote_offline_diarization``), so both embed alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stages.pyannote_core import SlidingWindowFeature
from stages.campplus import CPU_EMBEDDING_FRAMES, CUDA_EMBEDDING_FRAMES, SAMPLE_RATE, CampPlusEmbedding

logger = logging.getLogger("diarization")

EmbeddingHook = Callable[..., None]
"""Called as ``hook("embeddings", None, total=forwards, completed=done)``."""


def embedding_rows(batch_size: int, length: int, cuda: bool) -> int:
    """Most rows per CAM++ forward for rows of ``length`` fbank frames (10 ms).

    batch_size: the pipeline's batch size (``OfflineHyperParameters.batch_size``).
    """
    if cuda:
        # A GPU wants far more than batch_size rows per forward: cap the frames instead
        # (activation memory grows with rows x frames), never below batch_size rows; a
        # power of two, as pad_rows rounds the last forward of each length to one.
        return max(batch_size, 1 << ((CUDA_EMBEDDING_FRAMES // length).bit_length() - 1))
    # A CPU is fastest per frame at a couple of thousand frames per forward.
    return max(1, min(batch_size, CPU_EMBEDDING_FRAMES // length))


def chunk_features(embedding: CampPlusEmbedding, waveform: torch.Tensor, bounds: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
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


def embed_chunks(
    embedding: CampPlusEmbedding,
    waveform: torch.Tensor,
    binary_segmentations: SlidingWindowFeature,
    *,
    batch_size: int,
    exclude_overlap: bool = False,
    hook: EmbeddingHook | None = None,
) -> np.ndarray:
    """CAM++ embedding of each (chunk, local speaker): (chunks, local speakers, 192), NaN where
    a local speaker has too little speech in its chunk.

    waveform: (1, samples) mono at 16 kHz.
    binary_segmentations: (chunks, segmentation frames, local speakers), 1 = speaking (NaN
        counts as silence), on the chunks' sliding window (seconds).
    batch_size: rows per CAM++ forward on a CPU at most, on CUDA at least (``embedding_rows``).
    exclude_overlap: embed only the frames where the local speaker is alone, when there are
        more than ``min_num_samples`` worth of them (pyannote's rule).
    hook: called as ``hook("embeddings", None, total=forwards, completed=done)``.
    """
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

    with torch.inference_mode():
        frames, chunk_starts = chunk_features(embedding, waveform, bounds)

    on_cuda = embedding.device.type == "cuda"

    def progress(completed: int, total: int) -> None:
        if hook is not None:
            hook("embeddings", None, total=max(total, 1), completed=completed if total else 1)

    vectors = embedding.embed_frames(
        frames, np.repeat(chunk_starts, num_speakers), keep,
        max_rows=lambda length: embedding_rows(batch_size, length, on_cuda), progress=progress, pad_rows=on_cuda,
    )
    return vectors.reshape(num_chunks, num_speakers, embedding.dimension)


def warm_up_embedding(embedding: CampPlusEmbedding) -> int:
    """On a GPU, run CAM++ once, so its kernels are loaded before the first job (its
    convolutions avoid cuDNN, so no input shape needs a plan of its own:
    ``campplus._route_convolutions``). Returns the forwards run (0 on a CPU)."""
    if embedding.device.type != "cuda":
        return 0
    with torch.inference_mode():
        embedding.network(torch.zeros((1, embedding.min_num_frames, 80), device=embedding.device))
    torch.cuda.synchronize()
    return 1
