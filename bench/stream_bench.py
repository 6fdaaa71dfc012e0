"""Streaming: time to the first streamed segment against time to the whole answer, one long file.

The worker's Predictor in-process (no RunPod SDK, no HTTP: what both doors stream is what the
Predictor hands to ``partial``), one job on a file of festvox-ru clips end to end, diarization
and alignment on. Reports when the first and the last partial segment arrived and when the
answer was ready, in seconds from the job's start, for each ``batch_size`` given (the windows
ASR decodes between two partials).

    .venv/bin/python bench/stream_bench.py --model .models/faster-whisper-base \\
        --clips .assets/festvox-ru/wav --offline-diarization-dir .models/offline-diarization \\
        --minutes 16 --batch-sizes 32,8 --out docs/benchmarks/stream_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", required=True, help="CTranslate2 Whisper folder")
    parser.add_argument("--clips", type=Path, required=True, help="folder of 16 kHz mono WAV clips")
    parser.add_argument("--offline-diarization-dir", required=True)
    parser.add_argument("--minutes", type=float, default=16.0)
    parser.add_argument("--batch-sizes", default="32", help="comma-separated batch_size values, one job each")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.device == "cuda":
        import torch  # noqa: F401 - torch's CUDA libraries before CTranslate2's

    import rp_schema
    from fairness_probe import long_file
    from predict import Predictor
    from settings import WorkerSettings
    from stages.fetch import FetchPolicy

    path = Path("/tmp/stream_long.wav")
    audio_s = long_file(sorted(args.clips.glob("*.wav")), args.minutes * 60, path)
    model_dir = Path(args.model)
    settings = WorkerSettings(models_dir=str(model_dir.parent), device=args.device, preload_model=model_dir.name,
                              preload_align_languages=(), offline_diarization_dir=args.offline_diarization_dir,
                              fetch=FetchPolicy(allow_local_files=True))
    predictor = Predictor(settings)
    predictor.setup()
    # Measure warm jobs: the diarization lane may still run after setup() (issue 26).
    if predictor.diarization is not None:
        predictor.diarization.wait_until_warm()
    rows = []
    for batch_size in (int(value) for value in args.batch_sizes.split(",")):
        arrivals: list[float] = []
        started = time.perf_counter()
        options = rp_schema.resolve_options({"audio_file": str(path), "language": "ru", "batch_size": batch_size},
                                            {"MODEL": model_dir.name})
        def arrived(_segment: dict, arrivals: list[float] = arrivals, started: float = started) -> None:
            arrivals.append(time.perf_counter() - started)

        transcript = predictor.transcribe(options, partial=arrived)
        total = time.perf_counter() - started
        rows.append({"batch_size": batch_size, "partials": len(arrivals), "first_partial_s": round(arrivals[0], 2),
                     "last_partial_s": round(arrivals[-1], 2), "answer_s": round(total, 2),
                     "first_partial_share": round(arrivals[0] / total, 3), "segments": len(transcript.segments)})
        print(f"batch {batch_size:3d}: first segment {arrivals[0]:7.1f} s, last {arrivals[-1]:7.1f} s, "
              f"answer {total:7.1f} s ({len(arrivals)} partials)")
    result = {
        "device": args.device, "audio_s": round(audio_s, 1), "rows": rows,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip() or os.environ.get("BENCH_COMMIT", ""),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
