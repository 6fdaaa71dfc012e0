"""Merge bench/accuracy.py outputs of disjoint splits (rest, dev, test) into one --split all result,
aggregated as accuracy.py aggregates one run (rows sorted by clip id). For runs split into
processes that each fit one call of the lent GPU:

    python bench/merge_accuracy.py all.json rest.json dev.json test.json
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from quality import bootstrap_wer_difference, sign_flip_p_value  # noqa: E402
from references import wer  # noqa: E402

out, parts = Path(sys.argv[1]), [json.loads(Path(p).read_text()) for p in sys.argv[2:]]
rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: r["clip"])
assert len({r["clip"] for r in rows}) == len(rows)
refs = [r["ref"] for r in rows]
diffs = [r["errors_worker"] - r["errors_fw"] for r in rows]
low, high = bootstrap_wer_difference([r["errors_worker"] for r in rows], [r["errors_fw"] for r in rows], [r["words"] for r in rows])
langs = {k: Counter() for k in ("worker_auto", "faster_whisper_auto")}
for p in parts:
    for k in langs:
        langs[k].update(p["languages"][k])
first = parts[0]
result = {
    "split": "all", "clips": len(rows), "telephone": first["telephone"],
    "words": sum(r["words"] for r in rows),
    "wer": {"worker_auto": round(wer(refs, [r["worker_auto"] for r in rows]), 4),
            "faster_whisper_auto": round(wer(refs, [r["faster_whisper"] for r in rows]), 4)},
    "paired": {"worker_minus_fw_errors": sum(diffs), "worker_worse_clips": sum(d > 0 for d in diffs),
               "worker_better_clips": sum(d < 0 for d in diffs),
               "p_worker_worse": round(sign_flip_p_value(diffs), 4),
               "wer_difference_ci95": [round(low, 4), round(high, 4)]},
    "languages": {k: dict(c) for k, c in langs.items()},
    "rows": rows,
}
for key in first:
    if key not in result and key not in ("split", "clips"):
        result[key] = first[key]
result["merged_from"] = {p["split"]: {"clips": p["clips"], "wer": p["wer"], "paired": p["paired"]} for p in parts}
result["note"] = ("bench/accuracy.py run once per split (rest, dev, test) as concurrent processes on one GPU, "
                  "merged into --split all with the script's own aggregation (tests/quality.py)")
out.write_text(json.dumps(result, ensure_ascii=False, indent=1))
print(out, result["clips"], result["wer"], result["paired"])
