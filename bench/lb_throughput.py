"""Load-balancing endpoint against the queue API: the same clips from 8 concurrent clients.

Starts the worker twice, side by side in time on one machine: once as RunPod's local queue API
(``src/handler.py --rp_serve_api``, clients POST ``/runsync`` with ``audio_file`` links to a
local file server) and once as the load-balancing endpoint (``ENDPOINT_TYPE=load_balancer``,
clients upload the file with the official ``openai`` client, as OpenAI's users do). Both run the
same stages (ASR, alignment, diarization) on the same clips: festvox-ru speech cut into
``--clip-s`` second files, each client sending ``--per-client`` of them one after another.
Reports audio seconds per wall second, request latency p50/p95 and failures per door, then the
LB/queue ratios, and saves JSON.

    .venv/bin/python bench/lb_throughput.py --clients 8 --per-client 2 --out docs/benchmarks/lb_vs_queue_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from fairness_probe import long_file, percentile  # noqa: E402
from references import FESTVOX, require_assets  # noqa: E402
from servers import FileServer, LoadBalancerWorker, WorkerApi  # noqa: E402


def make_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """``count`` different clips of ``seconds`` each (festvox-ru recordings end to end, each clip
    starting at another recording)."""
    recordings = sorted((FESTVOX / "wav").glob("ru_*.wav"))
    clips = []
    for index in range(count):
        path = folder / f"clip{index:02d}.wav"
        start = index * 7 % len(recordings)
        long_file(recordings[start:] + recordings[:start], seconds, path)
        clips.append(path)
    return clips


def drive(clients: int, work: list[list[Path]], send) -> dict:
    """Each client sends its clips in turn; returns wall time, latencies and failures."""
    latencies: list[float] = []
    failures: list[str] = []

    def client(paths: list[Path]) -> None:
        for path in paths:
            started = time.perf_counter()
            try:
                send(path)
            except Exception as exc:  # noqa: BLE001 - counted and shown
                failures.append(f"{path.name}: {type(exc).__name__}: {str(exc)[:200]}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, work))
    return {"wall_s": round(time.perf_counter() - started, 2), "latencies_s": [round(v, 2) for v in latencies],
            "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--clip-s", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=0, help="MAX_CONCURRENT_JOBS (0: the worker's default)")
    parser.add_argument("--lb-first", action="store_true", help="measure the load-balancing door first (order check)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lb_vs_queue.json")
    args = parser.parse_args()
    require_assets()
    folder = Path(tempfile.mkdtemp(prefix="lb_bench_"))
    clips = make_clips(folder, args.clients * args.per_client, args.clip_s)
    audio_s = sum(sf.info(str(path)).duration for path in clips)
    work = [clips[i::args.clients] for i in range(args.clients)]
    env = {"MAX_CONCURRENT_JOBS": str(args.jobs)} if args.jobs else {}
    results = {}

    def run_queue() -> None:
        with FileServer(folder) as files, WorkerApi(folder / "queue.log", **env) as api:
            api.runsync({"audio_file": files.url(clips[0].name), "language": "ru"})  # warm

            def queue_send(path: Path) -> None:
                envelope = api.runsync({"audio_file": files.url(path.name), "language": "ru"})
                if envelope.get("status") != "COMPLETED" or "error" in (envelope.get("output") or {}):
                    raise RuntimeError(str(envelope)[:300])

            results["queue"] = drive(args.clients, work, queue_send)

    def run_load_balancer() -> None:
        with LoadBalancerWorker(folder, **env) as lb:
            client = lb.client()

            def lb_send(path: Path) -> None:
                with path.open("rb") as audio:
                    client.audio.transcriptions.create(file=audio, model="whisper-1", response_format="verbose_json",
                                                       timestamp_granularities=["word"],
                                                       extra_body={"language": "ru", "diarization": True})

            lb_send(clips[0])  # warm
            results["load_balancer"] = drive(args.clients, work, lb_send)

    for run in (run_load_balancer, run_queue) if args.lb_first else (run_queue, run_load_balancer):
        run()

    rows = {}
    for door, run in results.items():
        rows[door] = {"requests": len(run["latencies_s"]), "failures": len(run["failures"]), "wall_s": run["wall_s"],
                      "x_real_time": round(audio_s / run["wall_s"], 2),
                      "p50_s": round(percentile(run["latencies_s"], 0.5), 2),
                      "p95_s": round(percentile(run["latencies_s"], 0.95), 2)}
    ratio = {"throughput_lb_over_queue": round(rows["load_balancer"]["x_real_time"] / rows["queue"]["x_real_time"], 3),
             "p50_lb_over_queue": round(rows["load_balancer"]["p50_s"] / rows["queue"]["p50_s"], 3)}
    print(f"{args.clients} clients x {args.per_client} clips of {args.clip_s:g} s ({audio_s:.0f} s of audio)")
    print(f"{'door':14} {'requests':>8} {'failed':>6} {'wall s':>7} {'x real time':>11} {'p50 s':>6} {'p95 s':>6}")
    for door, row in rows.items():
        print(f"{door:14} {row['requests']:>8} {row['failures']:>6} {row['wall_s']:>7} {row['x_real_time']:>11} "
              f"{row['p50_s']:>6} {row['p95_s']:>6}")
    print(f"LB / queue: throughput {ratio['throughput_lb_over_queue']}, p50 latency {ratio['p50_lb_over_queue']}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"commit": commit, "machine": platform.processor() or platform.machine(),
                                    "order": "load_balancer first" if args.lb_first else "queue first",
                                    "clients": args.clients, "per_client": args.per_client, "clip_s": args.clip_s,
                                    "audio_s": round(audio_s, 1), "rows": rows, "ratios": ratio, "runs": results},
                                   indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
