"""Accuracy on speech the suite was not tuned on: the worker against plain faster-whisper.

Same model (the offline Whisper base, int8 on CPU), same audio. Three measurements:

- ``language``: language detection on festvox-ru clips (all 620 by default), the English
  pyannote sample, and speech after 12 s of noise or music. For each clip: the worker's
  detection (its VAD, then ``asr.detect_language``) and faster-whisper's own
  ``WhisperModel.detect_language`` on the same 16 kHz samples. Prints the confusion table of
  both side by side and the clips where one is right and the other wrong.
- ``wer``: the worker's WER with ``language: null`` against ``language: "ru"`` and plain
  sequential faster-whisper (``WhisperModel.transcribe``, its defaults) on a split. The
  worker (language detected) against faster-whisper is also reported clip by clip: the
  per-clip differences in word errors, the one-sided sign-flip p-value that the worker is
  worse (tests/quality.py), and a 95 % paired bootstrap interval of the WER difference.
- ``telephone``: the same three on the split's clips through a 300-3400 Hz band at 8 kHz
  (PCM16 WAV files, which each contender decodes itself).

Splits of festvox-ru (clip number modulo 4): ``dev`` = 1, ``test`` = 3 (never tuned on),
``rest`` = 0 and 2, ``all``. ``--limit N`` takes every k-th clip of the split so N remain.

    .venv/bin/python bench/accuracy.py language --split all --out bench/results/language.json
    .venv/bin/python bench/accuracy.py wer --split dev --limit 60
    .venv/bin/python bench/accuracy.py telephone --split test --out bench/results/tel_test.json
    .venv/bin/python bench/accuracy.py wer --split all --skip-forced --out docs/benchmarks/accuracy_clean_cpu.json

``--device cuda`` runs both contenders on the GPU (``--compute-type`` defaults to int8 on CPU,
float16 on CUDA). A festvox clip is read from ``wav/<clip>.wav``, else ``wav/<clip>.flac``
(soundfile reads both), so FLAC copies can stand in for the WAVs.
"""

from __future__ import annotations

import argparse
import json
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from quality import bootstrap_wer_difference, sign_flip_p_value, word_errors  # noqa: E402
from references import BASE_MODEL, FESTVOX, LOCAL_MODELS, PYANNOTE_SAMPLE, festvox_transcripts, require_assets, wer  # noqa: E402

SR = 16_000


def split_clips(split: str, limit: int | None) -> list[str]:
    """Festvox clip ids of ``split`` (by clip number modulo 4), thinned to ``limit``."""
    ids = sorted(festvox_transcripts())
    residues = {"dev": {1}, "test": {3}, "rest": {0, 2}, "all": {0, 1, 2, 3}}[split]
    picked = [c for c in ids if int(c.split("_")[1]) % 4 in residues]
    if limit and len(picked) > limit:
        step = len(picked) / limit
        picked = [picked[int(i * step)] for i in range(limit)]
    return picked


def festvox_clip(clip: str) -> Path:
    """The clip's audio file: the WAV, else a FLAC copy of it (e.g. staged on another machine)."""
    path = FESTVOX / "wav" / f"{clip}.wav"
    flac = path.with_suffix(".flac")
    return flac if not path.exists() and flac.exists() else path


def load(path: Path) -> np.ndarray:
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    if rate != SR:
        import librosa

        samples = librosa.resample(samples, orig_sr=rate, target_sr=SR)
    return samples.astype(np.float32)


def telephone_band(samples: np.ndarray, dest: Path) -> Path:
    """``samples`` (16 kHz) through a 300-3400 Hz band-pass, resampled to 8 kHz, as PCM16 WAV."""
    if shutil.which("ffmpeg") is None:
        return telephone_band_without_ffmpeg(samples, dest)
    src = dest.with_suffix(".src.wav")
    sf.write(str(src), samples, SR, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src),
                    "-af", "highpass=f=300:poles=2,highpass=f=300:poles=2,lowpass=f=3400:poles=2,lowpass=f=3400:poles=2",
                    "-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le", str(dest)], check=True)
    src.unlink()
    return dest


def _biquad(samples: np.ndarray, kind: str, freq: float, rate: int = SR, q: float = 0.707) -> np.ndarray:
    """ffmpeg's two-pole ``highpass``/``lowpass`` (the RBJ cookbook biquads, its default Q)."""
    from scipy.signal import lfilter

    w0 = 2 * np.pi * freq / rate
    cos, alpha = np.cos(w0), np.sin(w0) / (2 * q)
    sign = 1 if kind == "lowpass" else -1
    b = [(1 - sign * cos) / 2, sign * (1 - sign * cos), (1 - sign * cos) / 2]
    return lfilter(b, [1 + alpha, -2 * cos, 1 - alpha], samples)


def _pcm16(samples: np.ndarray, rate: int) -> np.ndarray:
    """``samples`` as a PCM16 WAV holds them (written and read back with soundfile)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
    buffer.seek(0)
    return sf.read(buffer, dtype="float64")[0]


def telephone_band_without_ffmpeg(samples: np.ndarray, dest: Path) -> Path:
    """Where there is no ffmpeg (the lent GPU): ``telephone_band``'s filters in scipy, the 8 kHz
    PCM16 signal, then back to 16 kHz (PCM16 WAV): there neither contender could decode an 8 kHz
    file itself (the worker resamples with ffmpeg, faster-whisper with PyAV), so both get the
    same 16 kHz samples. Only the 8 -> 16 kHz resampler differs from the ffmpeg path."""
    from scipy.signal import resample_poly

    band = _pcm16(samples, SR)
    for kind, freq in (("highpass", 300), ("highpass", 300), ("lowpass", 3400), ("lowpass", 3400)):
        band = _biquad(band, kind, freq)
    narrow = _pcm16(resample_poly(band, 1, 2), SR // 2)
    sf.write(str(dest), np.clip(resample_poly(narrow, 2, 1), -1.0, 1.0), SR, subtype="PCM_16")
    return dest


def pyav_decodes() -> bool:
    """Whether faster-whisper can decode a file itself: False where PyAV is missing or is the
    empty stand-in that bench/gpu_setup.sh registers on the lent GPU."""
    try:
        import av
    except ImportError:
        return False
    return hasattr(av, "open")


def non_speech(kind: str, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if kind == "noise":
        return (rng.standard_normal(n) * 0.05).astype(np.float32)
    notes = np.array([220, 277, 330, 440, 554, 659])
    freq = notes[(t // 0.4).astype(int) % len(notes)]
    return (0.15 * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(2 * np.pi * 2 * freq * t)).astype(np.float32)


# ------------------------------------------------------------------ contenders
class Worker:
    """The worker in-process (offline base model, CPU by default), through ``Predictor.predict``."""

    def __init__(self, device: str = "cpu", compute_type: str = "int8") -> None:
        os.environ.setdefault("ALLOW_LOCAL_FILES", "true")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from stages.fetch import FetchPolicy
        from predict import Predictor
        from settings import WorkerSettings

        self.device, self.compute_type = device, compute_type
        # On CPU the settings are exactly the historical ones (the preloaded model is int8).
        extra = {} if device == "cpu" else {"preload_compute_type": compute_type}
        self.predictor = Predictor(WorkerSettings(models_dir=str(LOCAL_MODELS), device=device, preload_model=BASE_MODEL,
                                                  warmup=False, preload_align_languages=(),
                                                  fetch=FetchPolicy(allow_local_files=True), **extra))
        self.predictor.setup()

    def transcribe(self, path: Path, language: str | None) -> tuple[str, str | None]:
        import rp_schema

        fields = {"audio_file": str(path), "language": language, "diarization": False, "align_output": False}
        if self.device != "cpu":
            fields["compute_type"] = self.compute_type
        out = self.predictor.predict(rp_schema.resolve_options(fields, {"MODEL": BASE_MODEL}))
        return " ".join(s["text"] for s in out["segments"]), out["detected_language"]

    def detect(self, samples: np.ndarray) -> tuple[str | None, float]:
        from stages import asr
        from stages import vad

        from resident.models import resolve_asr_model

        model, _ = self.predictor.asr_models.whisper(resolve_asr_model(BASE_MODEL, str(LOCAL_MODELS), None), self.compute_type)
        scores = vad.speech_scores(self.predictor.asr_models.vad(), samples)
        windows = vad.speech_windows(scores, vad.VadOptions(), len(samples) / SR)
        if not windows:
            return None, 0.0
        found = asr.detect_language(model, samples, vad.detection_windows(scores, windows), 0.5, 3, self.device)
        return found.language, found.probability


class FasterWhisper:
    """Plain faster-whisper on the same CTranslate2 model: its own decoding and detection."""

    def __init__(self, device: str = "cpu", compute_type: str = "int8") -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(LOCAL_MODELS / BASE_MODEL), device=device, compute_type=compute_type)
        self.decodes_files = pyav_decodes()

    def transcribe(self, path: Path, language: str | None) -> tuple[str, str | None]:
        # Without PyAV (the lent GPU) the file's samples, read with soundfile (16 kHz there).
        audio = str(path) if self.decodes_files else load(path)
        segments, info = self.model.transcribe(audio, language=language)
        return " ".join(s.text.strip() for s in segments), info.language

    def detect(self, samples: np.ndarray) -> tuple[str | None, float]:
        language, probability, _ = self.model.detect_language(samples)
        return language, float(probability)


# ------------------------------------------------------------------ measurements
def language_cases(split: str, limit: int | None) -> list[tuple[str, str, np.ndarray]]:
    """(name, true language, 16 kHz samples) for the detection table."""
    cases = [(c, "ru", load(festvox_clip(c))) for c in split_clips(split, limit)]
    sample = load(PYANNOTE_SAMPLE / "sample.wav")
    cases.append(("pyannote_sample", "en", sample))
    for i, clip in enumerate(("ru_0101", "ru_0202", "ru_0303")):
        speech = load(festvox_clip(clip))
        for kind in ("noise", "music"):
            cases.append((f"{kind}12s+{clip}", "ru", np.concatenate([non_speech(kind, 12.0, i), speech])))
    for kind in ("noise", "music"):
        cases.append((f"{kind}12s+pyannote_sample", "en", np.concatenate([non_speech(kind, 12.0, 9), sample])))
    return cases


def confusion(rows: list[dict], key: str) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = {}
    for row in rows:
        table.setdefault(row["truth"], Counter())[str(row[key])] += 1
    return {truth: dict(counts.most_common()) for truth, counts in table.items()}


def measure_language(args) -> dict:
    cases = language_cases(args.split, args.limit)
    worker, fw = Worker(args.device, args.compute_type), FasterWhisper(args.device, args.compute_type)
    rows = []
    started = time.perf_counter()
    for name, truth, samples in cases:
        w_lang, w_p = worker.detect(samples)
        f_lang, f_p = fw.detect(samples)
        rows.append({"clip": name, "truth": truth, "worker": w_lang, "worker_p": round(w_p, 3),
                     "faster_whisper": f_lang, "faster_whisper_p": round(f_p, 3)})
        if len(rows) % 50 == 0:
            print(f"{len(rows)}/{len(cases)} clips, {time.perf_counter() - started:.0f} s", flush=True)
    worse = [r for r in rows if r["worker"] != r["truth"] and r["faster_whisper"] == r["truth"]]
    better = [r for r in rows if r["worker"] == r["truth"] and r["faster_whisper"] != r["truth"]]
    return {
        "clips": len(rows),
        "worker_correct": sum(r["worker"] == r["truth"] for r in rows),
        "faster_whisper_correct": sum(r["faster_whisper"] == r["truth"] for r in rows),
        "worker_confusion": confusion(rows, "worker"),
        "faster_whisper_confusion": confusion(rows, "faster_whisper"),
        "worker_wrong_faster_whisper_right": worse,
        "worker_right_faster_whisper_wrong": better,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }


def measure_wer(args, telephone: bool) -> dict:
    clips = split_clips(args.split, args.limit)
    refs = festvox_transcripts()
    worker, fw = Worker(args.device, args.compute_type), FasterWhisper(args.device, args.compute_type)
    hyps: dict[str, list[str]] = {"worker_auto": [], "worker_ru": [], "faster_whisper_auto": []}
    languages: dict[str, Counter] = {"worker_auto": Counter(), "faster_whisper_auto": Counter()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            path = festvox_clip(clip)
            if telephone:
                path = telephone_band(load(path), Path(tmp) / f"{clip}_8k.wav")
            w_auto, w_lang = worker.transcribe(path, None)
            w_ru = "" if args.skip_forced else worker.transcribe(path, "ru")[0]
            f_auto, f_lang = fw.transcribe(path, None)
            for key, text in (("worker_auto", w_auto), ("worker_ru", w_ru), ("faster_whisper_auto", f_auto)):
                hyps[key].append(text)
            (e_w, words), (e_f, _) = word_errors(refs[clip], w_auto), word_errors(refs[clip], f_auto)
            languages["worker_auto"][str(w_lang)] += 1
            languages["faster_whisper_auto"][str(f_lang)] += 1
            rows.append({"clip": clip, "ref": refs[clip], "worker_auto": w_auto, "worker_lang": w_lang, "worker_ru": w_ru,
                         "faster_whisper": f_auto, "faster_whisper_lang": f_lang,
                         "words": words, "errors_worker": e_w, "errors_fw": e_f})
            if len(rows) % 50 == 0:
                print(f"{len(rows)}/{len(clips)} clips", flush=True)
    references = [refs[c] for c in clips]
    if args.skip_forced:
        del hyps["worker_ru"]
    diffs = [r["errors_worker"] - r["errors_fw"] for r in rows]
    low, high = bootstrap_wer_difference([r["errors_worker"] for r in rows], [r["errors_fw"] for r in rows],
                                         [r["words"] for r in rows])
    return {
        "split": args.split, "clips": len(clips), "telephone": telephone,
        "words": sum(r["words"] for r in rows),
        "wer": {key: round(wer(references, texts), 4) for key, texts in hyps.items()},
        "paired": {"worker_minus_fw_errors": sum(diffs), "worker_worse_clips": sum(d > 0 for d in diffs),
                   "worker_better_clips": sum(d < 0 for d in diffs),
                   "p_worker_worse": round(sign_flip_p_value(diffs), 4),
                   "wer_difference_ci95": [round(low, 4), round(high, 4)]},
        "languages": {key: dict(c) for key, c in languages.items()},
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("language", "wer", "telephone"))
    parser.add_argument("--split", default="dev", choices=("dev", "test", "rest", "all"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-forced", action="store_true", help="wer/telephone: skip the worker's language: ru run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both contenders run")
    parser.add_argument("--compute-type", default=None, help="CTranslate2 compute type (default: int8 on CPU, float16 on CUDA)")
    args = parser.parse_args()
    if args.compute_type is None:
        args.compute_type = "int8" if args.device == "cpu" else "float16"
    if args.device == "cuda":
        # torch before CTranslate2 (and anything else that loads CUDA libraries): its bundled
        # cuDNN must win over an older one on LD_LIBRARY_PATH (e.g. beside a cuBLAS shim).
        import torch  # noqa: F401
    require_assets()
    result = measure_language(args) if args.what == "language" else measure_wer(args, args.what == "telephone")
    for name in ("CT2_FORCE_CPU_ISA", "CT2_USE_MKL", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        result[name.lower()] = os.environ.get(name, "native")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git where it runs (e.g. the lent GPU's copy of the tree)
        commit = ""
    result["commit"] = commit or os.environ.get("BENCH_COMMIT", "")
    result["date"] = time.strftime("%Y-%m-%d")
    if args.device != "cpu":
        result["device"], result["compute_type"] = args.device, args.compute_type
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
        result["faster_whisper_input"] = "file (PyAV)" if pyav_decodes() else "samples (soundfile; no PyAV here)"
        if args.what == "telephone":
            result["telephone_band_by"] = ("ffmpeg" if shutil.which("ffmpeg") else
                                           "scipy (no ffmpeg here): 8 kHz PCM16, back to 16 kHz for both contenders")
    if args.what == "language":
        print(f"{'':24}{'worker':>10}{'faster-whisper':>16}")
        print(f"{'correct':24}{result['worker_correct']:>10}{result['faster_whisper_correct']:>16}  of {result['clips']}")
        for truth in result["worker_confusion"]:
            print(f"truth {truth}: worker {result['worker_confusion'][truth]}  faster-whisper {result['faster_whisper_confusion'][truth]}")
        print("worker wrong, faster-whisper right:", [r["clip"] for r in result["worker_wrong_faster_whisper_right"]])
        print("worker right, faster-whisper wrong:", [r["clip"] for r in result["worker_right_faster_whisper_wrong"]])
    else:
        print(f"{result['split']} split, {result['clips']} clips, telephone={result['telephone']}")
        for key, value in result["wer"].items():
            print(f"  WER {key:22} {value:.4f}")
        print("  languages:", result["languages"])
        paired = result["paired"]
        print(f"  worker - faster-whisper: {paired['worker_minus_fw_errors']:+d} errors in {result['words']} words; worse on "
              f"{paired['worker_worse_clips']} clips, better on {paired['worker_better_clips']}; p(worse) = "
              f"{paired['p_worker_worse']}; WER difference 95 % CI {paired['wer_difference_ci95']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1))
        print("wrote", args.out)


if __name__ == "__main__":
    main()
