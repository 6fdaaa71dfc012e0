"""Batched Whisper decoding with per-call options.

The ``WhisperModel`` (CTranslate2 weights) is shared by every request; everything a request
may change (beam size, temperatures, thresholds, prompt, language, task) travels in a frozen
``DecodeOptions`` passed to each call. Nothing here stores state between calls, so two
requests can never see each other's options (whisperX's ``FasterWhisperPipeline`` rewrites
its own tokenizer and options per call, which is why it is not used).

Unlike whisperX's batched path, the quality thresholds act: each window's compression ratio,
average log-probability and no-speech probability are computed; windows that fail are
decoded again at the next temperature, and windows judged silent are dropped. The text of
the others is screened for known hallucination phrases and loops (``hallucinations.py``), a
signal that, unlike the scores, does not move with the CPU's int8 kernels.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias

import numpy as np

from stages import hallucinations
from stages.vad import SAMPLE_RATE, SpeechWindow

if TYPE_CHECKING:
    from ctranslate2.models import WhisperGenerationResult
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

logger = logging.getLogger("asr")  # the bare name: log lines read as before the move

CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's 30 s input, in 16 kHz samples
N_FFT = 400
HOP_LENGTH = 160  # 10 ms frames: 3000 mel frames per 30 s window

# Decode-length cap: fast speech is ~4 words/s, ~3 tokens/word in Russian; anything longer
# is a repetition loop. Capping per window bounds the cost of a looping (and of every
# sampled fallback) decode, which otherwise runs to Whisper's 448-token limit.
MAX_TOKENS_PER_SECOND = 15
MIN_NEW_TOKENS = 16


@dataclass(frozen=True)
class DecodeOptions:
    """Per-request decoding options (faster-whisper semantics)."""

    beam_size: int = 5
    best_of: int = 5  # hypotheses sampled per window when temperature > 0
    patience: float = 1.0
    length_penalty: float = 1.0
    temperatures: tuple[float, ...] = (0.0,)  # schedule tried in order on failure
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    initial_prompt: str | None = None
    hotwords: str | None = None
    suppress_numerals: bool = False
    task: str = "transcribe"


@dataclass
class WindowTranscript:
    """The decoded text of one speech window; times in seconds from the audio start."""

    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    silent: bool = False  # judged non-speech by the thresholds: text dropped
    speech_prob: float = 1.0  # the window's mean VAD speech probability
    screened: str | None = None  # what the hallucination screen did ("known phrase", "loop", ...), if anything

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class LanguageDetection:
    """Which language was detected, how sure, and on which speech windows."""

    language: str
    probability: float
    met_threshold: bool
    tries: list[dict] = field(default_factory=list)


class TimeSpan(Protocol):
    """What the features of a window are cut by: ``SpeechWindow`` and ``WindowTranscript`` both fit."""

    @property
    def start(self) -> float: ...

    @property
    def duration(self) -> float: ...


# One decoded window: (tokens, text, avg_logprob, no_speech_prob).
Decoded: TypeAlias = tuple[list[int], str, float, float]


def temperature_schedule(start: float, increment: float | None) -> tuple[float, ...]:
    """``start, start+increment, ...`` up to 1.0; just ``(start,)`` without an increment."""
    if not increment or increment <= 0:
        return (start,)
    count = int(round((1.0 - start) / increment)) + 1
    return tuple(round(min(1.0, start + i * increment), 4) for i in range(max(1, count)))


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes: high values mean repetitive (looping) text."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def mel_bins(model: WhisperModel) -> int:
    """Mel bins the model takes: 128 for large-v3 (its preprocessor_config.json), else 80."""
    return int(model.feat_kwargs.get("feature_size") or 80)


def log_mel_batch(model: WhisperModel, waveform: np.ndarray, windows: Sequence[TimeSpan], device: str) -> np.ndarray:
    """Log-mel features (B, n_mels, 3000) of each window, zero-padded to 30 s.

    Computed with torch on ``device`` in one batch; the clamp to (max - 8) is per window,
    as Whisper was trained with.
    """
    import torch
    from whisperx.audio import mel_filters

    n_mels = mel_bins(model)
    batch = np.zeros((len(windows), CHUNK_SAMPLES), dtype=np.float32)
    for i, window in enumerate(windows):
        first = int(window.start * SAMPLE_RATE)
        piece = waveform[first : first + min(int(round(window.duration * SAMPLE_RATE)), CHUNK_SAMPLES)]
        batch[i, : len(piece)] = piece
    with torch.inference_mode():
        audio = torch.from_numpy(batch).to(device)
        stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT, device=audio.device), return_complex=True)
        power = stft[..., :-1].abs() ** 2
        # In float64: the TF32 policy (precision.py) must not change what the ASR hears, and
        # this product is too small for TF32 to save time (GPU float32 matmuls may use TF32).
        mel = (mel_filters(audio.device, n_mels).double() @ power.double()).float()
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        features = (log_spec + 4.0) / 4.0
        return features.float().cpu().numpy()


def make_tokenizer(model: WhisperModel, language: str, task: str) -> Tokenizer:
    """A faster-whisper ``Tokenizer`` for this request (cheap: the vocabulary is shared)."""
    from faster_whisper.tokenizer import Tokenizer

    return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)


def suppressed_tokens(tokenizer: Tokenizer, suppress_numerals: bool) -> list[int]:
    """Whisper's default suppression list, plus digit/symbol tokens when asked."""
    from faster_whisper.transcribe import get_suppressed_tokens

    tokens = set(get_suppressed_tokens(tokenizer, [-1]))
    if suppress_numerals:
        tokens.update(numeral_tokens(tokenizer))
    return sorted(tokens)


def numeral_tokens(tokenizer: Tokenizer) -> list[int]:
    """Tokens whose text contains a digit or a currency/percent sign."""
    decode = tokenizer.tokenizer.decode
    return [i for i in range(tokenizer.eot) if any(c in "0123456789%$£€₽" for c in decode([i]))]


def _prompt(model: WhisperModel, tokenizer: Tokenizer, opts: DecodeOptions) -> list[int]:
    previous = tokenizer.encode(" " + opts.initial_prompt.strip()) if opts.initial_prompt else []
    return model.get_prompt(tokenizer, previous, without_timestamps=True, hotwords=opts.hotwords)


def max_new_tokens(duration_s: float) -> int:
    """Upper bound on the tokens a window of ``duration_s`` seconds can honestly need."""
    return MIN_NEW_TOKENS + int(MAX_TOKENS_PER_SECOND * duration_s)


# Whisper's encoder always emits 1500 frames (30 s); the decoder caches keys and values of
# all of them in every layer, for every window in flight.
ENCODER_FRAMES = 1500


def windows_in_flight(decoder_layers: int, d_model: int, cache_budget_mb: float, bytes_per_value: int = 2) -> int:
    """How many windows one generate call may decode so that the decoder's cross-attention
    cache (keys + values of 1500 encoder frames, every layer, float16) stays within
    ``cache_budget_mb`` MiB. Measured on an H100 with large-v3 (32 layers x 1280): ~0.33 GB
    per window at beam 5, of which 0.25 GB is this cache, so batch 32 adds ~11 GB to the
    3 GB model and 16 windows ~5.7 GB. At least 1."""
    per_window = 2 * decoder_layers * ENCODER_FRAMES * d_model * bytes_per_value
    return max(1, int(cache_budget_mb * 2**20 // per_window))


def equal_slices(count: int, max_rows: int | None) -> list[slice]:
    """``count`` windows cut into the fewest calls of at most ``max_rows`` (all in one when
    None), of equal size: 32 windows at a cap of 17 -> 16 + 16."""
    calls = 1 if not max_rows else max(1, -(-count // max_rows))
    rows = max(1, -(-count // calls))
    return [slice(first, first + rows) for first in range(0, count, rows)]


def _decode_once(model: WhisperModel, features: np.ndarray, prompt: list[int], tokenizer: Tokenizer, opts: DecodeOptions,
                 temperature: float, suppress: list[int], durations: Sequence[float], max_rows: int | None = None,
                 calls: WhisperCalls | None = None) -> list[Decoded]:
    """Generate over a batch of windows at one temperature, ``max_rows`` windows per call
    (all of them when None). ``durations`` (seconds, one per window) cap each call's decode
    length by its longest window. Encoding per slice gives the same result as one pass
    (windows are independent) and bounds the encoder's activations too."""
    call = generate_call(prompt, opts, temperature, suppress)
    decoded: list[Decoded] = []
    for part in equal_slices(len(durations), max_rows):
        max_length = min(model.max_length, len(prompt) + max_new_tokens(max(durations[part])))
        results = (calls or DIRECT).generate(model, features[part], call, max_length, max_rows)
        decoded.extend(_decoded(result, tokenizer, opts.length_penalty) for result in results)
    return decoded


@dataclass(frozen=True)
class GenerateCall:
    """Everything of one generate call besides its features and length cap: windows of several
    jobs can share a call only when these are equal (the prompt carries language, task,
    ``initial_prompt`` and ``hotwords``)."""

    prompt: tuple[int, ...]
    suppress: tuple[int, ...]
    temperature: float
    beam_size: int
    patience: float
    best_of: int
    length_penalty: float


def generate_call(prompt: list[int], opts: DecodeOptions, temperature: float, suppress: list[int]) -> GenerateCall:
    """The shareable part of a generate call at ``temperature``: beam search at 0, else sampling
    (``best_of`` hypotheses), as faster-whisper does."""
    sampled = temperature > 0
    return GenerateCall(tuple(prompt), tuple(suppress), temperature, 1 if sampled else opts.beam_size,
                        opts.patience, opts.best_of if sampled else 1, opts.length_penalty)


def generate(model: WhisperModel, features: np.ndarray, call: GenerateCall, max_length: int) -> list[WhisperGenerationResult]:
    """One encode + generate call over ``features`` (B, n_mels, 3000); ``max_length`` (tokens,
    prompt included) caps the decode. One result per row."""
    encoder_output = model.encode(features)
    if call.temperature > 0:
        kwargs = {"beam_size": 1, "num_hypotheses": call.best_of, "sampling_topk": 0, "sampling_temperature": call.temperature}
    else:
        kwargs = {"beam_size": call.beam_size, "patience": call.patience}
    return model.model.generate(
        encoder_output,
        [list(call.prompt)] * features.shape[0],
        length_penalty=call.length_penalty,
        max_length=max_length,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=list(call.suppress),
        **kwargs,
    )


def detect(model: WhisperModel, features: np.ndarray) -> list[list[tuple[str, float]]]:
    """Whisper's ranked ``(<|xx|>, probability)`` languages for each row of ``features``."""
    return model.model.detect_language(model.encode(features))


def _decoded(result: WhisperGenerationResult, tokenizer: Tokenizer, length_penalty: float) -> Decoded:
    tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
    # CTranslate2 returns the length-normalised score; undo it as faster-whisper does.
    cum_logprob = result.scores[0] * (len(tokens) ** length_penalty)
    avg_logprob = cum_logprob / (len(tokens) + 1)
    text = tokenizer.decode(tokens).strip()
    return tokens, text, float(avg_logprob), float(result.no_speech_prob)


class WhisperCalls(Protocol):
    """Who runs the model's encode + generate / detect calls: ``DIRECT`` in the caller's
    thread, or ``batching.CrossJobBatcher``, which merges the calls of concurrent jobs."""

    def generate(self, model: WhisperModel, features: np.ndarray, call: GenerateCall, max_length: int,
                 max_rows: int | None) -> list[WhisperGenerationResult]: ...

    def detect(self, model: WhisperModel, features: np.ndarray) -> list[list[tuple[str, float]]]: ...


class _Direct:
    """Runs each call at once in the calling thread."""

    def generate(self, model: WhisperModel, features: np.ndarray, call: GenerateCall, max_length: int,
                 max_rows: int | None) -> list[WhisperGenerationResult]:
        return generate(model, features, call, max_length)

    def detect(self, model: WhisperModel, features: np.ndarray) -> list[list[tuple[str, float]]]:
        return detect(model, features)


DIRECT: WhisperCalls = _Direct()


def _needs_fallback(avg_logprob: float, ratio: float, opts: DecodeOptions) -> bool:
    if opts.compression_ratio_threshold is not None and ratio > opts.compression_ratio_threshold:
        return True  # repetitive: the decoder is looping
    return opts.log_prob_threshold is not None and avg_logprob < opts.log_prob_threshold


# Below this mean VAD speech probability a window is mostly non-speech by the VAD's own account.
VAD_DOUBT = 0.5


def _is_silent(avg_logprob: float, no_speech_prob: float, opts: DecodeOptions, speech_prob: float = 1.0) -> bool:
    """Whisper's rule (high no-speech probability and unsure text), extended: a window both
    Whisper and the VAD doubt is non-speech even when the decoder is confident, since
    confident text over noise is the typical hallucination ("Редактор субтитров ...")."""
    if opts.no_speech_threshold is None or no_speech_prob <= opts.no_speech_threshold:
        return False
    if opts.log_prob_threshold is None or avg_logprob < opts.log_prob_threshold:
        return True
    return speech_prob < VAD_DOUBT


def _judged_silent(result: WindowTranscript, opts: DecodeOptions, speech_prob: float, exhausted: bool) -> bool:
    """Whether a decoded window is dropped as non-speech: ``_is_silent``, or its decoding
    failed the thresholds (``exhausted``: every temperature, or the first one where the VAD
    doubts the window, which is then not sampled) on a window the VAD itself doubts.
    Music and noise that pass the VAD are what Whisper hallucinates on ("Субтитры ...");
    when even sampling finds no acceptable text there, the window is not speech."""
    if _is_silent(result.avg_logprob, result.no_speech_prob, opts, speech_prob):
        return True
    return exhausted and speech_prob < VAD_DOUBT


# A known hallucination phrase is dropped where Whisper doubts speech at this share of
# ``no_speech_threshold`` (0.3 at the default 0.6): the phrase is the evidence, so the
# no-speech probability only has to lean towards non-speech, not cross the threshold.
PHRASE_NO_SPEECH_SHARE = 0.5


# (word, phrase) repeats in a row that count as a loop on a window the VAD is sure is speech.
SPEECH_LOOP_REPEATS = (8, 5)


def _screen_text(result: WindowTranscript, opts: DecodeOptions, tokenizer: Tokenizer) -> None:
    """The CPU-independent second signal (``hallucinations.py``) on a kept window, in place.

    On a window the VAD doubts, a loop drops the window (``compression_ratio_threshold`` on);
    on speech it is sure of, only long runs (``SPEECH_LOOP_REPEATS``) are collapsed. A window that is mostly a known hallucination phrase is dropped
    where the VAD doubts speech or Whisper leans towards non-speech (``no_speech_threshold``
    on); on a window the VAD doubts, such phrases are also cut as whole sentences from the
    start and end of its text. A known phrase on a window both are sure of is speech."""
    vad_doubts = result.speech_prob < VAD_DOUBT
    text, done = result.text, []
    if opts.compression_ratio_threshold is not None and vad_doubts and hallucinations.has_loop(text):
        result.silent, result.screened = True, "loop"
        return
    # On speech the VAD is sure of, people repeat themselves ("Алло. Алло. Алло.", "Тихо!
    # Тихо! Тихо!"): only runs longer than anyone says are taken for a decoder loop.
    if opts.compression_ratio_threshold is not None and hallucinations.has_loop(text, *SPEECH_LOOP_REPEATS):
        text = hallucinations.collapse_repeats(text, *SPEECH_LOOP_REPEATS)
        done.append("repeats collapsed")
    if opts.no_speech_threshold is not None:
        whisper_doubts = result.no_speech_prob > opts.no_speech_threshold * PHRASE_NO_SPEECH_SHARE
        if hallucinations.is_known_phrase(text) and (vad_doubts or whisper_doubts):
            result.silent, result.screened = True, "known phrase"
            return
        if vad_doubts and (stripped := hallucinations.strip_edge_phrases(text)) != text:
            text = stripped
            done.append("edge phrase cut")
    if done:
        result.text, result.screened = text, ", ".join(done)
        result.tokens = tokenizer.encode(" " + text) if text else []
        result.silent = not text


def transcribe_windows(
    model: WhisperModel,
    waveform: np.ndarray,
    windows: Sequence[SpeechWindow],
    tokenizer: Tokenizer,
    opts: DecodeOptions,
    batch_size: int,
    device: str,
    progress: Callable[[float], None] | None = None,
    max_rows: int | None = None,
    calls: WhisperCalls | None = None,
    on_batch: Callable[[list[WindowTranscript]], None] | None = None,
) -> list[WindowTranscript]:
    """Decode every window, ``batch_size`` at a time, with the temperature fallback.

    Returns one ``WindowTranscript`` per window, in order. ``progress`` gets 0–100;
    ``on_batch`` gets each batch's judged windows as soon as the batch is done (streaming).
    ``max_rows`` caps the windows of one generate call (see ``windows_in_flight``); a batch
    bigger than that is decoded in consecutive calls. ``calls`` runs the model's calls
    (``DIRECT`` when None; the worker passes its cross-job batcher).
    """
    prompt = _prompt(model, tokenizer, opts)
    suppress = suppressed_tokens(tokenizer, opts.suppress_numerals)
    # Windows per generate call: the batch, or fewer under the memory cap. Said to ``calls``
    # too, so a call merged with other jobs' windows never outgrows what this job allows.
    call_rows = min(max_rows, batch_size) if max_rows else batch_size
    out: list[WindowTranscript | None] = [None] * len(windows)
    for first in range(0, len(windows), batch_size):
        batch = list(range(first, min(first + batch_size, len(windows))))
        pending = batch
        doubted: set[int] = set()  # failed at some temperature, on a window the VAD doubts
        candidates: dict[int, list[WindowTranscript]] = {i: [] for i in batch}
        for temperature in opts.temperatures:
            if not pending:
                break
            features = log_mel_batch(model, waveform, [windows[i] for i in pending], device)
            durations = [windows[i].duration for i in pending]
            decoded = _decode_once(model, features, prompt, tokenizer, opts, temperature, suppress, durations, call_rows,
                                   calls)
            still_failing = []
            for index, (tokens, text, avg_logprob, no_speech) in zip(pending, decoded):
                ratio = compression_ratio(text)
                window = windows[index]
                result = WindowTranscript(window.start, window.end, text, tokens, avg_logprob, no_speech, ratio, temperature,
                                          speech_prob=window.speech_prob)
                candidates[index].append(result)
                if not _needs_fallback(avg_logprob, ratio, opts) or _is_silent(avg_logprob, no_speech, opts, window.speech_prob):
                    out[index] = result
                elif window.speech_prob < VAD_DOUBT:
                    # Failed, on a window the VAD doubts: sampling at a higher temperature
                    # would only find a fluent hallucination for music or noise; judged below.
                    out[index] = result
                    doubted.add(index)
                else:
                    still_failing.append(index)
            pending = still_failing
        for index in pending:  # every temperature failed: keep the most likely readable one
            tried = candidates[index]
            readable = [c for c in tried if opts.compression_ratio_threshold is None or c.compression_ratio <= opts.compression_ratio_threshold]
            out[index] = max(readable or tried, key=lambda c: c.avg_logprob)
        failed = doubted.union(pending)
        for index in batch:
            judged = out[index]
            assert judged is not None  # every window of the batch was kept, doubted or exhausted above
            judged.silent = _judged_silent(judged, opts, windows[index].speech_prob, exhausted=index in failed)
            if not judged.silent:
                _screen_text(judged, opts, tokenizer)
        if on_batch is not None:
            on_batch([window for window in (out[index] for index in batch) if window is not None])
        if progress is not None:
            progress(100.0 * batch[-1] / max(1, len(windows) - 1) if len(windows) > 1 else 100.0)
    return [r for r in out if r is not None]


# Language detection stops early only after this much speech (seconds) agrees: a phrase of
# a second or two can sound like another language (festvox-ru ru_0410's first 2 s read as
# Romanian), a whole sentence rarely does.
DETECTION_SURE_SPEECH_S = 8.0


def language_probabilities(model: WhisperModel, waveform: np.ndarray, window: SpeechWindow, device: str,
                           calls: WhisperCalls | None = None) -> dict[str, float]:
    """Whisper's probability of every language (code -> probability) for one window.

    The frames after the window's end are set to 0 (faster-whisper pads its features so for
    language detection) instead of the silence floor the ASR sees. On festvox-ru, Russian
    and Ukrainian are close calls for some clips, and the floor-padded features lost 3 clips
    to Ukrainian that faster-whisper's detection got right (bench/accuracy.py language).
    """
    features = log_mel_batch(model, waveform, [window], device)
    features[:, :, int(np.ceil(min(window.duration, 30.0) * SAMPLE_RATE / HOP_LENGTH)):] = 0.0
    ranked = (calls or DIRECT).detect(model, features)[0]
    return {token[2:-2]: float(probability) for token, probability in ranked}


def detect_language(
    model: WhisperModel,
    waveform: np.ndarray,
    windows: Sequence[SpeechWindow],
    min_prob: float,
    max_tries: int,
    device: str,
    calls: WhisperCalls | None = None,
) -> LanguageDetection:
    """Detect the language on speech, not on the first 30 s of the file.

    ``windows`` are speech windows of up to 30 s (``vad.detection_windows``: the ASR windows
    cut to the speech the VAD is sure of). The first ``max_tries`` are judged one at a time;
    each window's language probabilities are added up weighted by its seconds of speech, so
    a long sentence outweighs a short phrase. Detection stops once the leading language's
    weighted mean reaches ``min_prob`` over at least ``DETECTION_SURE_SPEECH_S`` seconds of
    speech (or over all the windows there are); otherwise it takes the leader after
    ``max_tries`` windows, with ``met_threshold`` telling whether it reached ``min_prob``.
    ``calls`` runs the model's calls (``DIRECT`` when None).
    """
    duration = len(waveform) / SAMPLE_RATE
    candidates = list(windows[:max_tries]) or [SpeechWindow(0.0, min(30.0, duration), ())]
    available_s = sum(window.speech_s for window in candidates)
    tries: list[dict] = []
    totals: dict[str, float] = {}
    weight = 0.0
    leader, mean = "en", 0.0
    for window in candidates:
        probabilities = language_probabilities(model, waveform, window, device, calls)
        top = max(probabilities, key=probabilities.__getitem__)
        tries.append({"start": round(window.start, 3), "end": round(window.end, 3), "speech_s": round(window.speech_s, 3),
                      "language": top, "probability": round(probabilities[top], 4)})
        seconds = max(window.speech_s, 1e-3)
        for language, probability in probabilities.items():
            totals[language] = totals.get(language, 0.0) + seconds * probability
        weight += seconds
        leader = max(totals, key=totals.__getitem__)
        mean = totals[leader] / weight
        if mean >= min_prob and weight >= min(DETECTION_SURE_SPEECH_S, available_s):
            break
    return LanguageDetection(leader, mean, mean >= min_prob, tries)
