"""GPU correctness: the real pipeline on real speech, float16 on CUDA vs int8 on CPU.

    python bench/gpu_correctness.py --model DIR --clips DIR [--offline-diarization-dir DIR]

``--clips`` holds festvox-ru wavs with ``txt.done.data`` and pyannote's ``sample.wav`` +
``sample.stm``. Prints a table (WER per device, the WER difference, word timestamps and
speakers present) and writes JSON next to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
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
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_correctness.json"))
    args = parser.parse_args()
    os.environ["ALLOW_LOCAL_FILES"] = "true"
    import torch  # noqa: F401 - first, so torch's bundled cuDNN wins over any on LD_LIBRARY_PATH
    from references import normalise, wer

    import rp_schema
    from fetch import FetchPolicy
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
                                             fetch=FetchPolicy(allow_local_files=True)))
        predictor.setup()
        hyps, words_timed, words_total = [], 0, 0
        for clip in ru:
            out = predictor.predict(rp_schema.resolve_options({"audio_file": str(clips / f"{clip}.wav"), "model": args.model,
                                                               "compute_type": compute, "diarization": False}, {}))
            hyps.append(" ".join(s["text"] for s in out["segments"]))
            for s in out["segments"]:
                for w in s.get("words", []):
                    words_total += 1
                    words_timed += w.get("start") is not None and w.get("end") is not None
        en = predictor.predict(rp_schema.resolve_options({"audio_file": str(clips / "sample.wav"), "model": args.model,
                                                          "compute_type": compute, "diarization": True}, {}))
        report[device] = {
            "compute_type": compute,
            "ru_wer": wer([refs[c] for c in ru], hyps),
            "en_wer": wer(stm, " ".join(s["text"] for s in en["segments"])),
            "words_timed": f"{words_timed}/{words_total}",
            "en_speakers": sorted({s.get("speaker") for s in en["segments"] if s.get("speaker")}),
            "ru_text": [normalise(h) for h in hyps],
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, ensure_ascii=False, indent=1))
    print(f"{'device':8s} {'compute':8s} {'ru WER':>7s} {'en WER':>7s} {'words timed':>12s} speakers")
    for device, r in report.items():
        print(f"{device:8s} {r['compute_type']:8s} {r['ru_wer']:7.3f} {r['en_wer']:7.3f} {r['words_timed']:>12s} {r['en_speakers']}")
    if {"cuda", "cpu"} <= set(report):
        print(f"WER difference cuda - cpu: ru {report['cuda']['ru_wer'] - report['cpu']['ru_wer']:+.3f}, "
              f"en {report['cuda']['en_wer'] - report['cpu']['en_wer']:+.3f}")


if __name__ == "__main__":
    main()
