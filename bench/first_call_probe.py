"""Where does a first call cost more than the next? Times each GPU stage on new inputs twice.

    python3 bench/first_call_probe.py --audio long_ru_meetings.flac --offline-diarization-dir DIR [--out probe.json]

For each stage (VAD, wav2vec2 alignment with a random xlsr-53-large-shaped model, offline
diarization) the stage is warmed up the way ``Predictor.setup`` did before session 3's shape
warm-ups (one aligner segment per length, diarization on noise, in the main thread), then run
on real audio / new segment lengths twice: the diagnosis that led to them. A first run much slower than the second means start-up
warm-up misses some shapes or one-off work. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def timed(fn, device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return round(time.perf_counter() - started, 4)


def segment_sets(rng: np.random.Generator, count: int, total_s: float) -> list[list[tuple[float, float]]]:
    """``count`` sets of ~36 (start, end) spans (seconds) of 3-30 s within ``total_s``."""
    sets = []
    for _ in range(count):
        lengths = rng.uniform(3.0, 30.0, size=36)
        starts = np.sort(rng.uniform(0, total_s - 31.0, size=36))
        sets.append([(float(s), float(s + n)) for s, n in zip(starts, lengths)])
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--minutes", type=float, default=16.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--offline-diarization-dir", required=True)
    parser.add_argument("--aligner-size", default="large", help="random wav2vec2 shape: large (xlsr-53) or tiny")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "first_call_probe.json"))
    args = parser.parse_args()

    import soundfile as sf

    from stages import alignment
    from stages import asr
    from stages import diarization
    from stages import vad
    from resident.models import AsrModels
    from random_models import make_random_wav2vec2

    waveform, rate = sf.read(args.audio, dtype="float32")
    assert rate == vad.SAMPLE_RATE, "16 kHz audio expected"
    waveform = waveform[: int(args.minutes * 60 * rate)]
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(30 * rate) * 0.01).astype(np.float32)
    report: dict = {"device": args.device, "minutes": args.minutes}

    vad_model = AsrModels(args.device, "/nonexistent").vad()
    report["vad"] = {"warm_up_30s_noise": timed(lambda: vad.speech_scores(vad_model, noise), args.device)}
    for label in ("first", "second"):
        report["vad"][label] = timed(lambda: vad.speech_scores(vad_model, waveform), args.device)

    folder = make_random_wav2vec2(Path(os.environ.get("TMPDIR", "/tmp")) / f"wav2vec2-ru-{args.aligner_size}", args.aligner_size)
    aligner, _ = alignment.AlignmentModels(args.device, lambda _lang: str(folder)).get("ru")
    alignment.ensure_punkt("ru")
    warm = [asr.WindowTranscript(0.0, float(n), "а " * (4 * n), [], 0.0, 0.0, 1.0, 0.0) for n in range(1, 31)]
    report["alignment"] = {"warm_up_1_to_30s": timed(lambda: alignment.align_with_wav2vec2(warm, aligner, noise, args.device), args.device)}
    for index, spans in enumerate(segment_sets(rng, 3, len(waveform) / rate)):
        windows = [asr.WindowTranscript(s, e, "а " * int(4 * (e - s)), [], 0.0, 0.0, 1.0, 0.0) for s, e in spans]
        for label in ("first", "second"):
            report["alignment"][f"set{index}_{label}"] = timed(
                lambda w=windows: alignment.align_with_wav2vec2(w, aligner, waveform, args.device), args.device)

    models = diarization.DiarizationModels(args.device, args.offline_diarization_dir)
    models.warm_up()

    def diarize(audio: np.ndarray):
        return models.diarize(audio, model="", token=None, min_speakers=None, max_speakers=None, num_speakers=None,
                              return_embeddings=False)

    report["diarization"] = {"warm_up_90s_noise": timed(lambda: diarize(np.tile(noise, 3)), args.device)}
    for label in ("first", "second"):
        report["diarization"][label] = timed(lambda: diarize(waveform), args.device)
    clip = waveform[: 5 * 60 * rate]
    for label in ("5min_first", "5min_second"):
        report["diarization"][label] = timed(lambda: diarize(clip), args.device)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"{'stage':14s} {'call':24s} {'seconds':>8s}")
    for stage in ("vad", "alignment", "diarization"):
        for call, seconds in report[stage].items():
            print(f"{stage:14s} {call:24s} {seconds:8.3f}")


if __name__ == "__main__":
    main()
