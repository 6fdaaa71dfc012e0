"""Aligner start-up cost: whisperX's loader against ``stages.wav2vec2_network``, fresh processes.

Each run is a new interpreter that imports torch (the worker has, before its lanes start),
then times loading one wav2vec2 CTC aligner folder and its first forward on 3 s of audio:

- ``whisperx``: ``whisperx.load_align_model`` (imports ``whisperx.alignment``, and with it
  transformers' model, generation and processor stacks), as the worker did before 4719725;
- ``plain``: the worker's ``AlignmentModels.get`` (``wav2vec2_network``: no transformers).

The two alternate run by run (ABAB...), so a machine's drift touches both. Prints a table and
writes JSON.

    .venv/bin/python bench/aligner_load_bench.py --device cpu --repeats 2 --out bench/results/aligner_load_cpu.json
    python3 bench/aligner_load_bench.py --device cuda --aligner /tmp/wav2vec2-ru-large --out $OUT/aligner_load_h100.json

Without ``--aligner`` a random xlsr-53-large-shaped aligner is made first (``random_models``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
T = time.perf_counter
started = T()
import torch
sys.path.insert(0, {src!r})
device, folder, loader = {device!r}, {folder!r}, {loader!r}
if device == "cuda":
    torch.zeros(1, device="cuda")
torch_s = T() - started
started = T()
if loader == "whisperx":
    import whisperx
    model, metadata = whisperx.load_align_model("ru", device, model_name=folder)
else:
    from stages import alignment
    model = alignment.AlignmentModels("cpu" if device == "cpu" else "cuda", lambda _l: folder).get("ru")[0].model
load_s = T() - started
samples = torch.zeros(1, 48000, device=device)
if device == "cuda" and loader == "whisperx":
    model = model.half(); samples = samples.half()
started = T()
with torch.no_grad():
    model(samples)
if device == "cuda":
    torch.cuda.synchronize()
print(json.dumps({{"loader": loader, "model": type(model).__name__, "torch_s": round(torch_s, 3),
                  "load_s": round(load_s, 3), "first_forward_s": round(T() - started, 3)}}))
"""


def run_once(loader: str, folder: Path, device: str) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), device=device, folder=str(folder), loader=loader)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aligner", help="a Hugging Face wav2vec2 CTC folder (default: a random xlsr-53-large shape)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    folder = Path(args.aligner) if args.aligner else None
    if folder is None:
        sys.path.insert(0, str(ROOT / "bench"))
        from random_models import make_random_wav2vec2

        folder = make_random_wav2vec2(Path(tempfile.mkdtemp(prefix="aligner-load-")), "large")
    runs = [run_once(loader, folder, args.device) for _ in range(args.repeats) for loader in ("whisperx", "plain")]
    summary = {}
    for loader in ("whisperx", "plain"):
        mine = [r for r in runs if r["loader"] == loader]
        summary[loader] = {key: round(statistics.median(r[key] for r in mine), 3) for key in ("torch_s", "load_s", "first_forward_s")}
    report = {"device": args.device, "aligner": str(folder), "repeats": args.repeats, "runs": runs, "median": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{'loader':<10}{'import torch (s)':>18}{'load (s)':>10}{'first forward (s)':>19}")
    for loader, row in summary.items():
        print(f"{loader:<10}{row['torch_s']:>18}{row['load_s']:>10}{row['first_forward_s']:>19}")


if __name__ == "__main__":
    main()
