"""Fault bench: a mixed stream of normal and hostile jobs at full concurrency, through the real
SDK job loop (``src/handler.py`` against the RunPod stub of tests/runpod_stub.py).

Phases, one worker process (offline base model, CPU by default, ``MAX_CONCURRENT_JOBS``):
1. ``alone``: short festvox clips one at a time (their latency alone);
2. ``beside_long``: a long file (diarization on) starts, then the same clips one at a time
   while it runs: their latency beside it, and the long file's own time;
3. ``hostile``: decode bombs (1 Hz WAV, a FLAC claiming 2^36 samples, a WAV whose byte rate
   claims hours), files naming other files (DASH, HLS), SSRF tricks, invalid Unicode, a
   download that drips one byte a second (ends at ``DOWNLOAD_TIMEOUT``, 10 s), normal clips between;
4. ``cancel``: long jobs stopped by RunPod mid-transcription: seconds from the stop signal to
   the job's thread ending (its "cancelled" log line) and to the next job starting.

Prints a table and writes JSON: jobs served, errors by kind, jobs lost (must be 0), peak RSS
of the worker's process tree, short-clip p50/p95 alone and beside the long file (and their
ratio), cancel-to-freed-slot seconds.

    .venv/bin/python bench/fault_bench.py --out docs/benchmarks/fault_cpu.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fixtures_audio import SHORT_CLIPS, HostileServer, build_media, concat_clips, festvox_wav  # noqa: E402
from hostile_files import dash, hls, set_flac_total_samples, wav  # noqa: E402
from references import require_assets  # noqa: E402
from runpod_stub import RunPodStub  # noqa: E402
from servers import worker_env  # noqa: E402

FAST = {"diarization": False, "align_output": False, "language": "ru"}
KINDS = (  # error kind -> pattern of its message
    ("sample rate", r"sample rate"), ("length cap", r"MAX_AUDIO_SECONDS"), ("container", r"unsupported container"),
    ("refused URL", r"refused"), ("deadline", r"time budget|took longer than"), ("invalid text", r"invalid character|unknown input field"),
    ("internal error", r"internal error"),
)


def _b64(data: bytes, name: str) -> dict:
    return {"audio_base64": base64.b64encode(data).decode(), "audio_filename": name}


def kind_of(error: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, error)), "other")


class RssSampler(threading.Thread):
    """Peak resident memory (MiB) of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self._stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                proc = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                self.peak_mb = max(self.peak_mb, rss / 2**20)
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()


def log_time(line: str) -> float:
    """Wall-clock time of a container-log line ("2026-12-06 19:32:56,635 ...")."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Bench:
    def __init__(self, stub: RunPodStub, container_log: Path) -> None:
        self.stub, self.container_log, self.count = stub, container_log, 0
        self.answers: dict[str, dict] = {}

    def run(self, job_input: dict, timeout_s: float = 900) -> tuple[dict, float]:
        """Submit one job and wait for its answer; (posted data, seconds from submit to answer)."""
        self.count += 1
        job_id = f"job-{self.count}"
        started = time.monotonic()
        self.stub.submit(job_id, job_input)
        posted = self.stub.result(job_id, timeout_s)
        self.answers[job_id] = posted.data
        return posted.data, posted.at - started

    def log_line(self, pattern: str) -> str | None:
        text = self.container_log.read_text(encoding="utf-8", errors="replace") if self.container_log.exists() else ""
        return next((line for line in text.splitlines() if re.search(pattern, line)), None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="MAX_CONCURRENT_JOBS of the worker")
    parser.add_argument("--long-s", type=float, default=240.0, help="length of the long file (seconds)")
    parser.add_argument("--clips", type=int, default=6, help="short clips per latency phase")
    parser.add_argument("--cancels", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    require_assets()
    folder = Path(tempfile.mkdtemp(prefix="fault-bench-"))
    long_file, long_s, _ = concat_clips(folder / "long.wav", args.long_s)
    clips = [festvox_wav(c) for c in SHORT_CLIPS[: args.clips]]
    media = build_media(folder / "media")
    flac = folder / "claims.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(clips[0]), str(flac)], check=True)
    set_flac_total_samples(flac, 2**36 - 1)
    container_log = folder / "container_log.txt"
    result: dict = {"device": args.device, "max_concurrent_jobs": args.jobs, "long_file_s": round(long_s, 1)}
    with RunPodStub() as stub, HostileServer(media) as server:
        env = worker_env(**stub.env(), ALLOW_LOCAL_FILES="true", CONTAINER_LOG_PATH=str(container_log),
                         MAX_CONCURRENT_JOBS=str(args.jobs), JOB_TIMEOUT_S="900", DOWNLOAD_TIMEOUT="10",
                         MAX_AUDIO_SECONDS="3600",
                         WORKER_DEVICE=args.device, TMPDIR=str(folder))
        with open(folder / "stdout.txt", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-u", "src/handler.py"], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
            sampler = RssSampler(proc.pid)
            sampler.start()
            bench = Bench(stub, container_log)
            try:
                bench.run({**FAST, "audio_file": str(clips[0])})  # the first job loads what warm-up left
                alone = [bench.run({"audio_file": str(c), "language": "ru"})[1] for c in clips]

                stub.submit("long-1", {"audio_file": str(long_file), "language": "ru"})
                long_started = time.monotonic()
                stub.wait_for_progress("long-1", "transcribe", 900)
                beside = [bench.run({"audio_file": str(c), "language": "ru"})[1] for c in clips]
                long_done = stub.result("long-1", 1800)
                result["long_file_seconds"] = round(long_done.at - long_started, 2)

                hostile = {
                    "1 Hz WAV": _b64(wav(1, 1, 4800), "bomb.wav"),
                    "WAV claiming hours": _b64(wav(16000, 1, 4800, byte_rate=1), "hours.wav"),
                    "FLAC claiming 2^36 samples": _b64(flac.read_bytes(), "claims.flac"),
                    "DASH naming a local file": _b64(dash(str(clips[1])).encode(), "m.mpd"),
                    "HLS naming a local file": _b64(hls(str(clips[1])).encode(), "p.m3u8"),
                    "URL parser trick": {"audio_file": "http://127.0.0.1:1\\@93.184.216.34/a.wav"},
                    "lone surrogate prompt": {"audio_file": str(clips[1]), "initial_prompt": "a\ud800b"},
                    "drip download": {"audio_file": server.url("drip")},
                }
                errors: dict[str, int] = {}
                rows = []
                for name, job in hostile.items():
                    # (The worker allows private URLs for the drip server on 127.0.0.1; private
                    # targets, 6to4 and port probes are refused in tests/e2e/test_hostile_endpoint.py.)
                    data, seconds = bench.run({**FAST, **job})
                    error = str(data.get("error") or data.get("output", {}).get("error", ""))
                    kind = kind_of(error) if error else "served"
                    errors[kind] = errors.get(kind, 0) + 1
                    rows.append({"case": name, "kind": kind, "seconds": round(seconds, 2), "error": error[:160]})
                    bench.run({**FAST, "audio_file": str(clips[2])})  # a normal job between: still served
                result["hostile"] = rows

                cancel_rows = []
                for n in range(args.cancels):
                    job_id = f"cancel-{n}"
                    stub.submit(job_id, {"audio_file": str(long_file), "language": "ru"})
                    stub.wait_for_progress(job_id, "transcribe", 900)
                    stopped_at = time.time()
                    stub.stop(job_id)
                    deadline = time.monotonic() + 120
                    line = None
                    while line is None and time.monotonic() < deadline:
                        time.sleep(0.1)
                        line = bench.log_line(rf"job {job_id} rejected: job cancelled")
                    freed = round(log_time(line) - stopped_at, 2) if line else None
                    _, next_seconds = bench.run({**FAST, "audio_file": str(clips[3])})
                    cancel_rows.append({"job": job_id, "stop_to_thread_end_s": freed, "next_job_s": round(next_seconds, 2)})
                result["cancel"] = cancel_rows
            finally:
                sampler.stop()
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    answered = set(bench.answers) | {"long-1"}
    submitted = {f"job-{n}" for n in range(1, bench.count + 1)} | {"long-1"}
    internal = sum("internal error" in json.dumps(a) for a in bench.answers.values())
    result.update({
        "jobs_served": len(bench.answers) + 1,
        "jobs_lost": len(submitted - answered),
        "internal_errors": internal,
        "errors_by_kind": errors,
        "peak_rss_mb": round(sampler.peak_mb, 0),
        "short_alone_s": {"p50": round(statistics.median(alone), 2), "p95": round(percentile(alone, 0.95), 2)},
        "short_beside_long_s": {"p50": round(statistics.median(beside), 2), "p95": round(percentile(beside, 0.95), 2)},
    })
    result["short_p50_ratio_beside_vs_alone"] = round(result["short_beside_long_s"]["p50"] / result["short_alone_s"]["p50"], 2)
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result["date"] = time.strftime("%Y-%m-%d")
    result["cpu_cores"] = os.cpu_count()
    print(f"{'figure':44} value")
    for key in ("jobs_served", "jobs_lost", "internal_errors", "peak_rss_mb", "long_file_seconds",
                "short_p50_ratio_beside_vs_alone"):
        print(f"{key:44} {result[key]}")
    print(f"{'short clip p50 / p95 alone (s)':44} {result['short_alone_s']['p50']} / {result['short_alone_s']['p95']}")
    print(f"{'short clip p50 / p95 beside long file (s)':44} {result['short_beside_long_s']['p50']} / "
          f"{result['short_beside_long_s']['p95']}")
    for row in result["hostile"]:
        print(f"  {row['case']:28} {row['kind']:14} {row['seconds']:6.2f} s  {row['error'][:70]}")
    for row in result["cancel"]:
        print(f"  {row['job']}: stop -> thread ended {row['stop_to_thread_end_s']} s; next job answered in {row['next_job_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1))
        print("wrote", args.out)


if __name__ == "__main__":
    main()
