"""Voice activity detection: speech regions, then windows of at most 30 s for the ASR.

The VAD network gives frame-level speech probabilities once per request; every threshold
below is applied afterwards, per request, so requests with different ``vad_*`` options share
one resident model. Unlike whisperX (which passes ``min_duration_*``/``pad_*`` to a pipeline
that ignores them), all six seed parameters act here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from stages.vad_network import SAMPLE_RATE as SAMPLE_RATE  # re-exported: the stages' sample rate
from stages.vad_network import SpeechScores, VadNetwork


@dataclass(frozen=True)
class VadOptions:
    """Per-request VAD thresholds; durations in seconds."""

    onset: float = 0.300  # probability above which speech starts
    offset: float = 0.250  # probability below which speech ends
    min_duration_on: float = 0.08  # drop speech regions shorter than this
    min_duration_off: float = 0.08  # fill silences shorter than this
    pad_onset: float = 0.0  # extend each region's start by this much
    pad_offset: float = 0.0  # extend each region's end by this much
    chunk_size: float = 30.0  # longest ASR window (Whisper's receptive field)


@dataclass(frozen=True)
class SpeechWindow:
    """One ASR window: [start, end) in seconds, made of one or more speech regions."""

    start: float
    end: float
    regions: tuple[tuple[float, float], ...]
    speech_prob: float = 1.0  # mean VAD speech probability over the regions (1.0 if unknown)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def speech_s(self) -> float:
        """Seconds of speech: the regions' total length (the whole span when none are given)."""
        return sum(end - start for start, end in self.regions) if self.regions else self.duration


def speech_scores(network: VadNetwork, waveform: np.ndarray) -> SpeechScores:
    """Frame-level speech probabilities for 16 kHz mono float32 ``waveform``, in one go."""
    return speech_scores_in_steps(network, waveform, lambda work: work())


def speech_scores_in_steps(network: VadNetwork, waveform: np.ndarray,
                           run: Callable[[Callable[[], np.ndarray]], np.ndarray]) -> SpeechScores:
    """``speech_scores``, each forward batch of 5 s chunks handed to ``run`` as a work item of
    its own (e.g. a shared model thread that serves other jobs between two items, and checks
    whether this job must stop): a long file's VAD never holds the model for its whole length."""
    batches, samples = network.batches(waveform)
    outputs = [run(lambda batch=batch: network.infer(batch)) for batch in batches]  # type: ignore[misc]
    return network.aggregate(outputs, samples)


def binarize(scores: SpeechScores, opts: VadOptions) -> list[tuple[float, float]]:
    """Hysteresis thresholding of ``scores`` into speech regions (seconds): speech starts above
    ``onset`` and ends below ``offset``, at frame centres. A region growing past ``chunk_size``
    is cut at its lowest-scoring frame in its second half (whisperX's min-cut), and the rest
    goes on as a region of its own. Sorted, without duplicates or empty regions, as whisperX's
    ``Binarize`` gives them."""
    data = np.asarray(scores.data, dtype=np.float32).reshape(-1)
    if not len(data):
        return []
    times = scores.frames.middle(np.arange(len(data))).tolist()
    values = data.tolist()
    found: set[tuple[float, float]] = set()
    start, active = times[0], values[0] > opts.onset
    run_scores, run_times = [values[0]], [start]
    t = start
    for t, y in zip(times[1:], values[1:]):
        if not active:
            if y > opts.onset:
                start, active = t, True
            continue
        if t - start > opts.chunk_size:
            half = len(run_scores) // 2
            cut = half + int(np.argmin(run_scores[half:]))
            found.add((start, run_times[cut]))
            start = run_times[cut]
            run_scores, run_times = run_scores[cut + 1 :], run_times[cut + 1 :]
        elif y < opts.offset:
            found.add((start, t))
            start, active = t, False
            run_scores, run_times = [], []
        run_scores.append(y)
        run_times.append(t)
    if active:
        found.add((start, t))
    # Regions of a microsecond or less are empty (pyannote's segment precision).
    return sorted((float(a), float(b)) for a, b in found if b - a > 1e-6)


def refine_regions(
    regions: list[tuple[float, float]], opts: VadOptions, duration_s: float
) -> list[tuple[float, float]]:
    """Apply ``min_duration_off`` (fill short gaps), ``min_duration_on`` (drop short
    regions) and padding, clamped to [0, duration_s]; overlapping regions are merged."""
    merged: list[list[float]] = []
    for start, end in sorted(regions):
        if merged and start - merged[-1][1] < opts.min_duration_off:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    kept = [(s, e) for s, e in merged if e - s >= opts.min_duration_on]
    padded: list[list[float]] = []
    for start, end in kept:
        start = max(0.0, start - opts.pad_onset)
        end = min(duration_s, end + opts.pad_offset)
        if end <= start:
            continue
        if padded and start <= padded[-1][1]:
            padded[-1][1] = max(padded[-1][1], end)
        else:
            padded.append([start, end])
    return [(s, e) for s, e in padded]


def _split_long(start: float, end: float, limit: float) -> list[tuple[float, float]]:
    """Cut one region longer than ``limit`` seconds into equal parts no longer than it."""
    parts = max(1, int(np.ceil((end - start) / limit)))
    step = (end - start) / parts
    return [(start + i * step, start + (i + 1) * step) for i in range(parts)]


def group_windows(regions: list[tuple[float, float]], chunk_size: float) -> list[SpeechWindow]:
    """Greedily pack consecutive regions into windows spanning at most ``chunk_size`` s."""
    pieces: list[tuple[float, float]] = []
    for start, end in regions:
        pieces.extend(_split_long(start, end, chunk_size) if end - start > chunk_size else [(start, end)])
    windows: list[SpeechWindow] = []
    current: list[tuple[float, float]] = []
    for piece in pieces:
        if current and piece[1] - current[0][0] > chunk_size:
            windows.append(SpeechWindow(current[0][0], current[-1][1], tuple(current)))
            current = []
        current.append(piece)
    if current:
        windows.append(SpeechWindow(current[0][0], current[-1][1], tuple(current)))
    return windows


def mean_speech_prob(scores: SpeechScores, regions: tuple[tuple[float, float], ...]) -> float:
    """Mean frame speech probability of ``scores`` inside ``regions`` (seconds)."""
    data = np.asarray(scores.data).reshape(-1)
    frames = scores.frames
    centres = frames.start + frames.duration / 2 + frames.step * np.arange(len(data))
    inside = np.zeros(len(data), dtype=bool)
    for start, end in regions:
        inside |= (centres >= start) & (centres < end)
    return float(data[inside].mean()) if inside.any() else 0.0


# Speech the VAD is sure of: mean probability at least this; a window is judged on for the
# language only when one such region lasts at least SURE_SPEECH_MIN_S seconds.
SURE_SPEECH_PROB = 0.5
SURE_SPEECH_MIN_S = 1.0


def detection_windows(scores: SpeechScores, windows: list[SpeechWindow], min_prob: float = SURE_SPEECH_PROB,
                      min_duration_s: float = SURE_SPEECH_MIN_S) -> list[SpeechWindow]:
    """The ASR windows, trimmed to the speech the VAD is sure of, for language detection.

    A window counts when one of its regions has a mean speech probability of ``min_prob``
    or more over ``min_duration_s`` seconds or more; it keeps the span from its first to its
    last region reaching ``min_prob`` (any length), with the regions in between. Leading or
    trailing music and noise that a low onset let into a window is cut off, but the
    utterance itself is judged whole: a 2 s phrase alone can sound like another language, a
    whole sentence rarely does. ``speech_prob`` is the mean over the kept regions. When no
    window counts, ``windows`` is returned as it is.
    """
    picked = []
    for window in windows:
        probs = [mean_speech_prob(scores, (region,)) for region in window.regions]
        if not any(p >= min_prob and end - start >= min_duration_s for p, (start, end) in zip(probs, window.regions)):
            continue
        sure = [i for i, p in enumerate(probs) if p >= min_prob]
        regions = window.regions[sure[0]: sure[-1] + 1]
        picked.append(SpeechWindow(regions[0][0], regions[-1][1], regions, mean_speech_prob(scores, regions)))
    return picked or list(windows)


def speech_windows(scores: SpeechScores, opts: VadOptions, duration_s: float) -> list[SpeechWindow]:
    """Speech windows for the ASR from frame scores, under ``opts``, each with its mean
    speech probability (used with Whisper's no-speech probability to drop non-speech)."""
    regions = refine_regions(binarize(scores, opts), opts, duration_s)
    return [
        SpeechWindow(w.start, w.end, w.regions, mean_speech_prob(scores, w.regions))
        for w in group_windows(regions, opts.chunk_size)
    ]


def fill_batch(
    scores: SpeechScores,
    windows: list[SpeechWindow],
    opts: VadOptions,
    duration_s: float,
    batch_size: int,
    min_chunk_s: float,
) -> list[SpeechWindow]:
    """Shorter windows, cut at pauses, when the audio gives fewer windows than one batch holds.

    On a GPU a batch of windows decodes in about the time of its longest window (tokens are
    generated one step at a time, windows side by side), so a 30 s clip decoded as one window
    takes ~3x longer than the same clip as three ~10 s windows in one batch. Windows are
    re-cut with the request's own VAD rules and a smaller ``chunk_size`` (long regions split
    at their lowest speech probability, i.e. at pauses, as whisperX does for 30 s); that chunk
    size never goes below ``min_chunk_s`` seconds (Whisper needs context) and the result must
    still fit one batch of ``batch_size``. Returns ``windows`` unchanged when there is nothing
    to gain or ``min_chunk_s`` is 0.
    """
    if min_chunk_s <= 0 or not windows or len(windows) >= batch_size:
        return windows
    speech_s = sum(window.duration for window in windows)
    target = max(min_chunk_s, speech_s / batch_size)
    # Greedy packing leaves windows a little short of the target, so the first cut can
    # overflow the batch: widen the target until it fits (a few cheap passes over the scores).
    while target < opts.chunk_size:
        finer = speech_windows(scores, replace(opts, chunk_size=target), duration_s)
        if len(finer) <= len(windows):
            return windows
        if len(finer) <= batch_size:
            return finer
        target *= 1.25
    return windows
