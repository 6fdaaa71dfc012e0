"""GPU precision policy (issue 13 #2): DER, word timings and repeatability, before vs after.

    # one process per code version / policy (src tree chosen with --src):
    python bench/gpu_precision.py run --src DIR --label NAME --model DIR --clips DIR \
        --offline-diarization-dir DIR --out FILE.json
    # diarization time with TF32 off / on (same process):
    python bench/gpu_precision.py speed --clips DIR --offline-diarization-dir DIR --minutes 10 --out FILE.json
    # the table, and the JSON for docs/benchmarks/:
    python bench/gpu_precision.py compare BEFORE.json AFTER.json [MORE.json ...] --out FILE.json

``run`` starts the worker (``Predictor.setup``, warm-up on) on CUDA with real Whisper base
weights (float16), a randomly initialised xlsr-53-large-shaped wav2vec2 as the Russian aligner
(English text gets Whisper's cross-attention timings; there are no wav2vec2 weights offline) and
the offline CAM++ diarization pipeline, then sends every clip of ``--clips`` twice as a
request with diarization on: festvox-ru ``ru_*.wav`` (language ru) and pyannote's
``sample.wav`` and meeting clips (language en), scored against their RTTM (DER, collar 0,
overlap scored, whole clip). It records the TF32 flags each stage's kernels saw (the
segmentation batches, CAM++ batches, the aligner) and what ``debug_info.runtime.torch_tf32`` said.
``compare`` takes the first file as the reference: DER per clip, word times (largest difference
per word against the reference, and between the two identical requests of each run), text and
speakers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def _both_flags() -> str:
    import torch

    return f"matmul={'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'},cudnn={'on' if torch.backends.cudnn.allow_tf32 else 'off'}"


def run(args) -> None:
    sys.path.insert(0, str(Path(args.src).resolve()))
    sys.path.insert(0, str(ROOT / "bench"))
    env = {"ALLOW_LOCAL_FILES": "true", "MODELS_DIR": str(Path(args.model).parent), "WORKER_DEVICE": args.device,
           "PRELOAD_MODEL": args.model, "PRELOAD_COMPUTE_TYPE": "float16", "WARMUP": "true",
           "OFFLINE_DIARIZATION_DIR": args.offline_diarization_dir, "PRELOAD_ALIGN_LANGUAGES": "ru"}
    os.environ.update(env)
    import torch  # noqa: F401 - first, so torch's bundled cuDNN wins over any on LD_LIBRARY_PATH
    from random_models import make_random_wav2vec2

    aligner_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"wav2vec2-ru-{args.aligner_size}-precision"
    if not (aligner_dir / "config.json").exists():
        make_random_wav2vec2(aligner_dir, args.aligner_size, seed=0)
    os.environ["ALIGN_MODEL_RU"] = str(aligner_dir)

    import numpy as np
    import soundfile as sf
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate
    from pyannote.audio.core.inference import Inference

    from stages import alignment
    from stages import campplus
    from stages import diarization
    import rp_schema
    from predict import Predictor
    from settings import WorkerSettings

    # What precision each stage's kernels ran at: counted per call, process-wide flags read
    # from inside the stage (segmentation and CAM++ batches, aligner calls).
    seen: dict[str, Counter] = {"segmentation": Counter(), "embedding": Counter(), "alignment": Counter()}

    def spy(owner, name, stage):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            seen[stage][_both_flags()] += 1
            return original(*a, **k)

        setattr(owner, name, wrapper)

    try:  # the plain offline pipeline's segmentation batches
        from stages.speaker_segmentation import SpeakerSegmentation

        spy(SpeakerSegmentation, "infer", "segmentation")
    except ImportError:  # a --src tree from before it: pyannote's
        spy(Inference, "infer", "segmentation")
    spy(campplus.CampPlusEmbedding, "embed_frames", "embedding")
    spy(alignment, "align_with_wav2vec2", "alignment")
    last_turns: list = []
    diarize = diarization.DiarizationModels.diarize

    def keep_turns(self, *a, **k):
        out = diarize(self, *a, **k)
        last_turns[:] = out.turns
        return out

    diarization.DiarizationModels.diarize = keep_turns

    predictor = Predictor(WorkerSettings.from_env())
    predictor.setup()
    after_setup = _both_flags()
    seen_setup = {stage: dict(c) for stage, c in seen.items()}
    for c in seen.values():
        c.clear()

    clips = Path(args.clips)
    jobs = [(p, "ru", None) for p in sorted(clips.glob("ru_*.wav"))]
    references = {}
    for rttm in clips.glob("*.rttm"):
        references.update(load_rttm(str(rttm)))
    jobs += [(p, "en", references.get(p.stem)) for p in sorted(clips.glob("*.wav")) if not p.stem.startswith("ru_")]
    results: dict[str, list] = {}
    if args.limit:
        jobs = jobs[: args.limit]
    for attempt in range(2):
        for path, language, reference in jobs:
            out = predictor.predict(rp_schema.resolve_options(
                {"audio_file": str(path), "model": args.model, "compute_type": "float16", "language": language,
                 "diarization": True, "debug": True}, {}))
            if "error" in out:
                raise SystemExit(f"{path.name}: {out['error']}")
            info = out["debug_info"]
            row = {
                "text": " ".join(s["text"].strip() for s in out["segments"]),
                "speakers": [s.get("speaker") for s in out["segments"]],
                "words": [[w["word"], w.get("start"), w.get("end"), w.get("speaker")] for s in out["segments"]
                          for w in s.get("words", [])],
                "alignment_method": info["output"]["alignment_method"],
                "torch_tf32": info["runtime"]["torch_tf32"],
                "timings": {k: info["timings"].get(k) for k in ("transcription_s", "alignment_s", "diarization_s")},
                "turns": len(last_turns),
                "speaker_count": len({t.speaker for t in last_turns}),
            }
            if reference is not None:
                hyp = Annotation()
                for i, t in enumerate(last_turns):
                    hyp[Segment(t.start, t.end), i] = t.speaker
                duration = sf.info(str(path)).duration
                row["der"] = float(DiarizationErrorRate(collar=0.0, skip_overlap=False)(
                    reference, hyp, uem=Timeline([Segment(0.0, duration)])))
            results.setdefault(path.stem, []).append(row)
            print(f"{args.label} #{attempt + 1} {path.stem:8s} der={row.get('der', float('nan')):.3f} "
                  f"words={len(row['words'])} {row['alignment_method']} flags={_both_flags()}", flush=True)
    report = {"label": args.label, "src": str(args.src), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "env_TORCH_ALLOW_TF32": os.environ.get("TORCH_ALLOW_TF32"),
              "flags_after_setup": after_setup, "flags_at_end": _both_flags(),
              "stage_flags_warmup": seen_setup, "stage_flags_jobs": {s: dict(c) for s, c in seen.items()},
              "clips": results, "numpy": np.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, ensure_ascii=False, indent=1))


def speed(args) -> None:
    """Diarization time of ``--minutes`` of tiled clips with TF32 off and on (alternating,
    same process, after one warm-up run), as the worker runs it (offline pipeline, own CUDA
    stream not used)."""
    sys.path.insert(0, str(Path(args.src).resolve()))
    import time

    import numpy as np
    import soundfile as sf
    import torch

    from stages import diarization
    from resident import precision

    precision.pin_pyannote()
    clips = [sf.read(str(p), dtype="float32")[0] for p in sorted(Path(args.clips).glob("*.wav"))]
    audio = np.concatenate(clips)
    audio = np.tile(audio, int(np.ceil(args.minutes * 60 * SR / len(audio))))[: int(args.minutes * 60 * SR)]
    models = diarization.DiarizationModels(args.device, args.offline_diarization_dir)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def once() -> tuple[float, int]:
        sync()
        started = time.perf_counter()
        out = models.diarize(audio, model=diarization.DEFAULT_MODEL, token=None, min_speakers=None, max_speakers=None,
                             num_speakers=None, return_embeddings=False)
        sync()
        return time.perf_counter() - started, len({t.speaker for t in out.turns})

    once()
    times: dict[str, list] = {"off": [], "on": []}
    speakers = {}
    for mode in ("off", "on") * args.repeats:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "on"
        seconds, speakers[mode] = once()
        times[mode].append(round(seconds, 3))
    report = {"minutes": args.minutes, "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "diarization_s": times,
              "median_s": {m: float(np.median(t)) for m, t in times.items()}, "speakers": speakers}
    print(json.dumps(report))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


def _word_diff(a: list, b: list) -> float | None:
    """Largest start/end difference (s) between two word lists with the same words; None if
    the words differ."""
    if [w[0] for w in a] != [w[0] for w in b]:
        return None
    diffs = [abs(x - y) for wa, wb in zip(a, b) for x, y in ((wa[1], wb[1]), (wa[2], wb[2])) if x is not None and y is not None]
    return max(diffs, default=0.0)


def compare(args) -> None:
    runs = [json.loads(Path(p).read_text()) for p in args.files]
    ref = runs[0]
    summary = []
    clips = list(ref["clips"])
    print(f"reference: {ref['label']}   (DER collar 0; word dt = largest start/end difference, ms)")
    header = f"{'run':16s} {'clip':8s} {'DER':>6s} {'spk':>3s} {'text=ref':>8s} {'spk=ref':>7s} {'dt ref':>7s} {'repeat text/spk':>15s} {'dt rep':>7s}  words"
    print(header)
    for run_ in runs:
        for clip in clips:
            first, second = run_["clips"][clip]
            base = ref["clips"][clip][0]
            dt_ref, dt_rep = _word_diff(first["words"], base["words"]), _word_diff(first["words"], second["words"])
            row = {
                "run": run_["label"], "clip": clip, "der": first.get("der"), "der_repeat": second.get("der"),
                "speakers": first["speaker_count"], "alignment_method": first["alignment_method"],
                "words": len(first["words"]),
                "text_equal_ref": first["text"] == base["text"], "speakers_equal_ref": first["speakers"] == base["speakers"],
                "word_dt_ref_ms": None if dt_ref is None else round(dt_ref * 1000, 1),
                "repeat_text_equal": first["text"] == second["text"],
                "repeat_speakers_equal": first["speakers"] == second["speakers"] and
                [w[3] for w in first["words"]] == [w[3] for w in second["words"]],
                "word_dt_repeat_ms": None if dt_rep is None else round(dt_rep * 1000, 1),
                "timings": first["timings"],
            }
            summary.append(row)
            der = "" if row["der"] is None else f"{row['der']:.3f}"
            print(f"{row['run']:16s} {clip:8s} {der:>6s} {row['speakers']:3d} {str(row['text_equal_ref']):>8s} "
                  f"{str(row['speakers_equal_ref']):>7s} {str(row['word_dt_ref_ms']):>7s} "
                  f"{str(row['repeat_text_equal']) + '/' + str(row['repeat_speakers_equal']):>15s} {str(row['word_dt_repeat_ms']):>7s}  "
                  f"{row['words']} ({row['alignment_method']})")
    print()
    totals = {}
    for run_ in runs:
        rows = [r for r in summary if r["run"] == run_["label"]]
        ders = [r["der"] for r in rows if r["der"] is not None]
        dts = [r["word_dt_ref_ms"] for r in rows if r["word_dt_ref_ms"] is not None]
        reps = [r["word_dt_repeat_ms"] for r in rows if r["word_dt_repeat_ms"] is not None]
        diar = [r["timings"]["diarization_s"] for r in rows if r["timings"].get("diarization_s")]
        totals[run_["label"]] = {
            "mean_der": sum(ders) / len(ders) if ders else None,
            "max_word_dt_ref_ms": max(dts, default=None), "max_word_dt_repeat_ms": max(reps, default=None),
            "all_text_equal_ref": all(r["text_equal_ref"] for r in rows),
            "all_speakers_equal_ref": all(r["speakers_equal_ref"] for r in rows),
            "all_repeats_equal": all(r["repeat_text_equal"] and r["repeat_speakers_equal"] for r in rows),
            "diarization_s_sum": round(sum(diar), 3),
            "tf32_reported": sorted({str(c[0]["torch_tf32"]) for c in run_["clips"].values()}),
            "flags_after_setup": run_["flags_after_setup"], "stage_flags_jobs": run_["stage_flags_jobs"],
        }
        t = totals[run_["label"]]
        print(f"{run_['label']:16s} mean DER {t['mean_der']:.4f}  max word dt vs ref {t['max_word_dt_ref_ms']} ms  "
              f"repeat max dt {t['max_word_dt_repeat_ms']} ms  text=ref {t['all_text_equal_ref']}  spk=ref "
              f"{t['all_speakers_equal_ref']}  repeats equal {t['all_repeats_equal']}  diarization {t['diarization_s_sum']} s  "
              f"debug torch_tf32 {t['tf32_reported']}")
        print(f"{'':16s} flags after setup {t['flags_after_setup']}; seen by stages in jobs {t['stage_flags_jobs']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"reference": ref["label"], "gpu": ref["gpu"], "torch": ref["torch"],
                                          "totals": totals, "rows": summary}, ensure_ascii=False, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--src", default=str(ROOT / "src"))
    r.add_argument("--label", required=True)
    r.add_argument("--model", required=True)
    r.add_argument("--clips", required=True)
    r.add_argument("--offline-diarization-dir", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--limit", type=int, default=0, help="first N clips only (smoke runs)")
    r.add_argument("--aligner-size", default="large", help="random wav2vec2 shape: large (xlsr-53) or tiny (CPU smoke runs)")
    c = sub.add_parser("compare")
    c.add_argument("files", nargs="+")
    c.add_argument("--out", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--src", default=str(ROOT / "src"))
    p.add_argument("--clips", required=True)
    p.add_argument("--offline-diarization-dir", required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    args = parser.parse_args()
    {"run": run, "compare": compare, "speed": speed}[args.command](args)


if __name__ == "__main__":
    main()
