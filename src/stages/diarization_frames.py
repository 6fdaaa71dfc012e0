"""Frame-level steps of the offline diarization pipeline, between the chunks' local speakers and
the speaker turns: how many speakers talk in each frame, which global speakers those are, and
the turns they make (the algorithm of pyannote's ``SpeakerDiarization``, re-implemented on numpy
and ``pyannote.core``'s time structures, without pyannote.audio).

Chunks are the 10 s windows the segmentation model saw (one every second, overlapping); frames
are the model's output frames (~16.9 ms apart) on a file-wide grid that starts at 0 s. Every
step here sums 0/1 values, so results are exact whatever the order of the sums; where pyannote's
result depends on a library's tie-breaking (the speakers' ranking in a frame) or on float
formulas (frame times), the same numpy/pyannote.core calls are made on the same dtypes.
"""

from __future__ import annotations

import numpy as np

from stages.pyannote_core import Annotation, Segment, SlidingWindow, SlidingWindowFeature, string_generator


def overlap_add(scores: SlidingWindowFeature, frames: SlidingWindow, average: bool) -> SlidingWindowFeature:
    """Chunk-level frame scores added up on the file's frame grid.

    scores: (chunks, frames per chunk, classes) on the chunks' window; NaN = no score.
    frames: the model's frame grid (only its duration and step are used: the file's grid starts
        where the chunks start, 0 s).
    average: divide each frame's sum by the number of chunks that scored it; otherwise the sum.

    Returns (file frames, classes) float32; frames no chunk scored are 0. As pyannote's
    ``Inference.aggregate`` without Hamming window or warm-up (what its diarization uses): each
    chunk's first frame is the grid frame closest to the chunk's first frame centre.
    """
    data = scores.data
    num_chunks, per_chunk, num_classes = data.shape
    chunks = scores.sliding_window
    grid = SlidingWindow(start=chunks.start, duration=frames.duration, step=frames.step)
    last_end = chunks.start + chunks.duration + (num_chunks - 1) * chunks.step
    num_frames = grid.closest_frame(last_end + 0.5 * grid.duration) + 1
    summed = np.zeros((num_frames, num_classes), dtype=np.float32)
    counted = np.zeros((num_frames, num_classes), dtype=np.float32)
    for index in range(num_chunks):
        chunk_start = chunks.start + index * chunks.step  # as SlidingWindow[index].start
        first = grid.closest_frame(chunk_start + 0.5 * grid.duration)
        scored = ~np.isnan(data[index])
        summed[first:first + per_chunk] += np.where(scored, data[index], 0.0)
        counted[first:first + per_chunk] += scored
    if average:
        out = summed / np.maximum(counted, np.float32(1e-12))
    else:
        out = summed
    out[counted == 0.0] = 0.0
    return SlidingWindowFeature(out, grid)


def speaker_count(binary: SlidingWindowFeature, frames: SlidingWindow) -> SlidingWindowFeature:
    """How many speakers talk in each file frame: (file frames, 1) uint8, the mean over the
    chunks covering the frame of their count of active local speakers, rounded half to even.

    binary: (chunks, frames per chunk, local speakers) 0/1 segmentation.
    """
    per_chunk = np.sum(binary.data, axis=-1, keepdims=True)
    mean = overlap_add(SlidingWindowFeature(per_chunk, binary.sliding_window), frames, average=True)
    return SlidingWindowFeature(np.rint(mean.data).astype(np.uint8), mean.sliding_window)


def cluster_activity(segmentations: SlidingWindowFeature, hard_clusters: np.ndarray) -> SlidingWindowFeature:
    """Each chunk's activity per global speaker: (chunks, frames per chunk, clusters), the
    maximum over the chunk's local speakers assigned to that cluster, NaN for clusters the chunk
    has none of. hard_clusters: (chunks, local speakers), -2 = left out (inactive)."""
    data = segmentations.data
    num_chunks, per_chunk, _ = data.shape
    num_clusters = int(np.max(hard_clusters)) + 1
    clustered = np.full((num_chunks, per_chunk, num_clusters), np.nan)
    for chunk, clusters in enumerate(hard_clusters):
        for cluster in np.unique(clusters):
            if cluster == -2:
                continue
            clustered[chunk, :, cluster] = np.max(data[chunk][:, clusters == cluster], axis=1)
    return SlidingWindowFeature(clustered, segmentations.sliding_window)


def discrete_diarization(clustered: SlidingWindowFeature, count: SlidingWindowFeature) -> SlidingWindowFeature:
    """(file frames, speakers) 0/1: in each frame, the ``count`` speakers with the highest
    summed activity over the chunks covering it.

    clustered: ``cluster_activity``; count: ``speaker_count`` (possibly capped).
    """
    activations = overlap_add(clustered, count.sliding_window, average=False)
    num_speakers = activations.data.shape[1]
    most = int(np.max(count.data))
    if num_speakers < most:  # more speakers at once than clusters: the extra columns stay silent
        activations.data = np.pad(activations.data, ((0, 0), (0, most - num_speakers)))
    extent = activations.extent & count.extent
    activations = activations.crop(extent, return_data=False)
    count = count.crop(extent, return_data=False)
    # numpy's argsort (not stable) on the same float32 values as pyannote's: ties between
    # equally active speakers break the same way.
    ranked = np.argsort(-activations.data, axis=-1)
    chosen = np.arange(ranked.shape[1])[None, :] < count.data.reshape(-1, 1).astype(np.int64)
    binary = np.zeros_like(activations.data)
    np.put_along_axis(binary, ranked, chosen.astype(binary.dtype), axis=1)
    return SlidingWindowFeature(binary, activations.sliding_window)


def to_annotation(binary: SlidingWindowFeature, min_duration_off: float) -> Annotation:
    """Speaker turns of a discrete diarization, labels = column numbers (int).

    A turn runs from the centre of its first active frame to the centre of the first inactive
    one after it (or of the last frame); a speaker's gaps shorter than ``min_duration_off``
    seconds are filled (pyannote's ``Binarize`` at 0.5 with ``Annotation.support``).
    """
    data = binary.data
    num_frames, num_classes = data.shape
    frames = binary.sliding_window
    starts = frames.start + np.arange(num_frames) * frames.step
    middles = 0.5 * (starts + (starts + frames.duration))  # as Segment.middle of SlidingWindow[i]
    annotation = Annotation()
    tracks = string_generator()
    for label in range(num_classes):
        track = next(tracks)
        active = np.concatenate([[False], data[:, label] > 0.5, [False]])
        edges = np.flatnonzero(np.diff(active.astype(np.int8)))
        for onset, offset in zip(edges[::2], edges[1::2]):
            end = middles[offset] if offset < num_frames else middles[num_frames - 1]
            annotation[Segment(float(middles[onset]), float(end)), track] = label
    if min_duration_off > 0.0:
        annotation = annotation.support(collar=min_duration_off)
    return annotation
