"""CTC forced alignment of transcript segments with a wav2vec2 model, fast.

Gives the word timings of whisperX 3.8.6's ``whisperx.align`` (``return_char_alignments=False``)
for the same emissions, without its per-segment costs on a GPU:

- emissions: segments go through the model in batches where zero padding is exact (Hugging
  Face models whose feature encoder normalises each frame, ``feat_extract_norm="layer"``, as
  xlsr-53-large does), else one segment per forward; log-softmax runs on the device and each
  batch crosses to the host in one copy, overlapped with the CPU work on the previous batch;
- trellis: the torchaudio-tutorial recursion that whisperX uses, vectorised over segments x
  tokens in numpy float32; each step's stay/change decision is kept as a bool, so the
  backtrack is a walk over booleans instead of a ``.item()`` per frame;
- words and sentences: plain Python instead of a pandas DataFrame per segment.

Units: times in seconds, audio in 16 kHz samples, ``frame`` means an emission frame (20 ms for
wav2vec2), ``token`` a kept character of the text (one trellis column).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np
import torch

from stages.ctc_batches import SAMPLE_RATE as SAMPLE_RATE
from stages.ctc_batches import CtcAlignOptions as CtcAlignOptions
from stages.ctc_batches import padded_length, padded_widths, plan_batches, uses_fixed_rows
from stages.ctc_batches import rows_for_length as rows_for_length

if TYPE_CHECKING:
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    from stages.aligners import AlignModel

logger = logging.getLogger("ctc_alignment")  # the bare name: log lines read as before the move

# wav2vec2's convolutions need 400 samples for one frame; whisperX zero-pads shorter crops.
MIN_INPUT_SAMPLES = 400
# Frames of token emissions gathered at once by the trellis (bounds a temporary array).
_GATHER_FRAMES = 128


# The options the worker runs with (a benchmark may swap in others before the worker starts).
DEFAULT_OPTIONS = CtcAlignOptions()


@dataclass(frozen=True)
class SegmentText:
    """One transcript segment to align: its text and where it lies in the audio (seconds)."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Vocabulary:
    """What the aligner reads from whisperX's model metadata."""

    dictionary: dict[str, int]  # lower-cased label -> emission column
    blank_id: int  # the CTC blank's column
    language: str
    spaces: bool  # the language separates words with spaces (else one word per character)
    model_type: str  # "huggingface" | "torchaudio"

    @classmethod
    def from_metadata(cls, metadata: dict) -> Vocabulary:
        from stages.whisperx_tables import constant

        dictionary = metadata["dictionary"]
        blank_id = 0
        for label, code in dictionary.items():  # the last "<pad>"/"[pad]" wins, as in whisperX
            if label in ("[pad]", "<pad>"):
                blank_id = code
        language = metadata["language"]
        return cls(dictionary, blank_id, language, language not in constant("alignment", "LANGUAGES_WITHOUT_SPACES"), metadata["type"])


@dataclass(frozen=True)
class TextPlan:
    """The characters of a segment's text that become trellis tokens."""

    chars: tuple[str, ...]  # lower-cased; a space is "|" in languages with spaces
    char_index: tuple[int, ...]  # each one's index in the text

    def token_ids(self, vocabulary: Vocabulary, wildcard_id: int) -> np.ndarray:
        """Emission column of each token; characters the model lacks read the wildcard column."""
        return np.array([vocabulary.dictionary.get(c, wildcard_id) for c in self.chars], dtype=np.int64)


@dataclass(frozen=True)
class CharSpans:
    """Where the path put each token: frames [start, end) and the mean frame probability."""

    start: list[int]
    end: list[int]
    score: list[float]


@dataclass(frozen=True)
class EmissionBatch:
    """Log-probabilities of a batch of segments, on the host."""

    logprobs: np.ndarray  # (rows, frames, columns + 1) float32; the last column is the wildcard
    frames: np.ndarray  # (rows,) valid frames of each row; later frames are padding


@dataclass(frozen=True)
class Trellis:
    """What the backtrack needs from a forward pass over a batch of segments."""

    decisions: np.ndarray  # (frames, rows, tokens) bool: entering token j at frame t beat staying
    last_column: np.ndarray  # (rows, frames + 1) float32: trellis column of each row's last token


@dataclass(frozen=True)
class _Job:
    """A segment that goes through the model."""

    index: int  # position in the caller's list
    segment: SegmentText
    plan: TextPlan
    samples: np.ndarray  # the crop, zero-padded to at least MIN_INPUT_SAMPLES
    valid_samples: int  # crop length before that padding


def plan_text(text: str, vocabulary: Vocabulary) -> TextPlan:
    """Tokens of ``text`` as whisperX chooses them: every character except leading/trailing
    whitespace and, when the model has no "|", interior spaces; characters the model does not
    know (digits, Latin in Russian) stay, aligned against the wildcard.

    A character whose lower case is two characters ("İ") is one wildcard token here; whisperX
    makes it two tokens and then misreads the times of every later character of the segment.
    """
    chars: list[str] = []
    index: list[int] = []
    first = len(text) - len(text.lstrip())
    last = len(text.rstrip()) - 1
    for cdx in range(first, last + 1):
        char = text[cdx].lower()
        if vocabulary.spaces:
            char = char.replace(" ", "|")
        if char in vocabulary.dictionary or char not in (" ", "|"):
            chars.append(char)
            index.append(cdx)
    return TextPlan(tuple(chars), tuple(index))


def load_sentence_splitter(language: str) -> PunktSentenceTokenizer:
    """nltk punkt for ``language`` (English when punkt has none), as whisperX loads it.

    The data must already be on nltk's path (``alignment.ensure_punkt``): this never downloads.
    """
    import nltk
    from whisperx.utils import PUNKT_LANGUAGES

    return nltk.data.load(f"tokenizers/punkt_tab/{PUNKT_LANGUAGES.get(language, 'english')}.pickle")


def crop_audio(waveform: np.ndarray, start: float, end: float) -> tuple[np.ndarray, int]:
    """Samples [int(start * 16000), int(end * 16000)) of ``waveform``, zero-padded to 400
    samples, and the crop's length before padding."""
    crop = waveform[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
    valid = len(crop)
    if valid < MIN_INPUT_SAMPLES:
        crop = np.concatenate([crop, np.zeros(MIN_INPUT_SAMPLES - valid, dtype=crop.dtype)])
    return np.ascontiguousarray(crop, dtype=np.float32), valid


def padding_is_exact(model: AlignModel, vocabulary: Vocabulary) -> bool:
    """Whether zero-padded rows with an attention mask give each row's unpadded emissions.

    True for Hugging Face wav2vec2 models that normalise each frame over channels (layer norm):
    their valid frames never see the padding. Group norm (the HF default, torchaudio bundles)
    normalises each channel over time, padding included, so those run one segment per forward.
    """
    config = getattr(model, "config", None)
    return vocabulary.model_type == "huggingface" and getattr(config, "feat_extract_norm", None) == "layer"


def output_frames(model: AlignModel, samples: np.ndarray) -> np.ndarray:
    """Emission frames a Hugging Face wav2vec2 model (transformers' or ``wav2vec2_network``'s)
    makes from inputs of ``samples`` samples."""
    lengths = torch.as_tensor(samples, dtype=torch.long)
    # wav2vec2_network's own networks name it plainly; transformers' keep it private
    output_lengths = getattr(model, "output_lengths", None) or model._get_feat_extract_output_lengths
    # transformers annotates the legacy class torch.LongTensor, which an int64 Tensor is not to a type checker
    return output_lengths(lengths).cpu().numpy().astype(np.int64)  # type: ignore[arg-type,operator]


def _forward_padded(model: AlignModel, jobs: Sequence[_Job], device: str, options: CtcAlignOptions) -> tuple[list[torch.Tensor], np.ndarray]:
    """One forward of zero-padded rows with an attention mask; logits (rows, frames, columns)."""
    lengths = np.array([len(job.samples) for job in jobs], dtype=np.int64)
    width = padded_length(int(lengths.max()), options)
    rows = max(len(jobs), rows_for_length(width, options)) if uses_fixed_rows(device, options) else len(jobs)
    audio = np.zeros((rows, width), dtype=np.float32)
    mask = np.ones(audio.shape, dtype=np.int64)  # filler rows: silence, unmasked (no empty attention)
    for row, job in enumerate(jobs):
        audio[row, : lengths[row]] = job.samples
        mask[row, lengths[row] :] = 0
    logits = model(torch.from_numpy(audio).to(device), attention_mask=torch.from_numpy(mask).to(device)).logits
    return [logits[: len(jobs)]], output_frames(model, lengths)


def _forward_each(model: AlignModel, jobs: Sequence[_Job], model_type: str, device: str) -> tuple[list[torch.Tensor], np.ndarray]:
    """One forward per segment, exactly as whisperX runs it; logits (1, frames, columns) each."""
    outputs: list[torch.Tensor] = []
    for job in jobs:
        wave = torch.from_numpy(job.samples)[None].to(device)
        if model_type == "torchaudio":
            lengths = torch.as_tensor([job.valid_samples]).to(device) if job.valid_samples < MIN_INPUT_SAMPLES else None
            logits, _ = model(wave, lengths=lengths)
        elif model_type == "huggingface":
            logits = model(wave).logits
        else:
            raise NotImplementedError(f"alignment model of type {model_type!r} is not supported")
        outputs.append(logits)
    return outputs, np.array([out.shape[1] for out in outputs], dtype=np.int64)


def _log_probs_with_wildcard(logits: list[torch.Tensor], blank_id: int) -> torch.Tensor:
    """Log-softmax of the model outputs (one (rows, frames, columns) tensor, or one (1, frames,
    columns) per segment), as (rows, frames, columns + 1) with the wildcard column appended."""
    if len(logits) == 1:
        return _append_wildcard(torch.log_softmax(logits[0].float(), dim=-1), blank_id)
    # log_softmax per output, before padding, so each row gets the same numbers as in whisperX
    rows = [torch.log_softmax(out.float(), dim=-1)[0] for out in logits]
    return _append_wildcard(torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), blank_id)


def _append_wildcard(logprobs: torch.Tensor, blank_id: int) -> torch.Tensor:
    """``logprobs`` (..., columns) with one more column: each frame's best non-blank
    log-probability, which the characters the model lacks (digits, Latin in Russian) align to."""
    non_blank = torch.ones(logprobs.shape[-1], dtype=torch.bool, device=logprobs.device)
    non_blank[blank_id] = False
    wildcard = logprobs[..., non_blank].amax(dim=-1, keepdim=True)
    return torch.cat([logprobs, wildcard], dim=-1)


@dataclass
class _InFlight:
    """A batch whose emissions are being computed and copied to the host."""

    jobs: list[_Job]
    host: torch.Tensor
    frames: np.ndarray
    copied: torch.cuda.Event | None

    def wait(self) -> EmissionBatch:
        if self.copied is not None:
            self.copied.synchronize()
        return EmissionBatch(self.host.numpy(), self.frames)


def _launch(model: AlignModel, jobs: list[_Job], vocabulary: Vocabulary, device: str, padded: bool, options: CtcAlignOptions) -> _InFlight:
    """Queue a batch's forward(s), log-softmax and device->host copy; returns without waiting
    on a GPU, so the host can work on the previous batch meanwhile."""
    with torch.inference_mode():
        if padded:
            logits, frames = _forward_padded(model, jobs, device, options)
        else:
            logits, frames = _forward_each(model, jobs, vocabulary.model_type, device)
        logprobs = _log_probs_with_wildcard(logits, vocabulary.blank_id)
        if logprobs.device.type != "cuda":
            return _InFlight(jobs, logprobs, frames, None)
        host = torch.empty(logprobs.shape, dtype=logprobs.dtype, pin_memory=True)
        host.copy_(logprobs, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return _InFlight(jobs, host, frames, copied)


def uses_padded_batches(model: AlignModel, vocabulary: Vocabulary, device: str, options: CtcAlignOptions) -> bool:
    """Whether segments go through ``model`` in padded batches on ``device``."""
    wanted = options.padded_batches == "always" or (options.padded_batches == "cuda" and str(device).startswith("cuda"))
    return wanted and padding_is_exact(model, vocabulary)


def warm_up(model: AlignModel, metadata: dict, device: str, longest_s: float = 32.0, options: CtcAlignOptions | None = None) -> int:
    """Align silent segments that fill one padded forward of every shape segments up to
    ``longest_s`` seconds can produce with ``fixed_rows`` (each row halfway between its padded
    width and the next smaller one, so the attention mask is used as in a job), through the
    whole path: forward, log-softmax, host copy, trellis. A job then never meets a shape for the first time.
    Returns the number of shapes run (0 where forwards are not padded batches: their
    shapes are each segment's own length)."""
    options = options or DEFAULT_OPTIONS
    vocabulary = Vocabulary.from_metadata(metadata)
    if not (uses_fixed_rows(device, options) and uses_padded_batches(model, vocabulary, device, options)):
        return 0
    letters = [c for c in vocabulary.dictionary if len(c) == 1 and c.isalpha()][:8] or ["a"]
    widths = padded_widths(int(longest_s * SAMPLE_RATE), options)
    segments = []
    for width, previous in zip(widths, [0, *widths]):
        # halfway between this width and the one below it: a row that pads to this width
        seconds = max(0.1, (width + previous) / 2 / SAMPLE_RATE)
        text = " ".join(letters[i % len(letters)] * 3 for i in range(max(1, int(seconds))))
        segments.extend([SegmentText(0.0, seconds, text)] * rows_for_length(width, options))
    noise = np.random.default_rng(0).standard_normal(widths[-1]).astype(np.float32) * 0.01
    align_segments(segments, model, metadata, noise, device, options)
    return len(widths)


# Runs a batch's forward (a callable) and returns what it returns: in the calling thread, or
# in a thread that the forwards of every job share (the worker's torch thread).
ForwardRunner: TypeAlias = "Callable[[Callable[[], _InFlight]], _InFlight]"


def _emission_batches(model: AlignModel, jobs: list[_Job], vocabulary: Vocabulary, device: str, options: CtcAlignOptions,
                      run_forward: ForwardRunner | None = None) -> Iterator[tuple[list[_Job], EmissionBatch]]:
    """Emissions of ``jobs``, batch by batch; the next batch is queued before one is yielded.
    ``run_forward`` queues each batch's forward (default: in this thread)."""
    padded = uses_padded_batches(model, vocabulary, device, options)
    batches = plan_batches([len(job.samples) for job in jobs], padded, options)
    logger.debug("%d segments in %d forwards (%s)", len(jobs), len(batches), "padded batches" if padded else "one segment per forward")
    pending: _InFlight | None = None
    for batch in batches:
        batch_jobs = [jobs[i] for i in batch]
        forward = functools.partial(_launch, model, batch_jobs, vocabulary, device, padded, options)
        launched = run_forward(forward) if run_forward is not None else forward()
        if pending is not None:
            yield pending.jobs, pending.wait()
        pending = launched
    if pending is not None:
        yield pending.jobs, pending.wait()


def forward_trellis(logprobs: np.ndarray, frames: np.ndarray, tokens: np.ndarray, n_tokens: np.ndarray, blank_id: int) -> Trellis:
    """The torchaudio-tutorial trellis of whisperX for a batch of segments at once.

    ``logprobs`` (rows, frames, columns) float32, ``frames`` (rows,) valid frames per row,
    ``tokens`` (rows, tokens) emission column of each token (padded with any valid column),
    ``n_tokens`` (rows,) valid tokens per row. Trellis cell [t, j] (t frames consumed, j tokens
    entered) = max(stay: [t-1, j] + blank[t-1], change: [t-1, j-1] + emit[t-1, token j-1]);
    column 0 is the blank cumsum, except that the last J rows of column 0 are +inf (the
    tutorial's trick, kept for identical results). Padding never reaches a row's own cells:
    cell [t, j] depends only on cells of columns <= j and rows < t.

    The same float32 operations as whisperX's torch code, in the same order, so scores and
    therefore ties are bit-identical for identical emissions.
    """
    rows, n_frames, _ = logprobs.shape
    width = tokens.shape[1]
    row_ids = np.arange(rows)
    blank = np.ascontiguousarray(logprobs[:, :, blank_id].T)  # (frames, rows)

    column0 = np.empty((n_frames + 1, rows), dtype=np.float32)
    column0[0] = 0.0
    # torch.cumsum on the CPU accumulates float32 in double: do the same
    column0[1:] = np.cumsum(blank, axis=0, dtype=np.float64).astype(np.float32)
    # python's trellis[-J:, 0] on T+1 rows starts at row max(0, T + 1 - J); later rows are padding
    first_inf = np.maximum(frames + 1 - n_tokens, 0)
    column0[np.arange(n_frames + 1)[:, None] >= first_inf[None, :]] = np.inf

    decisions = np.empty((n_frames, rows, width), dtype=bool)
    last_column = np.empty((rows, n_frames + 1), dtype=np.float32)
    previous = np.full((rows, width + 1), -np.inf, dtype=np.float32)
    previous[:, 0] = column0[0]
    current = np.empty_like(previous)
    stay = np.empty((rows, width), dtype=np.float32)
    change = np.empty((rows, width), dtype=np.float32)
    last_column[:, 0] = previous[row_ids, n_tokens]
    emitted = np.empty((0, rows, width), dtype=np.float32)
    for t in range(n_frames):
        offset = t % _GATHER_FRAMES
        if offset == 0:  # token log-probs of the next frames, (frames, rows, tokens)
            chunk = logprobs[:, t : t + _GATHER_FRAMES, :]
            emitted = np.ascontiguousarray(np.take_along_axis(chunk, tokens[:, None, :], axis=2).transpose(1, 0, 2))
        np.add(previous[:, 1:], blank[t][:, None], out=stay)
        np.add(previous[:, :-1], emitted[offset], out=change)
        np.greater(change, stay, out=decisions[t])
        np.maximum(stay, change, out=current[:, 1:])
        current[:, 0] = column0[t + 1]
        last_column[:, t + 1] = current[row_ids, n_tokens]
        previous, current = current, previous
    return Trellis(decisions, last_column)


def backtrack(decisions: np.ndarray, last_column: np.ndarray, n_tokens: int) -> tuple[list[int], int] | None:
    """Walk back from the best end of the last token, as whisperX's ``backtrack``.

    ``decisions`` (frames, tokens) of one segment, ``last_column`` its trellis column of the
    last token (valid frames + 1 values). Returns the frame at which each token was entered
    and the frame after the path's end, or None when the walk runs out of frames first.
    """
    path_end = int(np.argmax(last_column))  # the first maximum, as torch.argmax
    entered = [0] * n_tokens
    j = n_tokens
    for t in range(path_end, 0, -1):
        if decisions[t - 1, j - 1]:
            j -= 1
            entered[j] = t - 1
            if j == 0:
                return entered, path_end
    return None


def char_spans(entered: list[int], path_end: int, logprobs: np.ndarray, token_ids: np.ndarray, blank_id: int) -> CharSpans:
    """Frames and scores of each token from the backtracked path (whisperX's ``merge_repeats``).

    A token covers the frames from its entry up to the next token's entry. Each frame of the
    path scores exp(log-prob): of the token at its entry frame, of the blank at the others.
    """
    ends = entered[1:] + [path_end]
    # torch's exp and python's sequential sum, in path order, as whisperX: identical scores
    token_prob = torch.from_numpy(np.ascontiguousarray(logprobs[entered, token_ids])).exp().tolist()
    blank_prob = torch.from_numpy(np.ascontiguousarray(logprobs[:path_end, blank_id])).exp().tolist()
    scores = [sum(blank_prob[s + 1 : e], p) / (e - s) for s, e, p in zip(entered, ends, token_prob)]
    return CharSpans(entered, ends, scores)


def _word_indices(text: str, spaces: bool) -> list[int]:
    """Word number of each character: a new word starts at each space (the space belongs to
    the word after it), or at every character in languages without spaces."""
    indices, word = [], 0
    for cdx in range(len(text)):
        indices.append(word)
        if not spaces or cdx == len(text) - 1 or text[cdx + 1] == " ":
            word += 1
    return indices


def _nearest_fill(values: list[float | None]) -> list[float | None]:
    """Each None takes the value of the nearest non-None position (the earlier one on a tie):
    what whisperX's ``interpolate_nans(method="nearest")`` (scipy nearest, then ffill/bfill)
    gives. All None stays all None."""
    known = [i for i, v in enumerate(values) if v is not None]
    out = list(values)
    if not known:
        return out
    for i, value in enumerate(values):
        if value is not None:
            continue
        pos = bisect.bisect_left(known, i)
        left = known[pos - 1] if pos > 0 else None
        right = known[pos] if pos < len(known) else None
        nearest = left if right is None or (left is not None and i - left <= right - i) else right
        assert nearest is not None  # ``known`` is not empty: one side has a position
        out[i] = values[nearest]
    return out


@dataclass(frozen=True)
class _CharTimes:
    """Per character of a segment's text (None where the character has no token)."""

    text: str
    start: list[float | None]  # seconds, rounded to ms
    end: list[float | None]
    score: list[float | None]
    word: list[int]  # word number


def _char_times(segment: SegmentText, plan: TextPlan | None, spans: CharSpans | None, n_frames: int, spaces: bool) -> _CharTimes:
    """Seconds of each character: frame * (segment duration / segment frames) + segment start."""
    text = segment.text
    start: list[float | None] = [None] * len(text)
    end: list[float | None] = [None] * len(text)
    score: list[float | None] = [None] * len(text)
    if plan is not None and spans is not None:
        # whisperX's ratio is duration * waveform.size(0) / frames with size(0) == 1
        ratio = (segment.end - segment.start) / n_frames
        for k, cdx in enumerate(plan.char_index):
            start[cdx] = round(spans.start[k] * ratio + segment.start, 3)
            end[cdx] = round(spans.end[k] * ratio + segment.start, 3)
            score[cdx] = round(spans.score[k], 3)
    return _CharTimes(text, start, end, score, _word_indices(text, spaces))


def _words(chars: _CharTimes, first: int, last: int) -> list[dict]:
    """Words of characters ``first..last`` (inclusive): text stripped, empty ones skipped;
    start/end/score from the characters other than spaces that have times (keys left out
    when none has)."""
    words = []
    for _, group in itertools.groupby(range(first, last + 1), key=chars.word.__getitem__):
        members = list(group)
        text = "".join(chars.text[c] for c in members).strip()
        if not text:
            continue
        word: dict = {"word": text}
        timed = [c for c in members if chars.text[c] != " " and chars.start[c] is not None]
        if timed:
            # a timed character has a start, an end and a score (``_char_times`` sets them together)
            word["start"] = min(cast(float, chars.start[c]) for c in timed)
            word["end"] = max(cast(float, chars.end[c]) for c in timed)
            scores = np.array([chars.score[c] for c in timed], dtype=np.float64)
            # pandas' mean (numpy sum / count) and numpy's rounding of np.float64, as whisperX
            word["score"] = float(np.round(scores.sum() / len(scores), 3))
        words.append(word)
    # words without timed characters take their nearest timed neighbour's times
    starts = [w.get("start") for w in words]
    if None in starts and any(s is not None for s in starts):
        filled_starts = _nearest_fill(starts)
        filled_ends = _nearest_fill([w.get("end") for w in words])
        for word, s, e in zip(words, filled_starts, filled_ends):
            word.setdefault("start", s)
            word.setdefault("end", e)
    return words


def _sentences(segment: SegmentText, chars: _CharTimes, spans: Sequence[tuple[int, int]], spaces: bool) -> list[dict]:
    """Segments of ``segment``, one per punkt sentence, merged where their times coincide."""
    text = chars.text
    sentences: list[dict[str, Any]] = []
    for first, stop in spans:
        last = min(stop, len(text) - 1)  # whisperX takes the character at the span's end too
        char_starts = [t for t in chars.start[first : last + 1] if t is not None]
        char_ends = [t for t, char in zip(chars.end[first : last + 1], text[first : last + 1]) if char != " " and t is not None]
        sentences.append({"start": min(char_starts) if char_starts else None, "end": max(char_ends) if char_ends else None,
                          "text": text[first:stop], "words": _words(chars, first, last)})
    if not sentences:  # punkt found no sentence: keep the words anyway
        sentences.append({"start": None, "end": None, "text": text, "words": _words(chars, 0, len(text) - 1)})
    starts = _nearest_fill([s["start"] for s in sentences])
    ends = _nearest_fill([s["end"] for s in sentences])
    merged: dict[tuple[float, float], dict] = {}
    for sentence, start, end in zip(sentences, starts, ends):
        # whisperX drops sentences still without times (NaN group keys) and so loses their
        # words; keep them with the segment's own times instead
        key = (segment.start if start is None else start, segment.end if end is None else end)
        if key in merged:  # same times: one segment, as whisperX's groupby(["start", "end"])
            merged[key]["text"] = (" " if spaces else "").join((merged[key]["text"], sentence["text"]))
            merged[key]["words"] = merged[key]["words"] + sentence["words"]
        else:
            merged[key] = {"start": key[0], "end": key[1], "text": sentence["text"], "words": sentence["words"]}
    return [merged[key] for key in sorted(merged)]


def _untimed(segment: SegmentText, spaces: bool) -> dict:
    """The segment with its own times and its words without any.

    whisperX returns such a segment with no words at all; the caller interpolates word
    times instead, which keeps the words of a segment that could not be aligned."""
    chars = _char_times(segment, None, None, 0, spaces)
    return {"start": segment.start, "end": segment.end, "text": segment.text, "words": _words(chars, 0, len(segment.text) - 1)}


def _finish(job: _Job, spans: CharSpans | None, n_frames: int, vocabulary: Vocabulary, splitter: PunktSentenceTokenizer) -> list[dict]:
    """Aligned segments (one per sentence group) of one segment, or the untimed segment."""
    if spans is None:
        logger.warning("could not align segment %r: more characters than the path can place; words keep no times", job.segment.text[:80])
        return [_untimed(job.segment, vocabulary.spaces)]
    chars = _char_times(job.segment, job.plan, spans, n_frames, vocabulary.spaces)
    return _sentences(job.segment, chars, list(splitter.span_tokenize(job.segment.text)), vocabulary.spaces)


def _trellis_groups(frames: np.ndarray, n_tokens: np.ndarray, max_cells: int) -> list[slice]:
    """Consecutive rows of a batch whose padded trellis stays under ``max_cells`` (one row always fits)."""
    groups, first = [], 0
    for row in range(1, len(frames) + 1):
        if row == len(frames) or (row + 1 - first) * frames[first : row + 1].max() * n_tokens[first : row + 1].max() > max_cells:
            groups.append(slice(first, row))
            first = row
    return groups


def _align_batch(jobs: list[_Job], emissions: EmissionBatch, vocabulary: Vocabulary, splitter: PunktSentenceTokenizer, options: CtcAlignOptions) -> Iterator[tuple[int, list[dict]]]:
    """Trellis, backtrack and words of the segments of one emission batch."""
    wildcard_id = emissions.logprobs.shape[2] - 1
    token_ids = [job.plan.token_ids(vocabulary, wildcard_id) for job in jobs]
    n_tokens = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    for group in _trellis_groups(emissions.frames, n_tokens, options.max_trellis_cells):
        rows = range(group.start, group.stop)
        frames = emissions.frames[group]
        tokens = np.zeros((len(rows), int(n_tokens[group].max())), dtype=np.int64)
        for k, row in enumerate(rows):
            tokens[k, : n_tokens[row]] = token_ids[row]
        logprobs = emissions.logprobs[group, : int(frames.max())]
        trellis = forward_trellis(logprobs, frames, tokens, n_tokens[group], vocabulary.blank_id)
        for k, row in enumerate(rows):
            path = backtrack(trellis.decisions[:, k, :], trellis.last_column[k, : frames[k] + 1], int(n_tokens[row]))
            spans = None if path is None else char_spans(path[0], path[1], logprobs[k], token_ids[row], vocabulary.blank_id)
            yield jobs[row].index, _finish(jobs[row], spans, int(frames[k]), vocabulary, splitter)


def align_segments(segments: Sequence[SegmentText], model: AlignModel, metadata: dict, waveform: np.ndarray, device: str,
                   options: CtcAlignOptions | None = None, run_forward: ForwardRunner | None = None) -> list[dict]:
    """Word-aligned segments ``{"start", "end", "text", "words": [{"word", "start", "end", "score"}]}``.

    ``model``/``metadata`` as ``whisperx.load_align_model`` returns them (the model may be
    wrapped, e.g. in ``alignment.HalfPrecision``), ``waveform`` mono 16 kHz float32. Each input
    segment becomes one output segment per group of its sentences with distinct times, in
    input order. A segment that cannot be aligned (no text, start past the audio, more
    characters than frames) comes back once with its own times and its words untimed.
    ``run_forward``: where each forward is queued (see ``_emission_batches``).
    """
    options = options or DEFAULT_OPTIONS
    vocabulary = Vocabulary.from_metadata(metadata)
    splitter = load_sentence_splitter(vocabulary.language)
    duration = len(waveform) / SAMPLE_RATE
    results: list[list[dict]] = [[] for _ in segments]
    jobs: list[_Job] = []
    for index, segment in enumerate(segments):
        plan = plan_text(segment.text, vocabulary)
        if not plan.chars or segment.start >= duration:
            logger.warning("not aligning segment %r: %s", segment.text[:80], "no characters" if not plan.chars else "it starts after the audio ends")
            results[index] = [_untimed(segment, vocabulary.spaces)]
            continue
        samples, valid = crop_audio(waveform, segment.start, segment.end)
        jobs.append(_Job(index, segment, plan, samples, valid))
    started = time.perf_counter()
    waited = 0.0
    batches = _emission_batches(model, jobs, vocabulary, device, options, run_forward)
    while True:
        ready = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - ready
        if batch is None:
            break
        for index, aligned in _align_batch(*batch, vocabulary, splitter, options):
            results[index] = aligned
    logger.debug("aligned %d segments in %.3f s (%.3f s waiting for emissions)", len(jobs), time.perf_counter() - started, waited)
    return [segment for aligned in results for segment in aligned]


def align_emission(segment: SegmentText, logprobs: np.ndarray, metadata: dict) -> list[dict]:
    """Align one segment given its emissions (frames, columns) log-probabilities: the CPU half
    of ``align_segments``, for callers (and tests) that already have emissions."""
    vocabulary = Vocabulary.from_metadata(metadata)
    plan = plan_text(segment.text, vocabulary)
    if not plan.chars:
        return [_untimed(segment, vocabulary.spaces)]
    with torch.inference_mode():
        padded = _append_wildcard(torch.from_numpy(np.asarray(logprobs, dtype=np.float32))[None], vocabulary.blank_id)
    job = _Job(0, segment, plan, np.zeros(0, dtype=np.float32), 0)
    emissions = EmissionBatch(padded.numpy(), np.array([logprobs.shape[0]], dtype=np.int64))
    splitter = load_sentence_splitter(vocabulary.language)
    return next(_align_batch([job], emissions, vocabulary, splitter, DEFAULT_OPTIONS))[1]
