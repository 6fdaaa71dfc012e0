"""GPU correctness: the real pipeline on real speech, float16 on CUDA vs int8 on CPU.

    python bench/gpu_correctness.py --model DIR --clips DIR [--offline-diarization-dir DIR]

``--clips`` holds festvox-ru wavs with ``txt.done.data`` and pyannote's ``sample.wav`` +
``sample.stm``. Prints a table (WER per device, the WER difference, word timestamps and
speakers present) and writes JSON next to ``--out``. With ``--in-flight N`` (N > 1) each
device then runs the same jobs again, N at a time in threads (merged Whisper calls, every
torch thread on its own CUDA stream), and reports how far they are from the jobs one at a
time: transcripts that differ, WER, the largest word-time difference, speakers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clips", required=True)
    parser.add_argument("--offline-diarization-dir", required=True)
    parser.add_argument("--devices", default="cuda,cpu")
    parser.add_argument("--in-flight", type=int, default=1, help="also run the jobs this many at a time (> 1)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_correctness.json"))
    args = parser.parse_args()
    os.environ["ALLOW_LOCAL_FILES"] = "true"
    import torch  # noqa: F401 - first, so torch's bundled cuDNN wins over any on LD_LIBRARY_PATH
    from references import normalise, wer

    import rp_schema
    from stages.fetch import FetchPolicy
    from predict import Predictor
    from settings import WorkerSettings

    clips = Path(args.clips)
    text = (clips / "txt.done.data").read_text(encoding="utf-8")
    refs = {m.group(1): m.group(2) for m in re.finditer(r'\(\s*(\S+)\s+"(.*)"\s*\)', text)}
    ru = sorted(p.stem for p in clips.glob("ru_*.wav"))
    stm = " ".join(line.split(maxsplit=5)[5] for line in (clips / "sample.stm").read_text().splitlines() if len(line.split()) > 5)
    report = {}
    for device in args.devices.split(","):
        compute = "float16" if device == "cuda" else "int8"
        predictor = Predictor(WorkerSettings(models_dir=str(Path(args.model).parent), device=device, preload_model=args.model,
                                             preload_compute_type=compute, offline_diarization_dir=args.offline_diarization_dir,
                                             fetch=FetchPolicy(allow_local_files=True), max_concurrent_jobs=max(1, args.in_flight)))
        predictor.setup()
        requests = [{"audio_file": str(clips / f"{clip}.wav"), "model": args.model, "compute_type": compute, "diarization": False}
                    for clip in ru]
        requests.append({"audio_file": str(clips / "sample.wav"), "model": args.model, "compute_type": compute, "diarization": True})

        run = functools.partial(_run_job, predictor, rp_schema)
        alone = [run(job) for job in requests]
        report[device] = summary(alone, compute, refs, ru, stm, wer, normalise)
        if args.in_flight > 1:
            with ThreadPoolExecutor(args.in_flight) as pool:
                together = list(pool.map(run, requests))
            report[device]["in_flight"] = {"jobs_at_once": args.in_flight, **summary(together, compute, refs, ru, stm, wer, normalise),
                                           **differences(alone, together),
                                           "merged_whisper_calls": predictor.whisper_calls.stats.merged_calls}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, ensure_ascii=False, indent=1))
    print(f"{'device':8s} {'compute':8s} {'ru WER':>7s} {'en WER':>7s} {'words timed':>12s} speakers")
    for device, r in report.items():
        print(f"{device:8s} {r['compute_type']:8s} {r['ru_wer']:7.3f} {r['en_wer']:7.3f} {r['words_timed']:>12s} {r['en_speakers']}")
    for device, r in report.items():
        if "in_flight" in r:
            f = r["in_flight"]
            print(f"{device}: {f['jobs_at_once']} at a time: ru WER {f['ru_wer']:.3f}, en WER {f['en_wer']:.3f}, "
                  f"{f['texts_differing']} of {f['jobs']} transcripts differ, word times differ by <= {f['max_word_time_diff_s']} s, "
                  f"speakers {f['en_speakers']}, {f['merged_whisper_calls']} merged Whisper calls")
    if {"cuda", "cpu"} <= set(report):
        print(f"WER difference cuda - cpu: ru {report['cuda']['ru_wer'] - report['cpu']['ru_wer']:+.3f}, "
              f"en {report['cuda']['en_wer'] - report['cpu']['en_wer']:+.3f}")


def _run_job(predictor, rp_schema, job: dict) -> dict:
    return predictor.predict(rp_schema.resolve_options(job, {}))


def summary(outputs: list[dict], compute: str, refs: dict, ru: list[str], stm: str, wer, normalise) -> dict:
    """WER, timed words and speakers of the ru clips' outputs followed by the en sample's."""
    hyps = [" ".join(s["text"] for s in out["segments"]) for out in outputs[:-1]]
    words = [w for out in outputs[:-1] for s in out["segments"] for w in s.get("words", [])]
    en = outputs[-1]
    return {
        "compute_type": compute,
        "ru_wer": wer([refs[c] for c in ru], hyps),
        "en_wer": wer(stm, " ".join(s["text"] for s in en["segments"])),
        "words_timed": f"{sum(w.get('start') is not None and w.get('end') is not None for w in words)}/{len(words)}",
        "en_speakers": sorted({s.get("speaker") for s in en["segments"] if s.get("speaker")}),
        "ru_text": [normalise(h) for h in hyps],
    }


def differences(alone: list[dict], together: list[dict]) -> dict:
    """How the same jobs differ when run together: transcripts, and word times where the words match."""
    texts = [[s["text"] for s in out["segments"]] for out in alone]
    differing = sum(texts[i] != [s["text"] for s in out["segments"]] for i, out in enumerate(together))
    largest = 0.0
    for a, b in zip(alone, together):
        words_a = [w for s in a["segments"] for w in s.get("words", [])]
        words_b = [w for s in b["segments"] for w in s.get("words", [])]
        if [w["word"] for w in words_a] != [w["word"] for w in words_b]:
            continue
        for wa, wb in zip(words_a, words_b):
            for key in ("start", "end"):
                if wa.get(key) is not None and wb.get(key) is not None:
                    largest = max(largest, abs(wa[key] - wb[key]))
    return {"jobs": len(alone), "texts_differing": differing, "max_word_time_diff_s": round(largest, 3)}


if __name__ == "__main__":
    main()
