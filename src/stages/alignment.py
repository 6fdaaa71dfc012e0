"""Word timestamps: wav2vec2 forced alignment, with Whisper's own timings as a fallback.

Order of preference for a request with ``align_output``:

1. wav2vec2 CTC forced alignment (whisperX's method and results, re-implemented for speed in
   ``ctc_alignment``) with the model of the detected language, loaded on first use (Hugging
   Face checkpoints in plain torch by ``wav2vec2_network``, torchaudio bundles and variants it
   does not build by whisperX), the ``MAX_CACHED_ALIGNERS`` most recently used kept resident
   besides the preloaded ones; ``ALIGN_MODEL_<LANG>`` maps a language to a local dir or Hub id;
2. when no aligner exists or loads for the language (no network, unknown language,
   silence detected as a rare language), Whisper's cross-attention word timings computed
   from the ASR model itself, which runs offline with the weights already resident.

Either way every word leaves with ``start``/``end``: words the aligner cannot place (digits,
Latin words in Russian text have no wav2vec2 characters) get times interpolated between
their neighbours, in proportion to their length.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_cache import SingleFlightCache, release_cuda_cache
from stages.aligners import Aligner as Aligner
from stages.aligners import AlignerUnavailable as AlignerUnavailable
from stages.aligners import AlignModel as AlignModel  # re-exported: the aligner types live in aligners
from stages.aligners import HalfPrecision as HalfPrecision
from stages.asr import WindowTranscript, log_mel_batch

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

    from stages.ctc_alignment import ForwardRunner

logger = logging.getLogger("alignment")  # the bare name: log lines read as before the move

# A failed aligner load (offline, unknown language) is not retried for this long, so a
# worker without network does not pay the Hub's retry delays on every request.
FAILED_LOAD_RETRY_S = 600.0

# Punctuation merged into the neighbouring word, as Whisper does.
PREPEND_PUNCTUATIONS = "\"'“¿([{-«"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、»"


class AlignmentModels:
    """Resident aligners, one per language, loaded on first use; thread-safe.

    device: "cpu" or "cuda" (on CUDA aligners run in half precision, ``HalfPrecision``).
    override: language -> local folder or Hub id of its aligner (``ALIGN_MODEL_<LANG>``), or
        None for whisperX's default.
    max_cached: aligners kept resident besides the kept ones (``MAX_CACHED_ALIGNERS``); loading
        one more drops the least recently used non-kept one first (a job still aligning with
        it keeps its own reference).
    kept: languages whose aligners are never dropped (``PRELOAD_ALIGN_LANGUAGES``).

    Loads run outside any lock that other languages need (``model_cache.SingleFlightCache``):
    a job waits only for the aligner of its own language. A failed load is remembered for
    ``FAILED_LOAD_RETRY_S`` seconds, so a worker without network does not pay the Hub's retry
    delays on every request.
    """

    def __init__(
        self,
        device: str,
        override: Callable[[str], str | None] = lambda _lang: None,
        *,
        max_cached: int = 4,
        kept: frozenset[str] = frozenset(),
    ) -> None:
        self.device = device
        self._override = override
        self.kept = kept
        self._cache: SingleFlightCache[str, Aligner] = SingleFlightCache(
            max_cached, kept=kept.__contains__, on_evict=self._evicted)
        self._failed: dict[str, tuple[float, str]] = {}  # language -> (time.monotonic(), error)
        self._failed_lock = threading.Lock()

    @property
    def max_cached(self) -> int:
        return self._cache.max_cached

    def get(self, language: str, *, wait_check: Callable[[], None] | None = None) -> tuple[Aligner, float]:
        """The aligner for ``language`` and the seconds this call spent loading it or waiting
        for another job's load of it (0.0 if resident).

        Raises ``AlignerUnavailable`` when it cannot be loaded (now, or within
        ``FAILED_LOAD_RETRY_S`` seconds of a failed load). wait_check: called about every
        0.2 s while another job loads this language's aligner; what it raises (the job was
        cancelled or ran out of time) ends the wait, not the load.
        """
        with self._failed_lock:
            failed = self._failed.get(language)
        if failed and time.monotonic() - failed[0] < FAILED_LOAD_RETRY_S:
            raise AlignerUnavailable(failed[1])
        return self._cache.get(language, lambda: self._load_remembering_failure(language), wait_check=wait_check)

    def resident(self) -> list[str]:
        """Languages whose aligners are resident, least recently used first."""
        return self._cache.resident()

    def _load_remembering_failure(self, language: str) -> Aligner:
        """``_load``, remembering an ``AlignerUnavailable`` (and forgetting it on success)."""
        try:
            aligner = self._load(language)
        except AlignerUnavailable as exc:
            with self._failed_lock:
                self._failed[language] = (time.monotonic(), str(exc))
            raise
        with self._failed_lock:
            self._failed.pop(language, None)
        return aligner

    def _evicted(self, languages: list[str]) -> None:
        for language in languages:
            logger.info("aligner for %s dropped from the cache (MAX_CACHED_ALIGNERS=%d)", language, self.max_cached)
        if self.device == "cuda":
            release_cuda_cache()  # the dropped weights' blocks go back for CTranslate2 to use

    def _load(self, language: str) -> Aligner:
        name = self._override(language) or _whisperx_default(language)
        if not name:
            raise AlignerUnavailable(f"no wav2vec2 alignment model for language {language!r}: whisperX has no default "
                                     f"for it and ALIGN_MODEL_{language.upper()} is not set")
        logger.info("loading alignment model for %s (%s)", language, name)
        try:
            loaded = _load_plain(language, name, self.device) if _names_folder_or_hub_repo(name) else None
            model, metadata = loaded or _load_with_whisperx(language, name, self.device)
        except Exception as exc:  # offline, gated, corrupt folder
            raise AlignerUnavailable(
                f"no wav2vec2 alignment model for language {language!r} ({name}): {type(exc).__name__}") from None
        if self.device == "cuda":
            model = HalfPrecision(model)
        return Aligner(language, model, metadata, name)


def _whisperx_default(language: str) -> str | None:
    """whisperX's own aligner for ``language`` (a torchaudio bundle name or a Hub id), or None."""
    from stages.whisperx_tables import constant

    return constant("alignment", "DEFAULT_ALIGN_MODELS_TORCH").get(language) or constant("alignment", "DEFAULT_ALIGN_MODELS_HF").get(language)


def _names_folder_or_hub_repo(name: str) -> bool:
    """A local folder or an ``owner/name`` Hub id, as against a torchaudio bundle name."""
    return "/" in name or Path(name).is_dir()


def _load_plain(language: str, name: str, device: str) -> tuple[AlignModel, dict] | None:
    """A Hugging Face wav2vec2 CTC aligner built without transformers (``wav2vec2_network``),
    with whisperX's metadata; None for a variant that module does not build."""
    from stages import aligner_files, wav2vec2_network

    folder = aligner_files.local_folder(name)
    try:
        model = wav2vec2_network.load_wav2vec2_ctc(folder, device)
    except wav2vec2_network.Unsupported as exc:
        logger.info("aligner %s is loaded through transformers: %s", name, exc)
        return None
    return model, {"language": language, "dictionary": wav2vec2_network.ctc_dictionary(folder), "type": "huggingface"}


def _load_with_whisperx(language: str, name: str, device: str) -> tuple[AlignModel, dict]:
    """whisperX's loader (torchaudio bundles, and variants ``wav2vec2_network`` does not build)."""
    import whisperx

    chatter = io.StringIO()
    try:
        # whisperX prints load errors to stdout; keep them out of the worker's output.
        with contextlib.redirect_stdout(chatter):
            return whisperx.load_align_model(language, device, model_name=name)
    finally:
        if chatter.getvalue().strip():
            logger.debug("whisperX: %s", chatter.getvalue().strip()[:500])


_PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def ensure_punkt(language: str) -> str | None:
    """Make sure nltk's ``punkt_tab`` data for ``language`` is on the nltk path, offline.

    whisperX splits aligned text into sentences with punkt and, when the data is missing,
    calls ``nltk.download`` at run time (a network call inside a request). The image bakes
    the real data (``NLTK_DATA``); when it is absent, minimal parameter files are written to
    a cache folder instead, so sentence splitting falls back to punctuation only. Returns a
    warning in that case, else None.
    """
    import os

    import nltk
    from whisperx.utils import PUNKT_LANGUAGES

    for folder in os.environ.get("NLTK_DATA", "").split(os.pathsep):
        if folder and folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)
    name = PUNKT_LANGUAGES.get(language, "english")
    try:
        nltk.data.find(f"tokenizers/punkt_tab/{name}/")
        return None
    except LookupError:
        pass
    cache = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "whisperx-worker", "nltk_data")
    target = os.path.join(cache, "tokenizers", "punkt_tab", name)
    os.makedirs(target, exist_ok=True)
    for filename in _PUNKT_FILES:
        open(os.path.join(target, filename), "a").close()
    if cache not in nltk.data.path:
        nltk.data.path.append(cache)
    return f"nltk punkt_tab data for {name!r} is not installed: sentences are split on punctuation only"


# With a time budget, segments are aligned in groups of this many (~4 min of audio), the
# budget checked between groups; segments align independently, so the result is the same.
CHECKED_GROUP_SEGMENTS = 8


def align_with_wav2vec2(
    transcripts: Sequence[WindowTranscript], aligner: Aligner, waveform: np.ndarray, device: str,
    check: Callable[[], None] | None = None, run_forward: ForwardRunner | None = None,
) -> list[dict]:
    """wav2vec2 forced alignment of each window's text (whisperX's method and word timings,
    batched: ``ctc_alignment``); segments split into sentences, every word timed.

    check: called between groups of ``CHECKED_GROUP_SEGMENTS`` segments (the job's time
    budget: it raises to stop); None aligns all segments in one call.
    run_forward: where the model's forwards are queued (``ctc_alignment.align_segments``).
    """
    from stages import ctc_alignment

    segments = [ctc_alignment.SegmentText(t.start, t.end, t.text) for t in transcripts if t.text]
    if not segments:
        return []
    group = CHECKED_GROUP_SEGMENTS if check is not None else len(segments)
    aligned: list[dict] = []
    for first in range(0, len(segments), group):
        if check is not None:
            check()
        aligned += ctc_alignment.align_segments(segments[first : first + group], aligner.model, aligner.metadata,
                                                waveform, device, run_forward=run_forward)
    return [_clean_segment(seg) for seg in aligned]


def warm_up_aligner(aligner: Aligner, waveform: np.ndarray, device: str) -> int:
    """Run ``aligner`` once on every input shape a job can give it (GPU padded batches; see
    ``ctc_alignment.warm_up``) and align one segment of ``waveform`` end to end (text
    planning, trellis, sentence splitter). Returns the number of shapes warmed."""
    from stages import ctc_alignment

    shapes = ctc_alignment.warm_up(aligner.model, aligner.metadata, device)
    seconds = len(waveform) / ctc_alignment.SAMPLE_RATE
    probe = WindowTranscript(0.0, seconds, "а " * int(4 * seconds), [], 0.0, 0.0, 1.0, 0.0)
    align_with_wav2vec2([probe], aligner, waveform, device)
    return shapes


def whisper_word_timings(
    model: WhisperModel,
    waveform: np.ndarray,
    transcripts: Sequence[WindowTranscript],
    tokenizer: Tokenizer,
    batch_size: int,
    device: str,
    check: Callable[[], None] | None = None,
) -> list[dict]:
    """Word timings from Whisper's cross-attention (DTW over the alignment heads).

    One segment per window; ``score`` is the mean token probability of the word. ``check``
    is called before each batch (the job's time budget: it raises to stop).
    """
    from faster_whisper.transcribe import merge_punctuations

    kept = [t for t in transcripts if t.tokens and t.text]
    segments: list[dict] = []
    for first in range(0, len(kept), batch_size):
        if check is not None:
            check()
        batch = kept[first : first + batch_size]
        features = log_mel_batch(model, waveform, batch, device)
        encoder_output = model.encode(features)
        frames = [max(1, int(round(t.duration * model.frames_per_second))) for t in batch]
        alignments = model.find_alignment(tokenizer, [t.tokens for t in batch], encoder_output, frames)
        for transcript, alignment in zip(batch, alignments):
            merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
            words = [
                {
                    "word": item["word"].strip(),
                    "start": round(transcript.start + float(item["start"]), 3),
                    "end": round(transcript.start + float(item["end"]), 3),
                    "score": round(float(item["probability"]), 3),
                }
                for item in alignment
                if item["word"].strip()
            ]
            segments.append(_clean_segment({"start": transcript.start, "end": transcript.end, "text": transcript.text, "words": words}))
    return segments


def _clean_segment(segment: dict) -> dict:
    """JSON-native segment with rounded times and every word timed."""
    words = fill_missing_word_times(segment.get("words") or [], segment["start"], segment["end"])
    out = {
        "start": round(float(words[0]["start"] if words else segment["start"]), 3),
        "end": round(float(words[-1]["end"] if words else segment["end"]), 3),
        "text": segment["text"].strip(),
        "words": words,
    }
    return out


def fill_missing_word_times(words: list[dict], seg_start: float, seg_end: float) -> list[dict]:
    """Give every word ``start``/``end`` (seconds), keeping the ones that have them.

    A run of untimed words (numbers, Latin words the aligner has no characters for) shares
    the gap between its timed neighbours (or the segment edges) in proportion to its
    length in characters. Times are made monotonic.
    """
    out = [{"word": w["word"], **{k: v for k, v in w.items() if k != "word"}} for w in words]
    i = 0
    while i < len(out):
        if _has_times(out[i]):
            i += 1
            continue
        j = i
        while j < len(out) and not _has_times(out[j]):
            j += 1
        left = out[i - 1]["end"] if i > 0 else seg_start
        right = out[j]["start"] if j < len(out) else seg_end
        right = max(right, left)
        lengths = np.array([max(1, len(w["word"])) for w in out[i:j]], dtype=float)
        edges = left + (right - left) * np.concatenate(([0.0], np.cumsum(lengths) / lengths.sum()))
        for k, word in enumerate(out[i:j]):
            word["start"], word["end"] = float(edges[k]), float(edges[k + 1])
            word.setdefault("score", 0.0)
        i = j
    previous_end = seg_start
    for word in out:
        word["start"] = round(max(float(word["start"]), previous_end), 3)
        word["end"] = round(max(float(word["end"]), word["start"]), 3)
        if "score" in word and word["score"] is not None:
            word["score"] = round(float(word["score"]), 3)
        previous_end = word["end"]
    return out


def _has_times(word: dict) -> bool:
    start, end = word.get("start"), word.get("end")
    return start is not None and end is not None and not (np.isnan(start) or np.isnan(end))
